"""`mpiexec -n 2 asteroid-hpc preprocess` writes the same dataset as one process, each shard by one rank."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.cli import run_cli, run_mpi
from tests.support.data import dataset_fingerprint, random_walk, write_traj

pytestmark = pytest.mark.mpi


def test_two_ranks_write_the_same_dataset_as_one(tmp_path):
    paths = [write_traj(tmp_path / f"s{i}.nc", random_walk(150 + 40 * i, seed=20 + i)) for i in range(3)]
    x = random_walk(150, seed=30)
    x[77, 2, 2] = np.nan
    paths.append(write_traj(tmp_path / "with_nan.nc", x))
    opts = ["data.frames_per_shard=32", "data.chunk_frames=10", "model.history_frames=4", "data.horizon_frames=3",
            "--drop-nonfinite", "--no-progress"]

    one = run_cli("preprocess", *paths, "-o", tmp_path / "one", *opts, timeout=120)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", "preprocess", *paths, "-o", tmp_path / "two", *opts, timeout=180,
                  mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert "on 2 rank(s)" in two.stderr

    assert dataset_fingerprint(tmp_path / "one") == dataset_fingerprint(tmp_path / "two")
    writers = {json.loads(p.read_text())["written_by_rank"] for p in (tmp_path / "two" / "shards").glob("*.json")}
    assert writers == {0, 1}
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["dropped_nonfinite_frames"] == 1


def test_bad_input_under_two_ranks_exits_2_and_leaves_no_data(tmp_path):
    x = random_walk(200, seed=40)
    x[110, 0, 0] = np.inf  # in the training range of the second file, found by the rank writing that shard
    paths = [write_traj(tmp_path / "ok.nc", random_walk(200, seed=41)), write_traj(tmp_path / "bad.nc", x)]
    proc = run_mpi(2, "-m", "asteroid_hpc", "preprocess", *paths, "-o", tmp_path / "out",
                   "data.frames_per_shard=25", "model.history_frames=4", "data.horizon_frames=3", "--no-progress",
                   timeout=180, mpi4py_runner=False)
    assert proc.returncode == 2, proc.stderr
    assert "bad.nc: non-finite coordinates" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.nc"))


def test_two_ranks_unwrap_a_water_box_as_one_and_resume_the_same(tmp_path):
    """A wrapped water box (chronological gaps, dropped frames, shards dealt round-robin): 2 ranks write the
    same unwrapped shards as 1; a 2-rank re-run after one shard was deleted writes it again, bit-identically
    (the other shards' pass-1 shifts read from their sidecars)."""
    from tests.test_preprocess_unwrap import water_box

    traj, pdb, _ = water_box(tmp_path, nan_frames=(5, 47, 87, 90))
    opts = ["--topology", pdb, "data.frames_per_shard=16", "data.chunk_frames=7", "model.history_frames=4",
            "data.horizon_frames=3", "--drop-nonfinite", "--no-progress"]
    one = run_cli("preprocess", traj, "-o", tmp_path / "one", *opts, timeout=120)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", "preprocess", traj, "-o", tmp_path / "two", *opts, timeout=180,
                  mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    reference = dataset_fingerprint(tmp_path / "one")
    assert reference["manifest"]["unwrapped"] is True
    assert dataset_fingerprint(tmp_path / "two") == reference
    writers = {json.loads(p.read_text())["written_by_rank"] for p in (tmp_path / "two" / "shards").glob("*.json")}
    assert writers == {0, 1}

    (tmp_path / "two" / "manifest.json").unlink()
    (tmp_path / "two" / "shards" / "shard-00003.nc").unlink()
    again = run_mpi(2, "-m", "asteroid_hpc", "preprocess", traj, "-o", tmp_path / "two", *opts, timeout=180,
                    mpi4py_runner=False)
    assert again.returncode == 0, again.stderr
    assert "(resuming)" in again.stderr and "8 shards (7 reused)" in again.stderr, again.stderr
    assert dataset_fingerprint(tmp_path / "two") == reference


def test_a_step_too_long_to_unwrap_on_one_rank_is_one_line_on_two(tmp_path):
    """Pass 1 fails on rank 1 only (the jump lies in shard 1): both ranks stop, exit 2, one error line."""
    from tests.test_preprocess_unwrap import water_box

    traj, pdb, _ = water_box(tmp_path, jump_frame=20)
    proc = run_mpi(2, "-m", "asteroid_hpc", "preprocess", traj, "-o", tmp_path / "out", "--topology", pdb,
                   "data.frames_per_shard=16", "data.split_fractions=[1,0,0]", "model.history_frames=4",
                   "data.horizon_frames=3", "--no-progress", timeout=180, mpi4py_runner=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors and all("water.nc: frame 20: atom " in line and "moved half the box's smallest width" in line
                          for line in errors)
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
