"""slurm/train.sh submitted from the repository root to the local Slurm cluster: one task per (fake) GPU on
each of two nodes, trains the tiny config, and matches a one-process run with the doubled micro-batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO
from tests.support.train import TINY_CONFIG, assert_same_losses, run_train, tiny_dataset, train_losses  # noqa: F401

pytestmark = pytest.mark.slurm


def test_train_script_across_two_nodes(slurm_cluster, tiny_dataset, tmp_path):
    if len(slurm_cluster.nodes) < 2 or slurm_cluster.gpus_per_node < 1:
        pytest.skip("needs two nodes with at least one (fake) GPU each")
    run_dir = tmp_path / "run"
    job = slurm_cluster.submit(
        REPO / "slurm" / "train.sh",
        [f"configs/tiny/{TINY_CONFIG.name}", f"data.dataset={tiny_dataset}", f"train.run_dir={run_dir}",
         "train.micro_batch_size=1", "train.zero_stage=1"],
        sbatch_args=["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"],
        env={"ASTEROID_VENV": str(Path(sys.prefix))}, cwd=REPO, timeout=300)
    assert job.returncode == 0 and job.state == "COMPLETED", job.describe()
    log = job.stderr()
    assert "launcher=slurm world_size=2" in log, job.describe()
    # the rendezvous the tasks derived themselves: the allocation's first node, 15000 + job id mod 10000
    assert f"master={slurm_cluster.nodes[0]}:{15000 + job.job_id % 10000}" in log, log
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000006"
    reference = tmp_path / "reference"  # one process, micro-batch 2
    run_train(tiny_dataset, reference, "train.max_steps=6")
    expected = train_losses(reference)
    assert_same_losses(train_losses(run_dir), expected, abs_tol=1e-5 * max(expected.values()))
