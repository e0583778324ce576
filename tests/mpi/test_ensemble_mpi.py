"""ensemble-forecast under mpiexec -n 2: member-parallel and domain-parallel runs equal 1-rank runs; a failing
rank ends the whole job promptly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.ensemble import (ensemble_model_file, lj_like_box, molecule_trajectory, periodic_model_file,
                                    water_box_frames, water_box_trajectory, water_topology)
from tests.support.cli import cli_env, run_cli, run_mpi

pytestmark = pytest.mark.mpi
ENV = cli_env(OMP_NUM_THREADS="1")  # the same torch thread count in every run
# 128 waters in a 24.8 x 12.4 x 12.4 A box: two slabs of 12.4 A with 5 A halos leave atoms out of each domain
WATER_LATTICE = (8, 4, 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ensemble-mpi")
    _, water_numbers, _, _ = water_box_frames(WATER_LATTICE)
    return {"model": ensemble_model_file(root / "tiny.safetensors"),
            "molecule": molecule_trajectory(root / "molecule.nc", n_frames=12),
            "box": lj_like_box(root / "box.nc", n_atoms=400),
            "periodic_model": periodic_model_file(root / "periodic.safetensors", water_numbers),
            "water": water_box_trajectory(root / "water.nc", lattice=WATER_LATTICE),
            "water_topology": water_topology(root / "water.pdb", len(water_numbers) // 3)}


def forecast_args(files, initial: str, outdir: Path, *overrides: str) -> list[str]:
    return ["ensemble-forecast", str(files["model"]), str(files[initial]), "-o", str(outdir), *overrides]


def members(outdir: Path, count: int) -> np.ndarray:
    from asteroid_hpc.data.amber import read_frames

    return np.stack([read_frames(outdir / "members" / f"member_{m:05d}.nc").coordinates for m in range(count)])


def test_member_parallel_equals_one_rank(files, tmp_path):
    settings = ("ensemble.members=4", "ensemble.horizon_frames=12", "ensemble.chunk_frames=4")
    one = run_cli(*forecast_args(files, "molecule", tmp_path / "one", *settings), env=ENV)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", *forecast_args(files, "molecule", tmp_path / "two", *settings),
                  env=ENV, timeout=240, mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert "2 member groups x 1 domains" in two.stderr and "members done 4/4" in two.stderr
    difference = np.abs(members(tmp_path / "one", 4) - members(tmp_path / "two", 4)).max()
    assert difference <= 1e-5, difference
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["process_grid"] == [2, 1]
    # the watch reads the gathered member files: the same checks whatever the rank count
    assert summary["watch"] == json.loads((tmp_path / "one" / "summary.json").read_text())["watch"]


def test_domain_parallel_equals_one_rank(files, tmp_path):
    """One member of a 400-atom box split over 2 ranks (each with a real halo) equals the 1-rank run."""
    settings = ("ensemble.members=1", "ensemble.horizon_frames=16", "ensemble.chunk_frames=4")
    one = run_cli(*forecast_args(files, "box", tmp_path / "one", *settings), env=ENV)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", *forecast_args(files, "box", tmp_path / "two", *settings, "--grid", "1x2"),
                  env=ENV, timeout=240, mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert "1 member groups x 2 domains" in two.stderr
    reference, split = members(tmp_path / "one", 1), members(tmp_path / "two", 1)
    assert np.abs(split[0, -1] - reference[0, 0]).max() > 1e-3  # the atoms do move
    assert np.array_equal(reference, split), np.abs(reference - split).max()  # bit for bit
    watches = [json.loads((tmp_path / run / "summary.json").read_text())["watch"] for run in ("one", "two")]
    assert watches[0] == watches[1] and watches[0]["bonds"] == 0  # argon takes no bonds


def test_failure_on_one_rank_ends_the_job_within_60_s(files, tmp_path):
    """Member 1 (rank 1's) has an unreadable partial file; rank 0 is busy with a long member 0."""
    out = tmp_path / "run"
    (out / "members").mkdir(parents=True)
    (out / "members" / "member_00001.nc.partial").write_text("not a trajectory")
    started = time.monotonic()
    proc = run_mpi(2, "-m", "asteroid_hpc", *forecast_args(files, "molecule", out, "ensemble.members=2",
                                                           "ensemble.horizon_frames=100000"),
                   env=ENV, timeout=120, mpi4py_runner=False)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    assert "member_00001.nc.partial" in proc.stderr and "error:" in proc.stderr, proc.stderr


def test_a_domain_decomposed_member_stops_on_all_its_ranks(files, tmp_path):
    """ensemble.stop_on_blowup with a member split over 2 ranks: the root's decision reaches both ranks, the
    file ends at the same pass as a 1-rank run's, and the job finishes (no rank left waiting)."""
    settings = ("ensemble.members=1", "ensemble.horizon_frames=16", "ensemble.chunk_frames=4",
                "ensemble.stop_on_blowup=true", "ensemble.blowup_displacement_angstrom=0.05")
    one = run_cli(*forecast_args(files, "box", tmp_path / "one", *settings), env=ENV)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", *forecast_args(files, "box", tmp_path / "two", *settings, "--grid", "1x2"),
                  env=ENV, timeout=240, mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    reference, split = members(tmp_path / "one", 1), members(tmp_path / "two", 1)
    assert 0 < reference.shape[1] < 16 and np.array_equal(reference, split)
    watches = [json.loads((tmp_path / run / "summary.json").read_text())["watch"] for run in ("one", "two")]
    assert watches[0] == watches[1] and watches[0]["stopped"] == [0]
    assert "moved" in watches[0]["blown_up"][0]["cause"]


def test_a_batch_of_members_split_over_domains_equals_one_rank(files, tmp_path):
    """Two members of the 400-atom box in one batch, split over 2 ranks (halos cover both members), equal
    the 1-rank batch and the members run one at a time."""
    settings = ("ensemble.members=2", "ensemble.horizon_frames=8", "ensemble.chunk_frames=4",
                "ensemble.noise_angstrom=0.5", "ensemble.batch_members=2")
    one = run_cli(*forecast_args(files, "box", tmp_path / "one", *settings), env=ENV)
    assert one.returncode == 0, one.stderr
    alone = run_cli(*forecast_args(files, "box", tmp_path / "alone", *settings, "ensemble.batch_members=1"), env=ENV)
    assert alone.returncode == 0, alone.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", *forecast_args(files, "box", tmp_path / "two", *settings, "--grid", "1x2"),
                  env=ENV, timeout=240, mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert "1 member groups x 2 domains" in two.stderr
    reference, split = members(tmp_path / "one", 2), members(tmp_path / "two", 2)
    assert np.abs(reference[:, -1] - reference[:, 0]).max() > 1e-3  # the atoms do move
    assert np.abs(reference - split).max() <= 1e-5, np.abs(reference - split).max()
    assert np.abs(reference - members(tmp_path / "alone", 2)).max() <= 1e-5
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["forecast_passes"]["batch_members"] == [2] and summary["forecast_passes"]["forwards"] == 4


def test_a_periodic_box_split_over_domains_equals_one_rank(files, tmp_path):
    """Two members of a periodic water box (atoms wrapped into it, molecules cut by the faces) in one batch,
    split over 2 ranks whose halos reach across the faces, equal the 1-rank run; molecules cross the faces
    during the rollout (the written, wrapped files jump by a box length where the continuous ones do not)."""
    from asteroid_hpc.data.amber import read_frames

    settings = ("ensemble.members=2", "ensemble.horizon_frames=12", "ensemble.chunk_frames=4",
                "ensemble.noise_angstrom=0.3", "ensemble.batch_members=2", "--topology", str(files["water_topology"]))
    runs = {}
    for wrap in ("none", "molecules"):
        one = run_cli("ensemble-forecast", files["periodic_model"], files["water"], "-o", tmp_path / f"one-{wrap}",
                      *settings, f"ensemble.output_wrap={wrap}", env=ENV)
        assert one.returncode == 0, one.stderr
        runs[wrap] = members(tmp_path / f"one-{wrap}", 2)
    two = run_mpi(2, "-m", "asteroid_hpc", "ensemble-forecast", files["periodic_model"], files["water"], "-o",
                  tmp_path / "two", *settings, "ensemble.output_wrap=none", "--grid", "1x2", env=ENV, timeout=240,
                  mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert "1 member groups x 2 domains" in two.stderr and "periodic box 24.8 x 12.4 x 12.4 A" in two.stderr
    reference, split = runs["none"], members(tmp_path / "two", 2)
    assert np.abs(reference - split).max() <= 1e-5, np.abs(reference - split).max()
    assert np.abs(reference[:, -1] - reference[:, 0]).max() > 1e-2  # the atoms do move
    start = read_frames(files["water"]).coordinates[-1]
    left_box = (reference < 0) | (reference >= np.array([24.8, 12.4, 12.4]))
    assert left_box.any() and not ((start < 0) | (start > np.array([24.8, 12.4, 12.4]))).any()  # across the faces
    centres = runs["molecules"].reshape(2, 12, -1, 3, 3).mean(axis=3)
    assert (np.abs(np.diff(centres, axis=1)) > 6.0).any()  # a molecule re-wrapped: it crossed a face
    watches = [json.loads((tmp_path / run / "summary.json").read_text())["watch"] for run in ("one-none", "two")]
    assert watches[0] == watches[1] and watches[0]["bonds"] >= 256


def test_constraints_hold_on_a_box_split_over_domains_as_on_one_rank(files, tmp_path):
    """Rigid waters (ensemble.constraints=auto): each domain completes the waters its halo cuts, so 2 domains
    equal 1 rank and every O–H and H–H keeps its length."""
    from asteroid_hpc.data.amber import read_frames

    rigid = water_box_trajectory(tmp_path / "rigid.nc", lattice=WATER_LATTICE, jitter_angstrom=0.0)
    settings = ("ensemble.members=2", "ensemble.horizon_frames=8", "ensemble.chunk_frames=4",
                "ensemble.batch_members=2", "ensemble.output_wrap=none", "--topology", str(files["water_topology"]))
    one = run_cli("ensemble-forecast", files["periodic_model"], rigid, "-o", tmp_path / "one", *settings, env=ENV)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", "ensemble-forecast", files["periodic_model"], rigid, "-o",
                  tmp_path / "two", *settings, "--grid", "1x2", env=ENV, timeout=240, mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert "384 bond and 1–3 distances" in two.stderr and "1 member groups x 2 domains" in two.stderr
    reference, split = members(tmp_path / "one", 2), members(tmp_path / "two", 2)
    assert np.abs(reference - split).max() <= 1e-5, np.abs(reference - split).max()
    edges = np.array([24.8, 12.4, 12.4])
    start = read_frames(rigid).coordinates[-1]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        vector = split[..., a::3, :] - split[..., b::3, :]
        length = np.linalg.norm(vector - edges * np.round(vector / edges), axis=-1)
        first = start[a::3] - start[b::3]
        expected = np.linalg.norm(first - edges * np.round(first / edges), axis=-1)
        assert np.abs(length - expected).max() < 1e-4
