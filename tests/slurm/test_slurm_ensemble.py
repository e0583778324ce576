"""slurm/ensemble.sh on the local two-node Slurm: an array job of two initial conditions, each run across
both nodes (one task per node, members dealt out over the tasks)."""

from __future__ import annotations

import json

import pytest

from tests.support.cli import REPO
from tests.support.ensemble import ensemble_model_file, molecule_trajectory

pytestmark = pytest.mark.slurm


def test_ensemble_array_job_across_two_nodes(slurm_cluster, tmp_path):
    model = ensemble_model_file(tmp_path / "tiny.safetensors")
    for task in (0, 1):
        molecule_trajectory(tmp_path / f"ic_{task}.nc", n_frames=8, seed=task)
    job = slurm_cluster.submit(
        REPO / "slurm" / "ensemble.sh",
        [model, str(tmp_path / "ic_{task}.nc"), str(tmp_path / "ens_{task}"), "ensemble.members=4",
         "ensemble.horizon_frames=6", "ensemble.chunk_frames=2", "ensemble.seed={task}"],
        sbatch_args=["--array=0-1", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
                     "--time=5"],
        cwd=REPO, timeout=300)
    assert job.returncode == 0, job.describe()
    for task in (0, 1):
        out = tmp_path / f"ens_{task}"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["process_grid"] == [2, 1], summary
        assert summary["run"]["seed"] == task and summary["run"]["initial"].endswith(f"ic_{task}.nc")
        assert (out / "COMPLETE").exists()
        assert sorted(p.name for p in (out / "members").glob("*.nc")) == [f"member_{m:05d}.nc" for m in range(4)]
