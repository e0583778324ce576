"""Issue #19: like for like with the peers. The model records its training windows and `evaluate` says how close
its test starts lie to them; the peers' one-frame constant velocity; protocol-A starts restricted to a frame
range; training on exactly the peers' 500 starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.data import random_walk, write_traj
from tests.support.tiny import tiny_model_file
from tests.test_random_starts import peers_split
from asteroid_hpc.checksum import file_digest
from asteroid_hpc.data.coverage import _runs, describe_training_windows, distance_to_training
from asteroid_hpc.errors import UserError
from asteroid_hpc.evaluation import (Trajectory, one_frame_velocity_forecast, protocol_a, protocol_b, protocol_c,
                                     score_samples)
from asteroid_hpc.evaluation.protocols import pool_samples

ONE_FRAME, HISTORY_SPACING = "constant velocity (1-frame)", "constant velocity (history spacing)"


def _trajectory(positions_of_frame, n_frames: int, atomic_numbers=(6, 8, 1, 1)) -> Trajectory:
    frames = np.arange(n_frames, dtype=np.float64)
    positions = np.broadcast_to(positions_of_frame(frames)[:, None, None], (n_frames, len(atomic_numbers), 3)).copy()
    return Trajectory(positions, np.array(atomic_numbers), 0.5, "synthetic")


def _preprocess(out, *args):
    from asteroid_hpc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", *map(str, args), "-o", str(out)])
    assert exit_info.value.code == 0


def _expand(runs) -> list[int]:
    return [s for first, last, step in runs for s in range(first, last + 1, step)]


# ------------------------------------------------------------------------------ the peers' constant velocity

def test_one_frame_velocity_uses_the_input_frame_before_the_start():
    """x(f) = (f/1000)²: the two constant velocities differ, each by its own closed form."""
    def x(f):
        return (f / 1000) ** 2

    traj = _trajectory(x, 25000)
    samples = protocol_a(traj, split="test", history_frames=4, history_stride_frames=75, max_samples=30)
    t = samples.start_frames.astype(np.float64)[:, None]
    lead = (samples.lead_steps * samples.history_stride_frames)[None, :].astype(np.float64)  # input frames
    assert lead[0].tolist() == [375 * p for p in range(1, 9)]
    one_frame = one_frame_velocity_forecast(samples.history, samples.previous_frame, lead[0])
    np.testing.assert_allclose(one_frame[:, :, 0, 0], x(t) + lead * (x(t) - x(t - 1)), rtol=1e-12)
    result = score_samples(samples, None)
    history_spacing = x(t) + (lead / 75) * (x(t) - x(t - 75))
    expected = ((history_spacing - samples.target[:, :, 0, 0]) ** 2).mean(axis=0)
    np.testing.assert_allclose(result.mse_per_lead_angstrom2[HISTORY_SPACING], expected, rtol=1e-9)
    expected = ((x(t) + lead * (x(t) - x(t - 1)) - samples.target[:, :, 0, 0]) ** 2).mean(axis=0)
    np.testing.assert_allclose(result.mse_per_lead_angstrom2[ONE_FRAME], expected, rtol=1e-9)
    assert list(result.headline)[1:3] == [HISTORY_SPACING, ONE_FRAME]  # side by side in the table


@pytest.mark.parametrize("protocol", ["A", "B", "C"])
def test_one_frame_velocity_is_exact_on_a_linear_trajectory(protocol):
    traj = _trajectory(lambda f: 1e-3 * f, 25000)
    make = {"A": lambda: protocol_a(traj, split="test", history_frames=4, max_samples=20),
            "B": lambda: protocol_b(traj, split="test", history_frames=4, max_samples=20),
            "C": lambda: protocol_c(traj, split="test", history_frames=4, max_samples=20)}[protocol]
    samples = make()
    assert np.array_equal(samples.previous_frame, traj.positions[samples.start_frames - 1][:, samples.scored_atoms])
    result = score_samples(samples, None)
    assert max(result.mse_per_lead_angstrom2[ONE_FRAME]) < 1e-20
    assert result.headline["persistence"][next(iter(result.headline["persistence"]))] > 1e-6
    pooled = pool_samples([samples, samples], ["a", "b"])
    assert np.array_equal(pooled.previous_frame, np.concatenate([samples.previous_frame] * 2))


def test_one_frame_velocity_checks_its_shapes():
    with pytest.raises(ValueError, match="previous_frame must be"):
        one_frame_velocity_forecast(np.zeros((2, 3, 4, 3)), np.zeros((2, 5, 3)), [1])


# ------------------------------------------------------------------------------ protocol-A starts in a range

def test_a_frames_keeps_the_starts_whose_whole_window_lies_inside():
    traj = _trajectory(lambda f: f, 60000)
    m, stride = 10, 75
    every = protocol_a(traj, split="test", history_frames=m, history_stride_frames=stride)
    inside = protocol_a(traj, split="test", history_frames=m, history_stride_frames=stride,
                        frame_range=(36000, 60000))
    t = every.start_frames
    keep = (t - (m - 1) * stride >= 36000) & (t + 3000 < 60000)
    assert 0 < keep.sum() < len(t) and np.array_equal(inside.start_frames, t[keep])
    # the index trajectory holds each frame's number: every history and target frame is inside
    assert inside.history.min() >= 36000 and inside.target.max() < 60000
    assert inside.settings["frame_range"] == [36000, 60000]
    assert any(f"{keep.sum()} of the {len(t)} test starts" in note for note in inside.notes)
    b = protocol_b(traj, split="test", history_frames=m, frame_range=(36000, 60000))
    assert b.history.min() >= 36000 and b.target.max() < 60000 and len(b.start_frames) >= keep.sum()
    with pytest.raises(UserError, match="none of the .* test starts"):
        protocol_a(traj, split="test", history_frames=m, history_stride_frames=stride, frame_range=(0, 12000))


def test_a_frames_config_is_validated_and_takes_overrides():
    from asteroid_hpc.config import load_config
    from asteroid_hpc.config.schema import EvaluateConfig

    assert load_config(None, ["evaluate.a_frames=[36000, 60000]"]).evaluate.a_frames == [36000, 60000]
    for bad in ([5, 2], [1], [-1, 4]):
        with pytest.raises(UserError, match="evaluate.a_frames"):
            EvaluateConfig(a_frames=bad)


# ------------------------------------------------------------------------------ the training-window record

def test_runs_are_exact_and_compact():
    rng = np.random.default_rng(0)
    for starts in (np.arange(5, 500, 7), np.sort(rng.choice(10000, 300, replace=False)), np.array([4]),
                   np.array([3, 9]), np.concatenate([np.arange(0, 50, 5), np.arange(51, 90, 3), [200]])):
        runs = _runs(starts)
        assert _expand(runs) == starts.tolist()
    assert len(_runs(np.arange(5, 500, 7))) == 1 and len(_runs(np.concatenate([np.arange(0, 50, 5),
                                                                                np.arange(51, 90, 3)]))) == 2


def test_distance_to_training_on_a_case_with_known_answers():
    # stride 10, m = 3, H = 2: the window with start s spans input frames s - 20 ... s + 20
    description = {"frame_stride": 10, "history_frames": 3, "horizon_frames": 2, "inputs": [
        {"path": "train.nc", "blake3": "abc", "n_windows": 4, "start_runs": [[100, 120, 10], [1000, 1000, 1]]}]}
    t = [90, 150, 200, 60, 1030]  # spans [80, 140] and [980, 1020]
    report = distance_to_training(description, "abc", t)
    assert report["status"] == "shared" and report["training_windows"] == 4 and report["test_starts"] == 5
    assert report["to_window_frames"] == {"min": 0.0, "median": 10.0}  # 0, 10, 60, 20, 10
    assert report["to_start_frames"] == {"min": 10.0, "median": 30.0}  # 10, 30, 80, 40, 30
    assert report["inside_training_window"] == 1
    assert distance_to_training(description, "other", t) == {"status": "independent"}
    assert distance_to_training(None, "abc", t) == {"status": "unknown"}
    brute = [min(max(0, s - 20 - x, x - s - 20) for s in (100, 110, 120, 1000)) for x in range(0, 1200, 7)]
    report = distance_to_training(description, "abc", list(range(0, 1200, 7)))
    assert report["to_window_frames"]["median"] == float(np.median(brute))


@pytest.mark.parametrize("split", ["chronological", "random_start"])
def test_the_record_lists_exactly_the_training_windows_in_input_frames(tmp_path, split):
    from asteroid_hpc.data import WindowDataset

    traj = write_traj(tmp_path / "walk.nc", random_walk(400))
    extra = ["data.random_start_counts=[20,10,10]", "data.random_start_margin_frames=12"] \
        if split == "random_start" else []
    _preprocess(tmp_path / "ds", traj, f"data.split={split}", "data.frame_stride=4", "data.stride_phases=2",
                "model.history_frames=3", "data.horizon_frames=2", *extra)
    train = WindowDataset(tmp_path / "ds", "train")
    record = describe_training_windows(train)
    (entry,) = record["inputs"]
    assert entry["blake3"] == file_digest(traj, "blake3") and record["frame_stride"] == 4
    sources = {s["index"]: s for s in train.manifest["sources"]}
    expected = sorted(sources[source]["frame_offset"] + 4 * (first + 2)
                      for source, first in (train.window_location(i) for i in range(len(train))))
    assert _expand(entry["start_runs"]) == expected and entry["n_windows"] == len(train) == record["n_windows"]
    assert {s % 4 for s in expected} == {0, 2}  # both phases, in the input's own frame numbers
    # every training window's own start is inside a training window: distance 0
    report = distance_to_training(record, entry["blake3"], expected)
    assert report["to_window_frames"]["median"] == 0 and report["to_start_frames"]["median"] == 0


def test_weights_carry_the_record_and_older_weights_say_unknown(tmp_path):
    from asteroid_hpc.model import load_weights, save_weights

    old = load_weights(tiny_model_file(tmp_path / "old.safetensors"))
    assert old.training_data is None
    old.training_data = {"format": 1, "inputs": [{"path": "x.nc", "blake3": "abc", "start_runs": [[5, 9, 2]]}]}
    assert load_weights(save_weights(old, tmp_path / "new.safetensors")).training_data == old.training_data


def _fake_checkpoint(run, model, training_data) -> None:
    """A complete stage-0 checkpoint folder as DeepSpeed and the trainer write it (module state, client state)."""
    from dataclasses import asdict

    import torch

    folder = run / "checkpoints" / "step_000003"
    folder.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, folder / "mp_rank_00_model_states.pt")
    (folder / "client_state.json").write_text(json.dumps({"step": 3, "config": {"model": asdict(model.cfg)},
                                                          "training_data": training_data}))
    (folder / "COMPLETE").write_text("3\n")


def test_evaluate_reports_how_close_the_test_starts_lie_to_the_training_windows(tmp_path, capsys):
    """A model trained on the first 6 000 frames of a file, evaluated on that file (weights and checkpoint
    folder), on an independent file and as a model without a record."""
    from asteroid_hpc.config import load_config
    from asteroid_hpc.data import WindowDataset
    from asteroid_hpc.evaluation import evaluate_to_directory
    from asteroid_hpc.model import load_weights, save_weights

    coords = random_walk(8000, seed=3)
    traj = write_traj(tmp_path / "md.nc", coords)
    other = write_traj(tmp_path / "other.nc", coords[::-1].copy())
    _preprocess(tmp_path / "ds", traj, "data.frames_per_shard=2000", "model.history_frames=4",
                "data.horizon_frames=2", "data.split_fractions=[0.75,0.25,0.0]")
    record = describe_training_windows(WindowDataset(tmp_path / "ds", "train"))
    model = load_weights(tiny_model_file(tmp_path / "untrained.safetensors"))
    model.training_data = record
    weights = save_weights(model, tmp_path / "model.safetensors")
    _fake_checkpoint(tmp_path / "run", model, record)
    from asteroid_hpc.train.model_files import open_model

    assert open_model(tmp_path / "run").training_data == record
    cfg = load_config(None, ["evaluate.protocols=[A, C]", "evaluate.max_samples=8"])
    for name, model_path, data, status in (("weights", weights, traj, "shared"),
                                           ("checkpoint", tmp_path / "run", traj, "shared"),
                                           ("independent", weights, other, "independent"),
                                           ("unknown", tmp_path / "untrained.safetensors", traj, "unknown")):
        results, paths, markdown = evaluate_to_directory(model_path, data, tmp_path / name, cfg)
        saved = json.loads(paths["json"].read_text())["protocols"]
        for result, stored in zip(results, saved):
            (overlap,) = result.training_overlap
            assert overlap["status"] == status and stored["training_overlap"] == [overlap], name
        if status == "shared":
            assert "an input the model was trained on" in markdown
            # protocol C's test starts lie after the training frames: check the distances by brute force
            from asteroid_hpc.evaluation.trajectory import load_trajectory

            c = protocol_c(load_trajectory(traj), split="test", history_frames=4, max_samples=8)
            starts = np.array(_expand(record["inputs"][0]["start_runs"]))
            to_window = [np.maximum(0, np.maximum(starts - 3 - x, x - starts - 2)).min() for x in c.start_frames]
            (overlap,) = results[1].training_overlap
            assert overlap["training_windows"] == record["n_windows"] and overlap["test_starts"] == 8
            assert overlap["to_window_frames"] == {"min": float(min(to_window)),
                                                   "median": float(np.median(to_window))}
            assert min(to_window) > 0 and overlap["inside_training_window"] == 0
            (overlap,) = results[0].training_overlap  # protocol A draws its starts inside the training frames
            assert overlap["to_window_frames"]["median"] == 0 and overlap["inside_training_window"] == 8
        else:
            assert {"independent": "independent trajectory (no shared frames", "unknown": "unknown (the model "
                    "records no training windows"}[status] in markdown


# ------------------------------------------------------------------------------ like for like: the peers' 500 starts

def test_the_like_for_like_recipe_trains_on_exactly_the_peers_500_starts(tmp_path):
    """README's recipe (data.split=random_start, one phase, the peers' counts, margin and seed): one training
    window per peers' train start, ending on it, and protocol A's test starts are the peers' test starts."""
    from asteroid_hpc.data import WindowDataset
    from asteroid_hpc.evaluation.trajectory import load_trajectory

    n_frames = 60000
    traj = write_traj(tmp_path / "md.nc", random_walk(n_frames, n_atoms=2, seed=5), atomic_numbers=[6, 8])
    _preprocess(tmp_path / "ds", traj, "data.split=random_start", "data.frame_stride=1", "data.stride_phases=1",
                "data.random_start_counts=[500,2000,2000]", "data.random_start_margin_frames=10000",
                "data.split_seed=100", "data.frames_per_shard=20000", "model.history_frames=4",
                "data.horizon_frames=3")
    peers = dict(zip(("train", "val", "test"), peers_split(n_frames)))
    for split in ("train", "val", "test"):
        windows = WindowDataset(tmp_path / "ds", split)
        last_history = [windows.window_location(i)[1] + 3 for i in range(len(windows))]
        assert last_history == peers[split].tolist(), split
    assert len(peers["train"]) == 500
    record = describe_training_windows(WindowDataset(tmp_path / "ds", "train"))
    assert record["n_windows"] == 500 and _expand(record["inputs"][0]["start_runs"]) == sorted(peers["train"])
    samples = protocol_a(load_trajectory(traj), split="test", history_frames=4)
    assert samples.start_frames.tolist() == peers["test"].tolist()
    report = distance_to_training(record, file_digest(traj, "blake3"), samples.start_frames)
    assert report["status"] == "shared" and report["to_start_frames"]["min"] >= 1  # drawn without replacement
    assert report["to_start_frames"]["median"] > report["to_window_frames"]["median"]


@pytest.mark.slow  # a real 3-step training run (shared with other tests), then export
def test_training_records_its_windows_in_checkpoints_and_exported_weights(tmp_path_factory, tmp_path):
    from asteroid_hpc.data import WindowDataset
    from asteroid_hpc.model import load_weights
    from asteroid_hpc.train.export import export_checkpoint
    from asteroid_hpc.train.model_files import open_model
    from tests.support.train import trained_run

    dataset, run_dir = trained_run(tmp_path_factory.getbasetemp())
    stored = json.loads((run_dir / "checkpoints" / "step_000003" / "client_state.json").read_text())["training_data"]
    assert stored == describe_training_windows(WindowDataset(dataset, "train"))
    (entry,) = stored["inputs"]
    assert entry["blake3"] == file_digest(entry["path"], "blake3") and entry["n_windows"] > 0
    assert open_model(run_dir).training_data == stored
    exported = export_checkpoint(run_dir / "checkpoints" / "step_000003", tmp_path / "model.safetensors")
    assert load_weights(exported).training_data == stored
