#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole test suite, every tier included:
# unit, mpi (mpiexec -n 2), slow (training, end-to-end) and slurm (a real local Slurm).
#   bash tools/test.sh                  # everything, as CI runs it
#   bash tools/test.sh -m "not slurm"   # extra arguments go to pytest
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/bootstrap.sh
source "$repo/tools/bootstrap.sh"
cd "$repo"
# One torch/OpenMP thread per process: the suite runs many small models and 2-rank jobs on 2 cores,
# where oversubscribed OpenMP threads make tiny models 10-50x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest -p no:cacheprovider --durations=15 "$@"
