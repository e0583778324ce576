"""Batched ensemble members, Verlet neighbour lists, the batch's memory and the device/precision choice."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import REPO, cli_env, run_cli
from tests.support.ensemble import files, member_frames, truncate_to_partial  # noqa: F401 (files: a fixture)

SINGLE_THREAD = cli_env(OMP_NUM_THREADS="1")
# glibc returns every block of 64 kB or more to the system when it is freed, so VmHWM sees live tensors,
# not what the allocator happened to keep (its dynamic threshold otherwise varies the peak by ±20 MB run to run)
LIVE_PEAK = cli_env(OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")



def forecast(files, outdir, *overrides, initial="molecule"):
    proc = run_cli("ensemble-forecast", files["model"], files[initial], "-o", outdir, "ensemble.members=5",
                   "ensemble.horizon_frames=12", "ensemble.chunk_frames=4", "ensemble.start_frame=20", *overrides,
                   env=SINGLE_THREAD, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc


# ----------------------------------------------------------------------------------------- batches

def test_batched_members_equal_one_at_a_time(files, tmp_path):
    """Batches of 4 (+1) and of 1 give the same trajectories (≤ 1e-5 Å over 6 passes), in fewer forwards."""
    forecast(files, tmp_path / "one", "ensemble.batch_members=1")
    forecast(files, tmp_path / "four", "ensemble.batch_members=4")
    one = np.stack([member_frames(tmp_path / "one", m) for m in range(5)])
    four = np.stack([member_frames(tmp_path / "four", m) for m in range(5)])
    assert one.shape == (5, 12, 9, 3) and np.abs(one[:, -1] - one[:, 0]).max() > 1e-3  # the atoms move
    assert np.abs(one - four).max() <= 1e-5, np.abs(one - four).max()
    passes = [json.loads((tmp_path / run / "summary.json").read_text())["forecast_passes"] for run in ("one", "four")]
    assert passes[0]["forwards"] == 5 * 6 and passes[1]["forwards"] == 2 * 6  # 12 frames, 2 per pass
    assert passes[1]["batch_members"] == [4] and passes[1]["devices"] == ["cpu"]


def test_a_stochastic_models_members_are_reproducible_in_any_batch_and_after_a_resume(files, tmp_path):
    """A sampling model's member k draws pass p's noise from its own seed (ensemble.seed, k, p): batches of
    1 and of 4 give the same members, a resumed member its uninterrupted trajectory, another seed others."""
    from tests.support.ensemble import ensemble_model_file

    model = ensemble_model_file(tmp_path / "thermal.safetensors", stochastic=True)
    forecast({**files, "model": model}, tmp_path / "one", "ensemble.batch_members=1")
    forecast({**files, "model": model}, tmp_path / "four", "ensemble.batch_members=4")
    one = np.stack([member_frames(tmp_path / "one", m) for m in range(5)])
    assert np.abs(one - np.stack([member_frames(tmp_path / "four", m) for m in range(5)])).max() <= 1e-5
    out = tmp_path / "killed"
    shutil.copytree(tmp_path / "four", out)
    for name in ("summary.json", "summary.nc", "mean.nc", "COMPLETE"):
        (out / name).unlink()
    truncate_to_partial(out, 2, 4)
    forecast({**files, "model": model}, out, "ensemble.batch_members=4")
    assert np.array_equal(member_frames(out, 2), member_frames(tmp_path / "four", 2))
    forecast({**files, "model": model}, tmp_path / "other", "ensemble.batch_members=4", "ensemble.seed=1")
    assert np.abs(member_frames(tmp_path / "other", 0) - one[0]).max() > 1e-4


def test_frames_perturbation_times_continue_each_members_own_window(files, tmp_path):
    """ensemble.perturbation=frames: member k's window ends k·frame_spacing frames earlier, and so do its time
    stamps: lead 1 of member k is one frame after its own window's last frame, in the initial file's time."""
    from asteroid_hpc.data.amber import AmberReader

    forecast(files, tmp_path / "f", "ensemble.members=3", "ensemble.perturbation=frames", "ensemble.frame_spacing=4",
             "ensemble.noise_angstrom=0")
    with AmberReader(files["molecule"]) as reader:
        dt, initial_times = reader.timestep_ps, reader.read(0, reader.n_frames).time_ps
    for m in range(3):
        with AmberReader(tmp_path / "f" / "members" / f"member_{m:05d}.nc") as reader:
            times = reader.read_variable("time", 0, reader.n_frames)
        end = 20 - 4 * m  # the member's window's last frame (ensemble.start_frame=20)
        assert np.allclose(times, initial_times[end] + dt * np.arange(1, 13), atol=1e-4), (m, times[:3])


def test_a_batch_continued_from_different_frames_writes_the_same_files(files, tmp_path):
    """Members of one batch killed at different flushes (one finished, one at 4, one at 8 frames) continue
    in lockstep from the earliest: every file equals the uninterrupted run's bit for bit."""
    reference = tmp_path / "whole"
    forecast(files, reference, "ensemble.members=3", "ensemble.batch_members=3")
    out = tmp_path / "killed"
    shutil.copytree(reference, out)
    for name in ("summary.json", "summary.nc", "mean.nc", "COMPLETE"):
        (out / name).unlink()
    truncate_to_partial(out, 1, 4)
    truncate_to_partial(out, 2, 8)
    proc = forecast(files, out, "ensemble.members=3", "ensemble.batch_members=3")
    assert "member 1: continuing from frame 4" in proc.stderr and "member 2: continuing from frame 8" in proc.stderr
    for m in range(3):
        assert np.array_equal(member_frames(out, m), member_frames(reference, m)), m
    assert json.loads((out / "summary.json").read_text())["forecast_passes"]["forwards"] == 4  # frames 4 … 12


def test_batch_decomposition_halos_cover_every_member(files):
    from scipy.spatial import cKDTree

    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.ensemble.domains import decompose

    positions = read_frames(files["box"]).coordinates[-1]
    rng = np.random.default_rng(1)
    batch = np.stack([positions, positions + rng.normal(scale=0.8, size=positions.shape)])
    parts = decompose(batch, 2, 5.0)
    single = decompose(positions, 2, 5.0)
    for d in range(2):
        assert np.array_equal(parts.owned(d), single.owned(d))  # the first member's slabs
        assert set(single.local[d]) <= set(parts.local[d])
        for member in batch:
            tree = cKDTree(member)
            needed = set(np.concatenate(tree.query_ball_point(member[parts.owned(d)], 5.0)))
            assert needed <= set(parts.local[d].tolist())
    assert any(len(parts.local[d]) > len(single.local[d]) for d in range(2))  # the second member widened a halo
    one = decompose(batch[:1], 2, 5.0)
    assert all(np.array_equal(a, b) for a, b in zip(one.local, single.local))


# ----------------------------------------------------------------------------------------- neighbour lists

def test_verlet_lists_equal_rebuilt_lists_while_atoms_move():
    import torch

    from asteroid_hpc.model.graph import radius_graph
    from asteroid_hpc.model.neighbors import VerletNeighbors

    rng = np.random.default_rng(0)
    positions = torch.from_numpy(rng.uniform(0, 14, size=(2, 300, 3)))
    verlet = VerletNeighbors(4.0, 12, skin_angstrom=1.0)
    for step in range(12):
        positions = positions + torch.from_numpy(rng.normal(scale=0.08, size=positions.shape))
        expected, got = radius_graph(positions, 4.0, 12), verlet.graph(positions.float())
        assert got.index.shape == expected.index.shape
        assert torch.equal(got.mask, expected.mask), step
        assert torch.equal(got.index.sort(-1).values, expected.index.sort(-1).values), step
    assert 1 < verlet.rebuilds < 12  # reused between builds, rebuilt as the atoms drifted


def test_a_member_with_nan_positions_forces_a_rebuild():
    """NaN > skin/2 is false: a member that came apart must not freeze its batch's neighbour lists."""
    import torch

    from asteroid_hpc.model.neighbors import VerletNeighbors

    positions = torch.from_numpy(np.random.default_rng(1).uniform(0, 10, size=(2, 50, 3)))
    verlet = VerletNeighbors(4.0, 12, skin_angstrom=1.0)
    verlet.graph(positions)
    assert not verlet._needs_build(positions)
    broken = positions.clone()
    broken[1, 0] = float("nan")
    assert verlet._needs_build(broken)


def test_rollout_with_a_skin_equals_rebuilding_every_pass(files):
    """A 400-atom box over 8 passes: Verlet lists give the trajectory of lists rebuilt every pass."""
    from asteroid_hpc.data.amber import AmberReader, read_frames
    from asteroid_hpc.ensemble.rollout import MemberForecaster
    from asteroid_hpc.model import load_weights
    from asteroid_hpc.runtime.mpi import SingleProcess

    model = load_weights(files["model"])
    window = read_frames(files["box"], 2, 6).coordinates
    z = AmberReader(files["box"]).atomic_numbers
    plain = np.concatenate(list(MemberForecaster(model, z, SingleProcess()).rollout(window, 16)))
    skinned = MemberForecaster(model, z, SingleProcess(), skin_angstrom=1.0)
    kept = np.concatenate(list(skinned.rollout(window, 16)))
    assert np.abs(plain[-1] - window[-1]).max() > 0.05  # the atoms do move
    assert np.abs(plain - kept).max() <= 1e-5, np.abs(plain - kept).max()
    assert 1 <= skinned.rebuilds() < skinned.passes == 8


def test_summary_reports_neighbour_list_builds(files, tmp_path):
    forecast(files, tmp_path / "run", "ensemble.members=2", "ensemble.neighbor_skin_angstrom=1.0")
    passes = json.loads((tmp_path / "run" / "summary.json").read_text())["forecast_passes"]
    assert passes["neighbor_skin_angstrom"] == 1.0 and 1 <= passes["neighbor_list_builds"] < passes["forwards"]


# ----------------------------------------------------------------------------------------- memory

def test_batch_size_from_the_system_and_split_by_the_memory_budget(caplog):
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.sizing import batch_members, member_bytes
    from tests.support.tiny import tiny_model_config

    cfg = tiny_model_config(attention="local_global")
    assert batch_members(EnsembleConfig(), cfg, 21, 200) == 64  # aspirin: a full batch
    assert batch_members(EnsembleConfig(), cfg, 21, 5) == 5  # never more than the rank's members
    assert batch_members(EnsembleConfig(), cfg, 2000, 200) == 2
    assert batch_members(EnsembleConfig(batch_members=7), cfg, 2000, 200) == 7
    assert member_bytes(cfg, 2000) == 2 * member_bytes(cfg, 1000)  # linear in atoms with local attention
    budget = int(3.5 * member_bytes(cfg, 2000) / 2 ** 20) + 1
    with caplog.at_level(logging.INFO, logger="asteroid_hpc.ensemble.sizing"):
        assert batch_members(EnsembleConfig(batch_members=16, batch_memory_mb=budget), cfg, 2000, 200) == 3
    assert "exceeds ensemble.batch_memory_mb" in caplog.text and "running batches of 3" in caplog.text
    assert batch_members(EnsembleConfig(batch_members=16, batch_memory_mb=1), cfg, 10 ** 6, 200) == 1


PEAK_RSS_CODE = textwrap.dedent("""
    import sys
    import numpy as np, torch
    sys.path.insert(0, {repo!r})
    from asteroid_hpc.ensemble.rollout import MemberForecaster
    from asteroid_hpc.model import load_weights
    from asteroid_hpc.runtime.mpi import SingleProcess
    torch.set_num_threads(1)
    batch, atoms, passes = (int(a) for a in sys.argv[1:4])
    model = load_weights({model!r})
    rng = np.random.default_rng(0)
    base = rng.uniform(0, (atoms / 0.021) ** (1 / 3), size=(atoms, 3))
    windows = base + rng.normal(scale=0.01, size=(batch, 4, atoms, 3))
    forecaster = MemberForecaster(model, np.full(atoms, 18), SingleProcess())
    window = forecaster.to_device(windows)
    forecaster.start_batch()
    for _ in range(passes):
        frames = forecaster.pass_batch(window, forecaster.steps_per_pass)
        written = frames.cpu().numpy()  # what the streams write
        window = forecaster.advance(window, frames)
    # this process's own peak (VmHWM): ru_maxrss keeps the forked parent's (pytest's) peak across exec
    print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024)
""")


def _peak_rss_mb(model: Path, batch: int, atoms: int, passes: int) -> int:
    code = PEAK_RSS_CODE.format(repo=str(REPO), model=str(model))
    proc = subprocess.run([sys.executable, "-c", code, str(batch), str(atoms), str(passes)], capture_output=True,
                          text=True, env=LIVE_PEAK, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@pytest.mark.slow  # four subprocesses of a few seconds
def test_peak_memory_grows_with_the_batch_not_with_the_horizon(files):
    short, long = _peak_rss_mb(files["model"], 8, 1500, 4), _peak_rss_mb(files["model"], 8, 1500, 16)
    small, large = _peak_rss_mb(files["model"], 2, 1500, 4), _peak_rss_mb(files["model"], 32, 1500, 4)
    assert large - small > 40, (small, large)  # the measurement sees the batch's activations
    assert abs(long - short) <= max(8, 0.1 * (large - small)), (short, long)


# ----------------------------------------------------------------------------------------- device

def test_device_and_precision_choice_without_a_gpu(monkeypatch):
    import torch

    from asteroid_hpc.runtime import detect_launch
    from asteroid_hpc.runtime.device import autocast, inference_device, inference_dtype

    info = detect_launch({"LOCAL_RANK": "3", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert inference_device("auto", info) == "cuda:1" and inference_device("cuda", info) == "cuda:1"
    assert inference_device("cpu", info) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference_device("auto", info) == "cpu" and inference_device("cuda", info) is None
    assert inference_dtype("auto", "cuda:0") is torch.bfloat16 and inference_dtype("fp16", "cuda:1") is torch.float16
    assert inference_dtype("bf16", "cuda") is torch.bfloat16 and inference_dtype("fp32", "cuda:0") is None
    assert all(inference_dtype(p, "cpu") is None for p in ("auto", "fp32", "bf16", "fp16"))  # autocast: CUDA only
    with autocast(None, "cpu"):
        assert not torch.is_autocast_enabled()


def test_reduced_precision_falls_back_to_fp32_on_the_cpu(files, tmp_path):
    forecast(files, tmp_path / "fp32", "ensemble.members=2", "ensemble.precision=fp32")
    forecast(files, tmp_path / "bf16", "ensemble.members=2", "ensemble.precision=bf16")
    for m in range(2):
        assert np.array_equal(member_frames(tmp_path / "fp32", m), member_frames(tmp_path / "bf16", m))
    run = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert "precision" not in run  # fp32 on the CPU: the same run as fp32
    passes = json.loads((tmp_path / "bf16" / "summary.json").read_text())["forecast_passes"]
    assert passes["precision"] == ["fp32"]


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_trajectories(files, tmp_path):
    """ensemble.compile=true runs the attention blocks through torch.compile (really: no fallback to eager,
    which would log a warning) and gives the eager members within float rounding."""
    eager = forecast(files, tmp_path / "eager", "ensemble.batch_members=4")
    compiled = forecast(files, tmp_path / "compiled", "ensemble.batch_members=4", "ensemble.compile=true")
    assert "blocks compiled (torch.compile)" in compiled.stderr and "blocks compiled" not in eager.stderr
    assert "torch.compile failed" not in compiled.stderr, compiled.stderr
    for m in range(5):
        difference = np.abs(member_frames(tmp_path / "eager", m) - member_frames(tmp_path / "compiled", m)).max()
        assert difference <= 1e-5, (m, difference)
