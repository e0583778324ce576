"""The local Slurm cluster itself: MPI over srun/PMIx across two emulated nodes, prompt failure when a rank
dies, MASTER_ADDR resolution for torch.distributed, fake GPUs, the submit helper's timeout and its restart
of a cluster whose node died."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.support.cli import json_objects

pytestmark = pytest.mark.slurm

NODES, TASKS_PER_NODE = 2, 2
FAILURE_DEADLINE_S = 60


def _batch(body: str) -> str:
    return (f"#!/bin/bash\n#SBATCH --nodes={NODES}\n#SBATCH --ntasks-per-node={TASKS_PER_NODE}\n"
            f"#SBATCH --time=5\nset -euo pipefail\n{textwrap.dedent(body)}")


def _write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def test_mpi_allreduce_across_two_nodes(slurm_cluster, tmp_path):
    ranks = _write(tmp_path / "allreduce.py", """
        import json, os, socket, sys
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        total = comm.allreduce(comm.rank + 1, op=MPI.SUM)
        print(json.dumps({"rank": comm.rank, "size": comm.size, "host": socket.gethostname(), "total": total,
                          "procid": int(os.environ["SLURM_PROCID"]), "prefix": sys.prefix}), flush=True)
    """)
    job = slurm_cluster.submit_text(_batch(f"srun --mpi=pmix python -m mpi4py {ranks}\n"), timeout=120)
    assert job.returncode == 0 and job.state == "COMPLETED", job.describe()
    records = json_objects(job.stdout())
    world = NODES * TASKS_PER_NODE
    assert sorted(r["rank"] for r in records) == list(range(world)), job.describe()
    assert all(r["size"] == world and r["procid"] == r["rank"] for r in records), records
    assert {r["total"] for r in records} == {world * (world + 1) // 2}, records
    hosts = [r["host"] for r in records]
    assert sorted(set(hosts)) == sorted(slurm_cluster.nodes) and len(set(hosts)) == NODES, hosts
    assert all(hosts.count(h) == TASKS_PER_NODE for h in set(hosts)), hosts
    # The job inherited the submitting environment and ran the same (venv) Python as the tests.
    assert {r["prefix"] for r in records} == {sys.prefix}, records


@pytest.mark.parametrize("failure", ["crash", "exception"])
def test_failing_rank_ends_the_job_promptly(slurm_cluster, tmp_path, failure):
    # "crash": rank 3 dies without MPI_Finalize; srun --kill-on-bad-exit=1 kills the others.
    # "exception": an uncaught exception under `python -m mpi4py` calls MPI_Abort. (Under plain
    # `python` the failing rank would hang in MPI_Finalize at exit and the job would never end.)
    fail = "os._exit(3)" if failure == "crash" else "raise RuntimeError('rank 3 fails')"
    ranks = _write(tmp_path / "fail.py", f"""
        import os, time
        from mpi4py import MPI
        if MPI.COMM_WORLD.rank == 3:
            {fail}
        time.sleep(600)
    """)
    job = slurm_cluster.submit_text(
        _batch(f"srun --mpi=pmix --kill-on-bad-exit=1 python -m mpi4py {ranks}\n"), timeout=FAILURE_DEADLINE_S + 60)
    assert job.returncode != 0, job.describe()
    assert job.state == "FAILED", job.describe()
    assert job.elapsed_s < FAILURE_DEADLINE_S, job.describe()


def test_master_addr_from_scontrol_resolves_for_torch_distributed(slurm_cluster, tmp_path):
    ranks = _write(tmp_path / "rendezvous.py", """
        import json, os, socket
        import torch
        import torch.distributed as dist
        address = socket.gethostbyname(os.environ["MASTER_ADDR"])
        dist.init_process_group("gloo", init_method="env://", rank=int(os.environ["SLURM_PROCID"]),
                                world_size=int(os.environ["SLURM_NTASKS"]))
        value = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(value)
        print(json.dumps({"rank": dist.get_rank(), "host": socket.gethostname(), "address": address,
                          "master": os.environ["MASTER_ADDR"], "total": value.item()}), flush=True)
        dist.destroy_process_group()
    """)
    body = f"""
        MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
        MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
        export MASTER_ADDR MASTER_PORT
        srun --kill-on-bad-exit=1 python {ranks}
    """
    job = slurm_cluster.submit_text(_batch(body), timeout=180)
    assert job.returncode == 0, job.describe()
    records = json_objects(job.stdout())
    world = NODES * TASKS_PER_NODE
    assert len(records) == world, job.describe()
    assert {r["master"] for r in records} == {slurm_cluster.nodes[0]}, records
    assert {r["address"] for r in records} == {"127.0.0.1"}, records
    assert {r["total"] for r in records} == {float(world * (world + 1) // 2)}, records
    assert len({r["host"] for r in records}) == NODES, records


def test_fake_gpus_schedule_gpus_per_node_jobs(slurm_cluster):
    gpus = slurm_cluster.gpus_per_node
    if gpus == 0:
        pytest.skip("the cluster was brought up without fake GPUs (SLURM_LOCAL_GPUS=0)")
    job = slurm_cluster.submit_text(
        _batch('srun bash -c \'echo "$(hostname) $SLURM_PROCID ${CUDA_VISIBLE_DEVICES:-none}"\'\n'),
        sbatch_args=[f"--gpus-per-node={gpus}"], timeout=60)
    assert job.returncode == 0, job.describe()
    lines = [line.split() for line in job.stdout().splitlines() if line.strip()]
    assert len(lines) == NODES * TASKS_PER_NODE, job.describe()
    expected = ",".join(str(g) for g in range(gpus))
    assert {devices for _, _, devices in lines} == {expected}, lines
    assert len({host for host, _, _ in lines}) == NODES, lines


def test_submit_timeout_cancels_the_job(slurm_cluster):
    with pytest.raises(TimeoutError, match="did not finish within 3 s") as failure:
        slurm_cluster.submit_text("#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --ntasks=1\nsleep 300\n", timeout=3)
    job_id = str(failure.value).split("JobId=")[1].split()[0]
    queue = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    assert job_id not in queue
    assert slurm_cluster.job_record(int(job_id)).get("JobState") == "CANCELLED"


def test_a_node_that_dies_is_restarted_and_the_job_submitted_again(slurm_cluster):
    """slurmd dying mid-job (seen once: glibc aborting inside it) must not leave the suite waiting for a
    DOWN node until the timeout: the submit helper restarts the cluster and runs the job again."""
    state_dir = Path(os.environ.get("SLURM_LOCAL_STATE_DIR", "/tmp/asteroid-slurm-local"))
    pid = int((state_dir / "pids" / "slurmd-node2").read_text())
    killer = threading.Timer(3.0, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.warns(UserWarning, match="went down during job"):
            job = slurm_cluster.submit_text(_batch("srun sleep 20\necho finished\n"), timeout=180)
    finally:
        killer.cancel()
    assert job.returncode == 0 and job.state == "COMPLETED", job.describe()
    assert "finished" in job.stdout()
    assert int((state_dir / "pids" / "slurmd-node2").read_text()) != pid
