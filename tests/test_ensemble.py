"""Ensemble forecasts in one process: grid, perturbations, decomposition, rollout, outputs, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support.ensemble import files, member_frames  # noqa: F401 (files: a fixture)
from tests.support.cli import assert_user_error, cli_env, run_cli

SINGLE_THREAD = cli_env(OMP_NUM_THREADS="1")



# ----------------------------------------------------------------------------------------- logic

def test_grid_divides_members_round_robin_and_checks_sizes():
    from asteroid_hpc.ensemble import ProcessGrid, parse_grid
    from asteroid_hpc.errors import UserError

    grid = ProcessGrid(world_size=6, rank=4, domains=2)
    assert (grid.groups, grid.group, grid.domain, grid.group_root(2)) == (3, 2, 0, 4)
    assert [grid.members_of(g, 8) for g in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert parse_grid("3x2", 6) == 2
    with pytest.raises(UserError, match="does not divide"):
        ProcessGrid(world_size=3, rank=0, domains=2)
    with pytest.raises(UserError, match="needs 4 ranks"):
        parse_grid("2x2", 2)
    with pytest.raises(UserError, match="GROUPSxDOMAINS"):
        parse_grid("two", 2)


def test_member_random_stream_depends_on_seed_and_member_only():
    from asteroid_hpc.ensemble import member_rng

    a, b = member_rng(7, 3).normal(size=5), member_rng(7, 3).normal(size=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, member_rng(7, 4).normal(size=5))
    assert not np.array_equal(a, member_rng(8, 3).normal(size=5))


def test_starting_windows_gaussian_and_frames(files):
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.ensemble.perturb import inspect_initial, starting_window

    frames = read_frames(files["molecule"]).coordinates
    cfg = EnsembleConfig(members=3, noise_angstrom=0.1, seed=5, start_frame=20)
    initial = inspect_initial(files["molecule"], cfg, 4)
    w0, w1 = starting_window(initial, cfg, 0, 4), starting_window(initial, cfg, 1, 4)
    noise = w0 - frames[17:21]
    assert np.allclose(noise, noise[0], atol=1e-5)  # one displacement per atom, same in every frame
    assert 0.05 < noise.std() < 0.2 and not np.allclose(w0, w1)
    cfg = EnsembleConfig(members=3, perturbation="frames", frame_spacing=5, noise_angstrom=0.0)
    initial = inspect_initial(files["molecule"], cfg, 4)
    assert initial.end_frame == 39
    assert np.array_equal(starting_window(initial, cfg, 2, 4), frames[26:30])


def test_starting_window_follows_the_training_stride(files):
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.ensemble.perturb import inspect_initial, starting_window
    from asteroid_hpc.errors import UserError

    frames = read_frames(files["molecule"]).coordinates
    cfg = EnsembleConfig(members=2, perturbation="frames", frame_spacing=1, noise_angstrom=0.0)
    plain = inspect_initial(files["molecule"], cfg, 4)
    strided = inspect_initial(files["molecule"], cfg, 4, frame_stride=3)
    assert strided.timestep_ps == pytest.approx(3 * plain.timestep_ps)
    assert np.array_equal(starting_window(strided, cfg, 0, 4), frames[30:40:3])
    assert np.array_equal(starting_window(strided, cfg, 1, 4), frames[29:39:3])
    with pytest.raises(UserError, match="at stride 20"):
        inspect_initial(files["molecule"], cfg, 4, frame_stride=20)


def test_starting_window_errors_name_the_file(files):
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.perturb import inspect_initial
    from asteroid_hpc.errors import UserError

    with pytest.raises(UserError, match="molecule.nc.*needs 54 frames"):
        inspect_initial(files["molecule"], EnsembleConfig(members=6, perturbation="frames", frame_spacing=10), 4)
    with pytest.raises(UserError, match="outside its 40 frames"):
        inspect_initial(files["molecule"], EnsembleConfig(start_frame=40), 4)


def test_decomposition_owns_every_atom_once_and_halos_cover_the_cutoff(files):
    from scipy.spatial import cKDTree

    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.ensemble.domains import decompose

    positions = read_frames(files["box"]).coordinates[-1]
    parts = decompose(positions, 2, 5.0)
    owned = np.concatenate([parts.owned(d) for d in range(2)])
    assert np.array_equal(np.sort(owned), np.arange(400))
    tree = cKDTree(positions)
    for d in range(2):
        halo = len(parts.local[d]) - parts.n_owned[d]
        assert 0 < halo and len(parts.local[d]) < 400  # a real halo, not the whole system
        needed = set(np.concatenate(tree.query_ball_point(positions[parts.owned(d)], 5.0)))
        assert needed <= set(parts.local[d].tolist())
        for s in range(2):  # routing: what s sends to d lands on the same global atoms
            if s != d:
                sent = parts.local[s][parts.send[s][d]]
                assert np.array_equal(sent, parts.local[d][parts.recv[d][s]])


def test_rollout_equals_the_models_own_iterative_forecast(files):
    import torch

    from asteroid_hpc.data.amber import AmberReader, read_frames
    from asteroid_hpc.runtime.mpi import SingleProcess
    from asteroid_hpc.ensemble.domains import SingleDomain
    from asteroid_hpc.ensemble.rollout import MemberForecaster
    from asteroid_hpc.model import load_weights

    model = load_weights(files["model"])
    window = read_frames(files["molecule"], 0, 4).coordinates
    z = AmberReader(files["molecule"]).atomic_numbers
    frames = np.concatenate(list(MemberForecaster(model, z, SingleProcess()).rollout(window, 7)))
    with torch.no_grad():
        reference = model(torch.from_numpy(window)[None], torch.as_tensor(z), 7, domain=SingleDomain()).forecast[0]
    assert frames.shape == (7, 9, 3)
    assert np.array_equal(frames, reference.numpy())


# ----------------------------------------------------------------------------------------- runs

def run_forecast(files, outdir, *overrides, initial="molecule", extra=(), env=None, timeout=120):
    return run_cli("ensemble-forecast", files["model"], files[initial], "-o", outdir, *extra,
                   "ensemble.members=3", "ensemble.horizon_frames=10", "ensemble.chunk_frames=4",
                   "ensemble.start_frame=20", *overrides, env=env or SINGLE_THREAD, timeout=timeout)


def test_outputs_summary_and_readers(files, tmp_path):
    import MDAnalysis
    import mdtraj
    import netCDF4

    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.metrics.ensemble import crps_per_lead_time, ensemble_spread_per_atom

    out = tmp_path / "run"
    proc = run_forecast(files, out, extra=("--reference", files["molecule"], "--reference-start", "21"))
    assert proc.returncode == 0, proc.stderr
    assert "members done 3/3" in proc.stderr and "ETA" in proc.stderr
    members = np.stack([member_frames(out, m) for m in range(3)])
    assert members.shape == (3, 10, 9, 3) and np.isfinite(members).all()
    assert not np.allclose(members[0], members[1])
    for m in range(3):
        assert json.loads((out / "members" / f"member_{m:05d}.done").read_text())["frames"] == 10
    assert not list(out.rglob("*.partial")) and (out / "COMPLETE").exists()
    universe = MDAnalysis.Universe(str(out / "members" / "member_00001.nc"), format="NCDF", topology_format="MINIMAL")
    assert len(universe.trajectory) == 10 and np.allclose(universe.trajectory[3].positions, members[1, 3], atol=1e-4)
    with mdtraj.formats.NetCDFTrajectoryFile(str(out / "mean.nc")) as handle:
        mean_xyz = handle.read()[0]  # Å
    assert np.allclose(mean_xyz, members.mean(axis=0), atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["members"] == 3 and summary["reference"]["lead_times_scored"] == 10
    truth = read_frames(files["molecule"], 21, 31)
    with netCDF4.Dataset(out / "summary.nc") as nc:
        assert nc.file_format == "NETCDF3_64BIT_OFFSET"
        assert np.allclose(nc["spread_per_atom"][:], ensemble_spread_per_atom(members), atol=1e-5)
        assert np.allclose(nc["crps"][:], crps_per_lead_time(members, truth.coordinates), atol=1e-6)
        assert list(nc["lead_time_frames"][:]) == list(range(1, 11))


def test_members_independent_of_how_many_run_together(files, tmp_path):
    """Member 2 of a 3-member run equals member 2 of a 5-member run (its stream is (seed, member) only)."""
    assert run_forecast(files, tmp_path / "a").returncode == 0
    assert run_forecast(files, tmp_path / "b", "ensemble.members=5").returncode == 0
    assert np.array_equal(member_frames(tmp_path / "a", 2), member_frames(tmp_path / "b", 2))


def test_rerun_skips_finished_members_and_refuses_other_settings(files, tmp_path):
    out = tmp_path / "run"
    assert run_forecast(files, out).returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in (out / "members").glob("*.nc")}
    proc = run_forecast(files, out)
    assert proc.returncode == 0 and "continuing" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "members").glob("*.nc")} == stamps
    assert_user_error(run_forecast(files, out, "ensemble.seed=9"), "run.json", "seed")


@pytest.mark.slow  # several CLI runs
def test_resume_after_sigkill_equals_an_uninterrupted_run(files, tmp_path):
    """A real run killed with SIGKILL after its first flushed chunk, then re-run: same trajectories."""
    args = ("ensemble.members=2", "ensemble.horizon_frames=400", "ensemble.chunk_frames=8")
    reference = tmp_path / "whole"
    assert run_forecast(files, reference, *args).returncode == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "asteroid_hpc", "ensemble-forecast", str(files["model"]), str(files["molecule"]),
               "-o", str(out), "ensemble.start_frame=20", *args]
    proc = subprocess.Popen(command, env=SINGLE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "members" / "member_00000.nc.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if partial.exists() and partial.stat().st_size > 9 * 4 * 3 * 16:  # at least one chunk on disk
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not (out / "members" / "member_00000.done").exists()
    rerun = run_forecast(files, out, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing from frame" in rerun.stderr
    for m in range(2):
        assert np.array_equal(member_frames(out, m), member_frames(reference, m))


@pytest.mark.slow  # several CLI runs
def test_bad_inputs_are_user_errors(files, tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("not netcdf")
    assert_user_error(run_forecast(files, tmp_path / "o1", initial="model", extra=()), "tiny.safetensors")
    files = {**files, "bad": bad}
    assert_user_error(run_forecast(files, tmp_path / "o2", initial="bad"), "bad.nc")
    assert_user_error(run_forecast(files, tmp_path / "o3", "ensemble.domains=2"), "ensemble.domains=2")
    empty = tmp_path / "empty_model_dir"
    empty.mkdir()
    proc = run_cli("ensemble-forecast", empty, files["molecule"], "-o", tmp_path / "o4", env=SINGLE_THREAD)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_help_ends_with_examples():
    proc = run_cli("ensemble-forecast", "--help")
    assert proc.returncode == 0
    assert proc.stdout.rstrip().splitlines()[-1].strip().startswith("srun asteroid-hpc ensemble-forecast")
    assert "Examples:" in proc.stdout
