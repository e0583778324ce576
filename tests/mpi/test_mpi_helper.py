"""Real MPI ranks: the project's MPI helper under mpiexec -n 2."""

import json
import time

import pytest

from tests.support.cli import json_objects, run_mpi

pytestmark = pytest.mark.mpi

ALLREDUCE = """
import json, numpy as np
from asteroid_hpc.runtime.mpi import world
w = world()
total = w.allreduce(w.rank + 1)
vec = w.allreduce(np.full(3, w.rank + 1.0))
biggest = w.allreduce(w.rank, op="max")
ranks = w.allgather(w.rank)
print(json.dumps({"rank": w.rank, "size": w.size, "total": total, "vec": vec.tolist(), "max": biggest,
                  "ranks": ranks}))
"""


def test_allreduce_through_project_helper(tmp_path):
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE)
    proc = run_mpi(2, script, timeout=120)
    assert proc.returncode == 0, proc.stderr
    reports = sorted(json_objects(proc.stdout), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["size"] == 2 and r["total"] == 3 and r["vec"] == [3.0, 3.0, 3.0] and r["max"] == 1
        assert r["ranks"] == [0, 1]


CRASH = """
import sys, time
from asteroid_hpc.runtime.mpi import world, abort_on_uncaught_exception
abort_on_uncaught_exception()
w = world()
if w.rank == 1:
    raise RuntimeError("rank 1 fails on purpose")
w.barrier()          # rank 0 would wait here forever without MPI_Abort
time.sleep(600)
"""


def test_exception_on_one_rank_aborts_the_job_quickly(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    start = time.monotonic()
    # plain python, not mpi4py's runner: the project's own hook must do the abort
    proc = run_mpi(2, script, timeout=90, mpi4py_runner=False)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    assert "rank 1 fails on purpose" in proc.stderr


def test_env_under_mpiexec_sees_two_ranks():
    proc = run_mpi(2, "-m", "asteroid_hpc", "env", "--mpi", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["launcher"] == "openmpi" and report["world_size"] == 2 and report["mpi_world_size"] == 2
    assert [r["rank"] for r in report["mpi_ranks"]] == [0, 1]
