"""Real MPI ranks: a periodic trajectory split into ranges dealt round-robin to 2 ranks (as preprocess deals
shards) unwraps bit-identically to one sequential pass, the ranges chained by range_start_offsets."""

import json

import pytest

from tests.support.cli import REPO, json_objects, run_mpi

pytestmark = pytest.mark.mpi

SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
import numpy as np
from asteroid_hpc.data.unwrap import Unwrapper, range_start_offsets
from asteroid_hpc.runtime.mpi import world
from tests.test_unwrap import BOXES, molecular_trajectory, npt_cells, wrap_at_random

w = world()
box = BOXES["rhombic dodecahedron"]
x, bonds, _ = molecular_trajectory(box, n_frames=90, seed=21)
cells = npt_cells(box, len(x))
wrapped = wrap_at_random(x, cells, seed=22).astype(np.float32)
bounds = [0, 17, 40, 41, 90]
owners = [k % w.size for k in range(len(bounds) - 1)]  # round-robin, as shards
mine = [k for k, owner in enumerate(owners) if owner == w.rank]

def unwrapper(k, start=None):
    a = bounds[k]
    return Unwrapper(x.shape[1], bonds) if k == 0 else Unwrapper.after(wrapped[a - 1], start)

shifts = {{}}
for k in mine:
    u = unwrapper(k)
    u.advance(wrapped[bounds[k]:bounds[k + 1]], cells[bounds[k]:bounds[k + 1]])
    shifts[k] = u.offset
starts = range_start_offsets(w, owners, shifts)
parts = {{k: unwrapper(k, starts[k])(wrapped[bounds[k]:bounds[k + 1]], cells[bounds[k]:bounds[k + 1]]) for k in mine}}
gathered = w.gather(parts, root=0)
report = {{"rank": w.rank, "size": w.size, "ranges": mine}}
if w.rank == 0:
    split = {{k: v for part in gathered for k, v in part.items()}}
    joined = np.concatenate([split[k] for k in range(len(owners))])
    sequential = Unwrapper(x.shape[1], bonds)(wrapped, cells)
    report["identical"] = bool(np.array_equal(joined, sequential))
    report["moved"] = float(np.abs(joined - wrapped).max())
print(json.dumps(report))
"""


def test_ranges_on_two_ranks_unwrap_bit_identically_to_one_pass(tmp_path):
    script = tmp_path / "unwrap_ranges.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    proc = run_mpi(2, script, timeout=120)
    assert proc.returncode == 0, proc.stderr
    reports = sorted(json_objects(proc.stdout), key=lambda r: r["rank"])
    assert [(r["rank"], r["size"], r["ranges"]) for r in reports] == [(0, 2, [0, 2]), (1, 2, [1, 3])]
    assert reports[0]["identical"] is True, json.dumps(reports[0])
    assert reports[0]["moved"] > 10  # the wrapped input really was unwrapped
