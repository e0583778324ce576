#!/usr/bin/env bash
# Preprocess trajectories into a sharded dataset under Slurm: one MPI rank per task, shards dealt out
# across ranks (each shard written by one rank; rank 0 writes manifest.json last).
#
# Usage (submit from the repository root):
#   sbatch slurm/preprocess.sh OUTDIR INPUT... [KEY=VALUE ...] [--config CFG] [--overwrite] [--drop-nonfinite]
#   sbatch --ntasks=16 slurm/preprocess.sh data/aspirin 'runs/aspirin-*.nc' data.frames_per_shard=4096
#
# Parameters:
#   OUTDIR            first argument: the dataset directory to write
#   INPUT...          trajectories (.nc .ncdf .npz .xyz) or quoted globs, then config overrides and options,
#                     passed to `asteroid-hpc preprocess` as they are
#   tasks             --ntasks (or --nodes/--ntasks-per-node): ranks; more ranks than shards leaves some idle
#   ASTEROID_VENV     the virtual environment to activate (default: .venv of this repository)
#
# Restarting: a job that was killed or timed out can be submitted again with the same arguments; complete
# shards are kept (verified by size and sha256) and only the rest is written.
#
#SBATCH --job-name=asteroid-preprocess
#SBATCH --nodes=1
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "${SLURM_SUBMIT_DIR}/slurm/preprocess.sh" ]; then
    repo="${SLURM_SUBMIT_DIR}"
else
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
# shellcheck source=slurm/activate.sh
source "${repo}/slurm/activate.sh" slurm/preprocess.sh

if [ "$#" -lt 2 ]; then
    echo "slurm/preprocess.sh: usage: sbatch slurm/preprocess.sh OUTDIR INPUT... [KEY=VALUE ...]" >&2
    exit 2
fi
outdir="$1"
shift
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"

cd "${repo}"
echo "slurm/preprocess.sh: job ${SLURM_JOB_ID:-none} on ${SLURM_JOB_NODELIST:-localhost}," \
     "${SLURM_NTASKS:-1} ranks, output ${outdir}" >&2
srun --kill-on-bad-exit=1 asteroid-hpc preprocess "$@" -o "${outdir}"
