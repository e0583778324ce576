#!/usr/bin/env bash
# Ensemble forecast with ASTEROID under Slurm: members dealt out over all tasks of the job, optionally
# several tasks per member (spatial domain decomposition, ensemble.domains=D) for large systems.
#
# Usage (submit from the repository root):
#   sbatch slurm/ensemble.sh MODEL INITIAL OUTDIR [KEY=VALUE ...]
#   sbatch --nodes=4 --ntasks-per-node=8 slurm/ensemble.sh model.safetensors traj.nc ens/run1 ensemble.members=64
#   sbatch --nodes=2 --ntasks-per-node=4 slurm/ensemble.sh model.safetensors box.nc ens/box ensemble.domains=4
#
# Array job over many initial conditions: every "{task}" in the arguments becomes SLURM_ARRAY_TASK_ID.
#   sbatch --array=0-99 slurm/ensemble.sh model.safetensors 'inits/ic_{task}.nc' 'ens/ic_{task}' ensemble.seed={task}
#
# A dependent evaluation that starts only when the forecast succeeded:
#   jobid=$(sbatch --parsable slurm/ensemble.sh model.safetensors traj.nc ens/run1 ensemble.members=16)
#   sbatch --dependency=afterok:"${jobid}" slurm/evaluate.sh model.safetensors traj.nc eval/run1 --protocol C
#
# Parameters:
#   MODEL             as in every command: exported weights (a .safetensors file or its folder), a training
#                     checkpoint folder, or a run folder (its best checkpoint, else its newest)
#   INITIAL           AMBER NetCDF trajectory; the window ends at ensemble.start_frame (default: last frame)
#   OUTDIR            output directory; re-submitting the same command continues an interrupted run
#   KEY=VALUE ...     config overrides (ensemble.members, horizon_frames, perturbation, noise_angstrom,
#                     seed, domains, chunk_frames, ...) and further options (--config, --reference ...)
#   GPUs              --gpus-per-node=G with --ntasks-per-node=G puts one task on each GPU;
#                     --gpus-per-node=0 runs every task on CPU threads.
#   ASTEROID_VENV     the virtual environment to activate (default: .venv of this repository)
#
# --requeue: after preemption or a node failure Slurm requeues the job and it continues from the
# members' last flushed frames.
#
#SBATCH --job-name=asteroid-ensemble
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "${SLURM_SUBMIT_DIR}/slurm/ensemble.sh" ]; then
    repo="${SLURM_SUBMIT_DIR}"
else
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
# shellcheck source=slurm/activate.sh
source "${repo}/slurm/activate.sh" slurm/ensemble.sh

if [ "$#" -lt 3 ]; then
    echo "slurm/ensemble.sh: usage: sbatch slurm/ensemble.sh MODEL INITIAL OUTDIR [KEY=VALUE ...]" >&2
    exit 2
fi
task="${SLURM_ARRAY_TASK_ID:-0}"
args=()
for arg in "$@"; do
    args+=("${arg//\{task\}/${task}}")
done
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"

echo "slurm/ensemble.sh: job ${SLURM_JOB_ID} (array task ${task}) on ${SLURM_JOB_NODELIST}," \
     "${SLURM_NTASKS} tasks: ${args[*]}" >&2
srun --kill-on-bad-exit=1 asteroid-hpc ensemble-forecast "${args[0]}" "${args[1]}" -o "${args[2]}" "${args[@]:3}"
