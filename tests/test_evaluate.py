"""Evaluation: baselines, protocol index arithmetic, CLI errors, and an end-to-end run on a real trajectory."""

import json
import subprocess

import numpy as np
import pytest

from tests.support.cli import REPO, assert_user_error, run_cli
from tests.support.tiny import tiny_model_file
from asteroid_hpc.errors import UserError
from asteroid_hpc.evaluation import (Trajectory, aligned_history_mean_forecast, constant_rotation_forecast,
                                     constant_velocity_forecast,
                                     history_mean_forecast, persistence_forecast, protocol_a, protocol_b, protocol_c,
                                     score_samples)
from asteroid_hpc.evaluation.protocols import (chronological_bounds, protocol_a_offsets, random_start_plan,
                                               to_file_frames, window_starts)


BASELINE_NAMES = ("persistence", "constant velocity (history spacing)", "history mean", "aligned history mean",
                  "constant rotation")
# protocols A, B and C read the whole input file: they also score the peers' one-frame velocity
TRAJECTORY_BASELINE_NAMES = (*BASELINE_NAMES, "constant velocity (1-frame)")


def _index_trajectory(n_frames: int, atomic_numbers=(6, 8, 1, 1)) -> Trajectory:
    """Every coordinate of frame f equals f, so gathered values are the frame indices themselves."""
    n_atoms = len(atomic_numbers)
    positions = np.broadcast_to(np.arange(n_frames, dtype=np.float64)[:, None, None], (n_frames, n_atoms, 3)).copy()
    return Trajectory(positions, np.array(atomic_numbers), 0.5, "index")


# ----------------------------------------------------------------------------------------- baselines

def test_baselines_on_a_constant_velocity_trajectory():
    rng = np.random.default_rng(0)
    start, velocity = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) * 0.01
    frames = start + np.arange(40)[:, None, None] * velocity  # x(t) = x0 + v t, one frame per step
    stride = 3
    history = frames[None, 0:10 * stride:stride][:, :10]  # frames 0, 3, ..., 27
    lead_steps = np.array([1, 2, 4])
    target = frames[None, 27 + stride * lead_steps]
    cv = constant_velocity_forecast(history, lead_steps)
    persistence = persistence_forecast(history, lead_steps)
    assert np.abs(cv - target).max() < 1e-12
    assert ((persistence - target) ** 2).mean() > 1e-6
    assert persistence[0, 2] == pytest.approx(history[0, -1])


def test_history_mean_recovers_the_centre_of_an_oscillation_sampled_over_whole_periods():
    rng = np.random.default_rng(1)
    centre, amplitude = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)) * 0.1
    period = 8  # frames; the 16-frame history covers two whole periods, the targets sit at whole periods
    frames = centre + amplitude * np.sin(2 * np.pi * np.arange(64) / period)[:, None, None]
    history, lead_steps = frames[None, :16], np.array([period, 2 * period])
    forecast = history_mean_forecast(history, lead_steps)
    assert forecast.shape == (1, 2, 4, 3)
    assert np.abs(forecast[0, 0] - centre).max() < 1e-12
    assert np.abs(forecast - history.mean(axis=1, keepdims=True)).max() < 1e-12


def _tumbling_molecule(n_frames: int, wobble: float = 0.0):
    """A rigid 6-atom body turning about a tilted axis at a constant rate and drifting; with ``wobble`` its
    shape also oscillates (period 8 frames) about the rigid one. Returns frames [F, 6, 3] and the body."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    body = rng.normal(size=(6, 3))
    body -= body.mean(0)
    mode = rng.normal(size=(6, 3))
    mode -= mode.mean(0)
    frames = []
    for f in range(n_frames):
        shape = body + wobble * np.sin(2 * np.pi * f / 8) * mode
        turn = Rotation.from_rotvec(0.07 * f * np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5]))
        frames.append(turn.apply(shape) + 0.01 * f)
    return np.array(frames), body


def test_aligned_history_mean_keeps_the_last_pose_and_averages_the_shape():
    frames, body = _tumbling_molecule(16, wobble=0.1)
    history, lead_steps = frames[None], np.array([1, 5])  # 16 frames: two whole periods of the wobble
    aligned = aligned_history_mean_forecast(history, lead_steps)
    assert aligned.shape == (1, 2, 6, 3)
    last = history[0, -1]
    # the forecast sits where the last frame is (same centroid, same orientation) with the mean shape
    assert np.abs(aligned[0, 0].mean(0) - last.mean(0)).max() < 1e-9
    from asteroid_hpc.metrics import kabsch_rmsd

    shape_error = kabsch_rmsd(aligned[0, 0], body)
    assert shape_error < 0.05 * kabsch_rmsd(last, body)
    plain = history_mean_forecast(history, lead_steps)  # blurred by the turning: shrunk towards the axis
    assert kabsch_rmsd(plain[0, 0], body) > 10 * shape_error
    rigid, _ = _tumbling_molecule(10)  # no wobble: every history frame superposes exactly onto the last one
    assert np.abs(aligned_history_mean_forecast(rigid[None], [1]) - rigid[-1]).max() < 1e-9


def test_constant_rotation_continues_a_steady_tumble_exactly():
    frames, _ = _tumbling_molecule(40)
    frames -= 0.01 * np.arange(40)[:, None, None]  # turning in place: no drift
    history, lead_steps = frames[None, 0:28:3], np.array([1, 2, 4])  # 10 frames, 3 apart; targets 30, 33, 39
    forecast = constant_rotation_forecast(history, lead_steps)
    assert forecast.shape == (1, 3, 6, 3)
    assert np.abs(forecast[0] - frames[[30, 33, 39]]).max() < 1e-9
    assert np.abs(persistence_forecast(history, lead_steps)[0] - frames[[30, 33, 39]]).max() > 0.1
    still = np.repeat(frames[None, :1], 10, axis=1)  # no rotation: the last frame stays
    assert np.abs(constant_rotation_forecast(still, [5]) - still[:, -1:]).max() < 1e-12


def test_reference_structure_baseline_places_the_reference_on_the_last_frame():
    from asteroid_hpc.evaluation.baselines import reference_structure_forecast

    rigid, body = _tumbling_molecule(10)
    forecast = reference_structure_forecast(rigid[None], [1, 3], body)
    assert forecast.shape == (1, 2, 6, 3) and np.abs(forecast - rigid[-1]).max() < 1e-9
    samples = protocol_c(_index_trajectory(2000, atomic_numbers=(6, 8, 1, 1)), split="test", history_frames=10)
    result = score_samples(samples, None, reference=np.zeros((4, 3)))
    assert set(result.headline) == {*TRAJECTORY_BASELINE_NAMES, "training mean structure"}
    with pytest.raises(ValueError, match="reference must be"):
        reference_structure_forecast(rigid[None], [1], body[:5])


def test_superposed_error_separates_rigid_motion_from_shape_error():
    frames, _ = _tumbling_molecule(40, wobble=0.1)
    history = frames[None, :16]
    samples_target = frames[None, [16 + 7, 16 + 15]]  # lead 8 and 16: the wobble is back in phase
    lead_steps = np.array([8, 16])
    from asteroid_hpc.evaluation.protocols import ProtocolSamples

    samples = ProtocolSamples("C", "test", history, samples_target, np.full(6, 6), np.arange(6), lead_steps, 1, 0.5,
                              np.array([15]))
    result = score_samples(samples, None)
    # persistence's error here is all rotation and drift: superposed it vanishes
    assert result.headline["persistence"]["MSE"] > 1e-2
    assert result.superposed_headline["persistence"]["MSE"] < 1e-20
    for name in BASELINE_NAMES:
        assert result.superposed_headline[name]["MSE"] <= result.headline[name]["MSE"] + 1e-12
        assert len(result.superposed_mse_per_lead_angstrom2[name]) == 2
    from asteroid_hpc.evaluation.report import protocol_markdown

    table = protocol_markdown(result)
    assert "| persistence | 0.000 | 100 % |" in table


def test_score_samples_puts_model_and_baselines_on_the_same_samples():
    samples = protocol_c(_index_trajectory(2000), split="test", history_frames=10)
    perfect = samples.target.copy()
    result = score_samples(samples, perfect, expected_history_frames=10)
    assert set(result.headline) == {"ASTEROID", *TRAJECTORY_BASELINE_NAMES}
    assert result.headline["ASTEROID"]["ADE"] == 0.0
    # positions grow linearly with the frame index: both constant velocities are exact, persistence is not
    assert result.headline["constant velocity (history spacing)"]["FDE"] == pytest.approx(0.0, abs=1e-9)
    assert result.headline["constant velocity (1-frame)"]["FDE"] == pytest.approx(0.0, abs=1e-9)
    assert result.headline["persistence"]["FDE"] == pytest.approx(np.sqrt(3) * 200)
    assert len(result.mse_per_lead_angstrom2["persistence"]) == 20 and not result.notes


# ----------------------------------------------------------------------------------------- protocol A / B

def test_protocol_a_targets_are_t_plus_floor_3000p_over_8():
    assert protocol_a_offsets().tolist() == [375, 750, 1125, 1500, 1875, 2250, 2625, 3000]
    assert protocol_a_offsets(1000, 3).tolist() == [333, 666, 1000]
    traj = _index_trajectory(25000)
    samples = protocol_a(traj, split="test", history_frames=4, max_samples=20)
    starts = samples.start_frames
    assert samples.target.shape == (20, 8, 2, 3)  # heavy atoms only (Z > 1)
    assert samples.atomic_numbers.tolist() == [6, 8]
    assert np.array_equal(samples.target[:, :, 0, 0], starts[:, None] + protocol_a_offsets()[None])
    assert np.array_equal(samples.history[:, :, 0, 0], starts[:, None] + np.array([-1125, -750, -375, 0]))
    assert samples.lead_steps.tolist() == list(range(1, 9)) and samples.history_stride_frames == 375
    # 4 999 candidates: the peers' 10/5/5 % draws hold 499/249/249 starts, fewer than 500/2000/2000
    assert samples.settings["margin_frames"] == 10000 and samples.settings["split_sizes"] == [499, 249, 249]


def test_protocol_a_with_a_finer_model_stride_scores_the_landing_frames():
    samples = protocol_a(_index_trajectory(25000), split="val", history_frames=3, history_stride_frames=125,
                         max_samples=5)
    assert samples.lead_steps.tolist() == [3 * p for p in range(1, 9)] and samples.forecast_frames == 24
    with pytest.raises(UserError, match="does not divide"):
        protocol_a(_index_trajectory(25000), split="val", history_frames=3, history_stride_frames=100)


def test_short_trajectories_scale_down_and_say_so():
    plan = random_start_plan(8001, before_frames=3375, after_frames=3000)
    assert plan.scaled and plan.margin_frames == 3375
    available = 8000 - 2 * 3375
    assert plan.sizes == tuple(int(s * available / 4500) for s in (500, 2000, 2000))
    samples = protocol_b(_index_trajectory(8001), split="test", history_frames=10)
    assert samples.settings["split_sizes"] == list(plan.sizes) and "scaled down" in samples.notes[0]
    # B: 10 history frames 10 apart ending at t, target t + 10, same starts as A
    assert np.array_equal(samples.history[:, :, 0, 0], samples.start_frames[:, None] + np.arange(-90, 1, 10))
    assert np.array_equal(samples.target[:, 0, 0, 0], samples.start_frames + 10)
    a = protocol_a(_index_trajectory(8001), split="test", history_frames=10)
    assert np.array_equal(a.start_frames, samples.start_frames)
    with pytest.raises(UserError, match="too few"):
        random_start_plan(6000, before_frames=3375, after_frames=3000)


def test_protocol_frames_follow_the_file_timestep():
    assert to_file_frames(3000, 0.5, "x") == 3000 and to_file_frames(3000, 2.5, "x") == 600
    with pytest.raises(UserError, match="whole number"):
        to_file_frames(375, 5.0, "protocol A's history stride")


# ----------------------------------------------------------------------------------------- protocol C

def test_protocol_c_split_bounds_and_windows_stay_inside_their_split():
    assert chronological_bounds(100) == {"train": (0, 60), "val": (60, 80), "test": (80, 100)}
    assert window_starts(80, 100, 10).tolist() == list(range(80, 91))
    traj = _index_trajectory(3001)  # 301 downsampled frames
    bounds = chronological_bounds(301)
    for split, (lo, hi) in bounds.items():
        samples = protocol_c(traj, split=split, history_frames=10)
        first = samples.history[:, 0, 0, 0]  # trajectory frame of the first history frame
        last = samples.target[:, -1, 0, 0]
        assert np.all(first % 10 == 0) and np.all(first >= lo * 10)  # downsampled every 10 frames
        assert np.all(last <= (hi - 1) * 10)  # the last predicted frame is still inside the split
        assert len(samples.history) == (hi - lo) - 30 + 1
        assert np.array_equal(np.diff(samples.target[0, :, 0, 0]), np.full(19, 10.0))
        assert samples.target[0, 0, 0, 0] == samples.history[0, -1, 0, 0] + 10
        assert samples.scored_atoms.tolist() == [0, 1, 2, 3]  # all atoms
    with pytest.raises(UserError, match="fewer than one window"):
        protocol_c(_index_trajectory(500), split="test", history_frames=10)


# ----------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def xtb_ethanol(tmp_path_factory):
    """A real GFN2-xTB trajectory of ethanol: 1300 frames 2.5 fs apart (5 steps of 0.5 fs), ~10 s to make.
    Long enough for protocol A (ΔT = 1500 fs = 600 frames) with a scaled-down split, B and C."""
    from asteroid_hpc.data.amber import AmberWriter
    from asteroid_hpc.datagen.xtb import xtb_trajectory

    positions, numbers = xtb_trajectory("ethanol", 1300, seed=3, thermalize_steps=100, stride=5)
    path = tmp_path_factory.mktemp("xtb") / "ethanol.nc"
    with AmberWriter(path, n_atoms=len(numbers), atomic_numbers=numbers, timestep_ps=0.0025) as writer:
        writer.append(positions, np.arange(len(positions)) * 0.0025)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors", attention="local_global", num_rbf=4,
                           num_global_tokens=1, cutoff_angstrom=4.0, symmetry="augment")


def _run_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI's main() in this process (fast: torch is imported once), as a CompletedProcess."""
    from asteroid_hpc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)


def test_cli_bad_inputs_are_one_line_exit_2(tmp_path, tiny_model, capsys):
    from asteroid_hpc.data.amber import AmberWriter

    traj = tmp_path / "short.nc"
    with AmberWriter(traj, n_atoms=4, atomic_numbers=[6, 8, 1, 1], timestep_ps=0.0005) as writer:
        writer.append(_index_trajectory(50).positions)
    out = tmp_path / "out"

    def check(args, *fragments):
        assert_user_error(_run_in_process(capsys, "evaluate", *args), *fragments)

    check([tmp_path / "missing.safetensors", traj, "-o", out], "missing.safetensors")
    check([tiny_model, tmp_path / "none.nc", "-o", out, "--protocol", "C"], "none.nc")
    check([tiny_model, traj, "-o", out, "--protocol", "window"], "dataset directory")
    check([tiny_model, tmp_path, "-o", out, "--protocol", "A"], "trajectory file")
    check([tiny_model, traj, "-o", out, "--history-frames", "7"], "No such option")  # the model's own history
    check([tmp_path, traj, "-o", out], str(tmp_path), "no model here")
    check([tiny_model, traj, "-o", out, "evaluate.max_samples=0"], "evaluate.max_samples must be >= 1")
    check([tiny_model, traj, "-o", out, "--batch-size", "0"], "evaluate.batch_size must be >= 1")
    check([tiny_model, traj, "-o", out, "--protocol", "Z"], "--protocol")
    check([tiny_model, traj, "-o", out, "--protocol", "C"], "short.nc", "fewer than one window")
    not_weights = tmp_path / "junk.safetensors"
    not_weights.write_text("not a model")
    check([not_weights, traj, "-o", out], "junk.safetensors")
    assert not out.exists()
    # and once through a real subprocess, as users run it
    assert_user_error(run_cli("evaluate", tiny_model, traj, "-o", out, "--protocol", "window"), "dataset directory")


@pytest.mark.slow  # generates a GFN2-xTB trajectory (shared with the next test) and runs the CLI
def test_evaluate_end_to_end_on_a_real_trajectory(tmp_path, tiny_model, xtb_ethanol):
    out = tmp_path / "eval"
    proc = run_cli("evaluate", tiny_model, xtb_ethanol, "-o", out, "--protocol", "A", "--protocol", "B",
                   "--protocol", "C", "--max-samples", "6")
    assert proc.returncode == 0, proc.stderr
    table = (out / "results.md").read_text()
    for row in ("| ASTEROID |", "| persistence |", "| constant velocity (history spacing) |",
                "| constant velocity (1-frame) |", "Protocol A", "Protocol B", "Protocol C"):
        assert row in table and row in proc.stdout
    assert "the model is given 4 history frames" in table
    record = json.loads((out / "results.json").read_text())
    by_protocol = {p["protocol"]: p for p in record["protocols"]}
    assert by_protocol["A"]["n_samples"] == 6 and by_protocol["A"]["n_atoms_scored"] == 3  # ethanol's C, C, O
    assert by_protocol["A"]["lead_time_fs"] == pytest.approx([187.5 * p for p in range(1, 9)])
    assert by_protocol["A"]["history_stride_frames"] == 75  # 375 MD17 frames of 0.5 fs in frames of 2.5 fs
    assert "scaled down" in by_protocol["A"]["notes"][0] and "scaled down" in proc.stdout
    assert by_protocol["C"]["n_atoms_scored"] == 9 and len(by_protocol["C"]["lead_time_fs"]) == 20
    assert all(np.isfinite(v) for p in record["protocols"] for m in p["headline"].values() for v in m.values())
    assert (out / "error_vs_lead_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp-*"))


# ----------------------------------------------------------------------------------------- cost report

def test_cost_report_arithmetic():
    from asteroid_hpc.evaluation.cost import CostReport

    report = CostReport("ethanol", 9, 0.5, 10, 200, 2e-3, 50, 1, 4e-3, 1000, 4)
    assert report.xtb_cpu_seconds_per_frame == pytest.approx(2e-2)
    assert report.speedup == pytest.approx(5.0)
    assert report.frames_per_ps == pytest.approx(200.0)  # 1000 fs / (10 steps x 0.5 fs)
    record = report.as_dict()
    assert record["xtb_cpu_seconds_per_ps"] == pytest.approx(4.0)  # 2000 steps of 2 ms
    assert record["model_cpu_seconds_per_ps"] == pytest.approx(0.8)
    assert "speed-up of the forecast: 5.0x" in report.markdown()


def test_cost_report_measures_real_xtb_and_model(tmp_path, tiny_model):
    import subprocess
    import sys

    from tests.support.cli import cli_env

    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "cost_report.py"), str(tiny_model), "ethanol",
                           "--stride", "5", "--frames", "6", "--md-steps", "20", "--repeats", "1", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["md_steps_timed"] >= 20 and record["xtb_cpu_seconds_per_step"] > 0
    assert record["model_cpu_seconds_per_frame"] > 0 and record["n_atoms"] == 9
    assert "GFN2-xTB MD" in proc.stdout and "ASTEROID forecast" in proc.stdout


@pytest.mark.slow
def test_evaluate_window_protocol_on_a_preprocessed_dataset(tmp_path, tiny_model, xtb_ethanol):
    dataset = tmp_path / "ds"
    prep = run_cli("preprocess", xtb_ethanol, "-o", dataset, "data.frame_stride=2", "--no-progress")
    assert prep.returncode == 0, prep.stderr
    out = tmp_path / "eval"
    proc = run_cli("evaluate", tiny_model, dataset, "-o", out, "--max-samples", "5", "--horizon-frames", "6")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((out / "results.json").read_text())["protocols"]
    assert result["protocol"] == "window" and result["n_samples"] == 5
    assert result["lead_time_fs"] == pytest.approx([5.0 * k for k in range(1, 7)])  # 2 frames of 2.5 fs
    assert set(result["headline"]) == {"ASTEROID", *BASELINE_NAMES}  # no 1-frame velocity: stride-2 frames
    assert any("constant velocity (1-frame) is not scored" in note for note in result["notes"])


def test_clean_prefix_is_outside_every_evaluation_window():
    from asteroid_hpc.evaluation.holdout import clean_prefix_frames

    assert clean_prefix_frames(60000, 0.5, 10, 75) == 10000 - 9 * 75
    with pytest.raises(UserError, match="does not divide"):  # evaluate refuses it too: no silent prefix
        clean_prefix_frames(60000, 0.5, 10, 10)
    assert clean_prefix_frames(60000, 0.5, 10, 375) == 10000 - 9 * 375
    n_frames = 12000  # short: A/B use a scaled-down plan
    stop = clean_prefix_frames(n_frames, 0.5, 4, 375)
    traj = _index_trajectory(n_frames)
    for split in ("train", "val", "test"):
        for samples in (protocol_a(traj, split=split, history_frames=4), protocol_b(traj, split=split, history_frames=4)):
            assert samples.history.min() >= stop
    for split in ("val", "test"):
        assert protocol_c(traj, split=split, history_frames=4).history.min() >= stop
    assert stop > 0


def test_baselines_only_run_on_a_constant_velocity_trajectory(tmp_path, capsys):
    from asteroid_hpc.data.amber import AmberWriter

    traj = tmp_path / "linear.nc"
    frames = _index_trajectory(2000).positions * 1e-3  # every atom moves 1e-3 Å per frame along (1, 1, 1)
    with AmberWriter(traj, n_atoms=4, atomic_numbers=[6, 8, 1, 1], timestep_ps=0.0005) as writer:
        writer.append(frames)
    proc = _run_in_process(capsys, "evaluate", "none", traj, "-o", tmp_path / "out", "--protocol", "C")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((tmp_path / "out" / "results.json").read_text())["protocols"]
    assert set(result["headline"]) == set(TRAJECTORY_BASELINE_NAMES) and result["history_frames"] == 10
    assert result["headline"]["constant velocity (history spacing)"]["FDE"] == pytest.approx(0.0, abs=1e-4)
    assert result["headline"]["constant velocity (1-frame)"]["FDE"] == pytest.approx(0.0, abs=1e-4)
    assert result["headline"]["persistence"]["FDE"] == pytest.approx(np.sqrt(3) * 0.2, rel=1e-3)  # 200 frames
    # the mean of history frames 0, 10, ..., 90 is frame 45, 245 frames before the last target
    assert result["headline"]["history mean"]["FDE"] == pytest.approx(np.sqrt(3) * 0.245, rel=1e-3)
    assert "the baselines are given 10 history frames" in proc.stdout


def test_settings_come_from_the_evaluate_section_with_overrides_and_options_on_top(tmp_path, tiny_model, capsys):
    import yaml

    from asteroid_hpc.data.amber import AmberWriter

    traj = tmp_path / "linear.nc"
    with AmberWriter(traj, n_atoms=4, atomic_numbers=[6, 8, 1, 1], timestep_ps=0.0005) as writer:
        writer.append(_index_trajectory(2000).positions * 1e-3)
    config = tmp_path / "eval.yaml"
    config.write_text("evaluate:\n  protocols: [C]\n  max_samples: 3\n  split: val\n  batch_size: 2\n")
    out = tmp_path / "out"
    proc = _run_in_process(capsys, "evaluate", tiny_model, traj, "-o", out, "--config", config,
                           "evaluate.max_samples=4", "evaluate.seed=7", "--max-samples", "5")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((out / "results.json").read_text())["protocols"]
    # protocol and split from the file, max_samples from the option over the override over the file
    assert (result["protocol"], result["split"], result["n_samples"]) == ("C", "val", 5)
    assert result["history_frames"] == 4  # the model's own
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["evaluate"] == {**resolved["evaluate"], "protocols": ["C"], "split": "val", "max_samples": 5,
                                    "seed": 7, "batch_size": 2}
    assert resolved["provenance"]["versions"]["asteroid-hpc"] and resolved["config_hash"]
    assert "config.resolved.yaml" in proc.stdout.splitlines()[-1]
    # MODEL none: the baselines' history is a config key
    proc = _run_in_process(capsys, "evaluate", "none", traj, "-o", tmp_path / "none", "--protocol", "c",
                           "evaluate.baseline_history_frames=4")
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((tmp_path / "none" / "results.json").read_text())["protocols"]
    assert result["history_frames"] == 4 and "ASTEROID" not in result["headline"]


def test_several_trajectories_are_pooled_and_also_scored_alone(tmp_path, capsys):
    from asteroid_hpc.data.amber import AmberWriter

    paths = []
    for k, speed in enumerate((1e-3, 3e-3)):  # every atom moves `speed` Å per frame along (1, 1, 1)
        paths.append(tmp_path / f"linear-{k}.nc")
        with AmberWriter(paths[-1], n_atoms=4, atomic_numbers=[6, 8, 1, 1], timestep_ps=0.0005) as writer:
            writer.append(_index_trajectory(2000).positions * speed)
    proc = _run_in_process(capsys, "evaluate", "none", *paths, "-o", tmp_path / "out", "--protocol", "C")
    assert proc.returncode == 0, proc.stderr
    (pooled,) = json.loads((tmp_path / "out" / "results.json").read_text())["protocols"]
    alone = [t["headline"]["persistence"]["MSE"] for t in pooled["per_trajectory"]]
    assert [t["n_samples"] for t in pooled["per_trajectory"]] == [11, 11]
    assert pooled["n_samples"] == 22 and alone[1] == pytest.approx(9 * alone[0], rel=1e-4)
    assert pooled["headline"]["persistence"]["MSE"] == pytest.approx(np.mean(alone), rel=1e-6)
    assert "Per trajectory" in proc.stdout and f"{paths[1]} (11)" in proc.stdout
    other = tmp_path / "other.nc"
    with AmberWriter(other, n_atoms=3, atomic_numbers=[6, 8, 1], timestep_ps=0.0005) as writer:
        writer.append(_index_trajectory(2000, atomic_numbers=(6, 8, 1)).positions * 1e-3)
    assert_user_error(_run_in_process(capsys, "evaluate", "none", paths[0], other, "-o", tmp_path / "bad",
                                      "--protocol", "C"), "other.nc", "of one molecule")
