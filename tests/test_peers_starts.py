"""Issue #19 item 3: training on exactly the peers' starts at any frame stride (``data.random_start_draw=peers``).

The peers' starts are computed independently here (tests/test_random_starts.py's ``peers_split``, their code as
published); the dataset's windows, the model's training-window record and protocol A's samples must match them
index for index."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.support.data import random_walk, write_traj
from tests.test_random_starts import peers_split
from asteroid_hpc.checksum import file_digest
from asteroid_hpc.config import load_config
from asteroid_hpc.data.coverage import describe_training_windows, distance_to_training
from asteroid_hpc.data.random_starts import SPLITS, peers_starts_on_phases
from asteroid_hpc.errors import UserError

N_FRAMES = 25001  # the shortest file on which the peers' draw keeps 500 train starts: 5000 candidates


def _data(stride: int, phases: int | None = None, **changes):
    return SimpleNamespace(frame_stride=stride, stride_phases=stride if phases is None else phases,
                           random_start_margin_frames=10000, random_start_counts=[500, 2000, 2000], split_seed=100,
                           **changes)


def _phases(n_raw: int, stride: int, phases: int, path: str = "md.nc", first_index: int = 0):
    return [SimpleNamespace(index=first_index + j, path=path, n_frames_raw=n_raw, frame_offset=j * (stride // phases))
            for j in range(phases)]


def _raw(starts: list[list[int]], sources, stride: int) -> list[int]:
    offset = {s.index: s.frame_offset for s in sources}
    return [offset[k] + frame * stride for k, frame in starts]


@pytest.mark.parametrize("n_frames", [211762, 60000])  # real MD17 aspirin's length; a 30 ps xTB file
@pytest.mark.parametrize("stride", [75, 1])
def test_the_draw_gives_the_peers_starts_to_their_phases(n_frames, stride):
    sources = _phases(n_frames, stride, stride)
    starts = peers_starts_on_phases(sources, _data(stride), history_frames=10, horizon_frames=40 if stride > 1 else 3)
    for name, theirs in zip(SPLITS, peers_split(n_frames)):
        assert _raw(starts[name], sources, stride) == theirs.tolist(), name
        # each start sits on the phase of its residue, at the strided frame that is that raw frame
        assert all(k == s % stride for (k, _), s in zip(starts[name], theirs))


def test_every_input_file_draws_the_peers_starts_with_the_same_seed():
    first, second = _phases(N_FRAMES, 5, 5, "a.nc"), _phases(40000, 5, 5, "b.nc", first_index=5)
    starts = peers_starts_on_phases(first + second, _data(5), history_frames=4, horizon_frames=8)
    train = [(k < 5, s) for (k, s) in starts["train"]]
    assert [s for in_first, s in train if in_first] and train[:500] == [(True, s) for _, s in train[:500]]
    expected = peers_split(N_FRAMES)[0].tolist() + peers_split(40000)[0].tolist()
    assert _raw(starts["train"], first + second, 5) == expected


def test_inputs_the_recipe_cannot_reproduce_are_one_line_errors():
    with pytest.raises(UserError, match=r"md.nc: 24000 frames are too few for the peers' draw .*not scaled down$"):
        peers_starts_on_phases(_phases(24000, 75, 75), _data(75), history_frames=3, horizon_frames=40)
    with pytest.raises(UserError, match=r"margin that must hold 10050 history"):  # 134 · 75 history frames > margin
        peers_starts_on_phases(_phases(N_FRAMES, 75, 75), _data(75), history_frames=135, horizon_frames=4)
    with pytest.raises(UserError, match=r"lies on none of the 3 phases of data.frame_stride=75: set "
                                        r"data.stride_phases=75$"):
        peers_starts_on_phases(_phases(N_FRAMES, 75, 3), _data(75, 3), history_frames=3, horizon_frames=4)


@pytest.mark.parametrize("overrides, message", [
    (["data.stride_phases=3"], "data.stride_phases = data.frame_stride (75)"),
    (["data.split=chronological"], "needs data.split=random_start"),
    (["data.frames=[0,30000]"], "whole inputs (no data.frames)"),
    (["data.random_start_draw=all"], "data.random_start_draw must be one of per_source, peers"),
])
def test_combinations_that_cannot_reproduce_the_starts_are_refused(overrides, message):
    base = ["data.split=random_start", "data.frame_stride=75", "data.stride_phases=75", "data.random_start_draw=peers"]
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, base + overrides)
    assert load_config(None, base).data.random_start_draw == "peers"


def _preprocess(out, *args) -> None:
    from asteroid_hpc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", *map(str, args), "-o", str(out)])
    assert exit_info.value.code == 0


def _window_starts(dataset) -> list[int]:
    """The raw (input) frame of each window's last history frame, in the dataset's order."""
    offset = {s["index"]: s["frame_offset"] for s in dataset.manifest["sources"]}
    stride = dataset.manifest["frame_stride"]
    sources, first = dataset.window_locations()
    return [offset[int(k)] + (int(f) + dataset.history_frames - 1) * stride for k, f in zip(sources, first)]


@pytest.fixture(scope="module")
def peers_dataset(tmp_path_factory):
    """A synthetic 25 001-frame file preprocessed at stride 75 with 75 phases and the peers' draw."""
    root = tmp_path_factory.mktemp("peers")
    traj = write_traj(root / "md.nc", random_walk(N_FRAMES, n_atoms=2, seed=5), atomic_numbers=[6, 8])
    _preprocess(root / "ds", traj, "data.split=random_start", "data.random_start_draw=peers", "data.frame_stride=75",
                "data.stride_phases=75", "model.history_frames=3", "data.horizon_frames=40", "data.center=false")
    return traj, root / "ds"


def test_stride_75_dataset_trains_on_exactly_the_peers_starts(peers_dataset):
    from asteroid_hpc.data import WindowDataset

    traj, dataset = peers_dataset
    peers = dict(zip(SPLITS, peers_split(N_FRAMES)))
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["split"]["draw"] == "peers" and len(manifest["sources"]) == 75
    for name in ("train", "val"):
        windows = WindowDataset(dataset, name)
        assert _window_starts(windows) == peers[name].tolist(), name
    assert len(peers["train"]) == 500
    record = describe_training_windows(WindowDataset(dataset, "train"))
    assert record["n_windows"] == 500 and record["frame_stride"] == 75
    (entry,) = record["inputs"]
    recorded = [s for first, last, step in entry["start_runs"] for s in range(first, last + 1, step)]
    assert recorded == sorted(peers["train"])
    # training statistics come from the train windows' frames only: 500 windows of 3 + 40 frames, merged
    assert manifest["statistics"]["frames"] == "train windows" and manifest["statistics"]["count"] <= 500 * 43


def test_at_stride_1_the_peers_draw_is_the_per_source_draw(tmp_path):
    from asteroid_hpc.data import WindowDataset

    traj = write_traj(tmp_path / "md.nc", random_walk(N_FRAMES, n_atoms=2, seed=1), atomic_numbers=[6, 8])
    for draw in ("peers", "per_source"):
        _preprocess(tmp_path / draw, traj, "data.split=random_start", f"data.random_start_draw={draw}",
                    "model.history_frames=4", "data.horizon_frames=3", "data.frames_per_shard=30000")
    for name, theirs in zip(SPLITS, peers_split(N_FRAMES)):
        assert _window_starts(WindowDataset(tmp_path / "peers", name)) == theirs.tolist(), name
        assert _window_starts(WindowDataset(tmp_path / "per_source", name)) == theirs.tolist(), name
    record = describe_training_windows(WindowDataset(tmp_path / "peers", "train"))
    recorded = [s for first, last, step in record["inputs"][0]["start_runs"] for s in range(first, last + 1, step)]
    assert recorded == sorted(peers_split(N_FRAMES)[0]) and record["n_windows"] == 500


def test_the_default_draw_leaves_the_plan_key_of_existing_datasets_unchanged(tmp_path):
    from asteroid_hpc.data.plan import _plan_key, make_plan

    traj = write_traj(tmp_path / "md.nc", random_walk(N_FRAMES, n_atoms=2, seed=1), atomic_numbers=[6, 8])
    keys = {}
    for draw in ("per_source", "peers"):
        cfg = load_config(None, ["data.split=random_start", f"data.random_start_draw={draw}"])
        plan = make_plan([str(traj)], cfg)
        keys[draw] = plan.key
    before = SimpleNamespace(**{k: v for k, v in vars(cfg.data).items() if k != "random_start_draw"})
    assert keys["per_source"] == _plan_key(plan.sources, before, None, cfg.model.history_frames) != keys["peers"]


def test_random_start_shards_hold_the_windows_of_every_split():
    from asteroid_hpc.data.manifest import longest_run_frames

    manifest = {"shards": [{"source": 0, "split": "all", "frame_start": 0, "frame_stop": 40},
                           {"source": 0, "split": "all", "frame_start": 40, "frame_stop": 90},
                           {"source": 1, "split": "all", "frame_start": 0, "frame_stop": 60}]}
    assert longest_run_frames(manifest, "train") == longest_run_frames(manifest, "val") == 90


def test_its_windows_are_protocol_a_samples_at_the_model_stride(peers_dataset):
    """Window i's history is protocol A's history of the peers' train start i (frames 75 apart ending on it) and
    every fifth target is one of protocol A's eight targets: the forecast begins at the start's next frame."""
    from asteroid_hpc.data import WindowDataset
    from asteroid_hpc.evaluation import protocol_a
    from asteroid_hpc.evaluation.trajectory import load_trajectory

    traj, dataset = peers_dataset
    samples = protocol_a(load_trajectory(traj), split="train", history_frames=3, history_stride_frames=75)
    windows = WindowDataset(dataset, "train")
    assert samples.start_frames.tolist() == _window_starts(windows)
    for i in (0, 1, 250, 499):
        item = windows[i]
        np.testing.assert_array_equal(item["history"].numpy(), samples.history[i])
        np.testing.assert_array_equal(item["target"].numpy()[4::5], samples.target[i])


def test_evaluate_reports_the_peers_own_overlap(peers_dataset):
    from asteroid_hpc.data import WindowDataset
    from asteroid_hpc.evaluation import protocol_a
    from asteroid_hpc.evaluation.trajectory import load_trajectory

    traj, dataset = peers_dataset
    train, test = peers_split(N_FRAMES)[0], peers_split(N_FRAMES)[2]
    samples = protocol_a(load_trajectory(traj), split="test", history_frames=3, history_stride_frames=75)
    assert samples.start_frames.tolist() == test.tolist()
    record = describe_training_windows(WindowDataset(dataset, "train"))
    report = distance_to_training(record, file_digest(traj, "blake3"), samples.start_frames)
    to_start = np.abs(test[:, None] - train[None, :]).min(axis=1)
    lo, hi = train - 2 * 75, train + 40 * 75  # a window spans its history's first frame to its last target
    to_window = np.maximum(0, np.maximum(lo[None, :] - test[:, None], test[:, None] - hi[None, :])).min(axis=1)
    assert report["training_windows"] == 500 and report["test_starts"] == len(test)
    assert report["to_start_frames"] == {"min": float(to_start.min()), "median": float(np.median(to_start))}
    assert report["to_window_frames"] == {"min": float(to_window.min()), "median": float(np.median(to_window))}
    assert report["inside_training_window"] == int((to_window == 0).sum())


def test_a_file_too_short_is_a_one_line_error_at_preprocess(tmp_path, capsys):
    from asteroid_hpc.cli.main import main

    traj = write_traj(tmp_path / "md.nc", random_walk(20000, n_atoms=2), atomic_numbers=[6, 8])
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", str(traj), "-o", str(tmp_path / "ds"), "data.split=random_start",
              "data.random_start_draw=peers", "data.frame_stride=5", "data.stride_phases=5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("20000 frames are too few for the peers' draw" in line for line in err)


@pytest.mark.slow  # a real 3-step training run on the peers' 500 starts at stride 75
def test_a_short_training_run_records_the_peers_training_starts(peers_dataset, tmp_path):
    from tests.support.train import run_train

    traj, dataset = peers_dataset
    run_dir = tmp_path / "run"
    run_train(dataset, run_dir, "model.history_frames=3", "data.horizon_frames=40", "data.frame_stride=75",
              "data.split=random_start", "train.max_steps=3", "train.lr_decay_steps=3", "train.val_batches=1")
    stored = json.loads((run_dir / "checkpoints" / "step_000003" / "client_state.json").read_text())["training_data"]
    (entry,) = stored["inputs"]
    recorded = [s for first, last, step in entry["start_runs"] for s in range(first, last + 1, step)]
    assert stored["n_windows"] == 500 and recorded == sorted(peers_split(N_FRAMES)[0])
    assert entry["blake3"] == file_digest(traj, "blake3")
