#!/usr/bin/env bash
# Evaluate a model under Slurm (one task), typically as a job that depends on a forecast or
# a training job:
#   jobid=$(sbatch --parsable slurm/ensemble.sh model.safetensors traj.nc ens/run1)
#   sbatch --dependency=afterok:"${jobid}" slurm/evaluate.sh model.safetensors traj.nc eval/run1 --protocol C
#
# Usage: sbatch slurm/evaluate.sh MODEL DATASET OUTDIR [evaluate options and KEY=VALUE overrides ...]
#   MODEL             as in every command (see `asteroid-hpc evaluate --help`), or none for the baselines
#   ASTEROID_VENV     the virtual environment to activate (default: .venv of this repository)
#
#SBATCH --job-name=asteroid-evaluate
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "${SLURM_SUBMIT_DIR}/slurm/evaluate.sh" ]; then
    repo="${SLURM_SUBMIT_DIR}"
else
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
# shellcheck source=slurm/activate.sh
source "${repo}/slurm/activate.sh" slurm/evaluate.sh

if [ "$#" -lt 3 ]; then
    echo "slurm/evaluate.sh: usage: sbatch slurm/evaluate.sh MODEL DATASET OUTDIR [evaluate options ...]" >&2
    exit 2
fi
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
srun --ntasks=1 asteroid-hpc evaluate "$1" "$2" -o "$3" "${@:4}"
