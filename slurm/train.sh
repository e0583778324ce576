#!/usr/bin/env bash
# Train ASTEROID with DeepSpeed under Slurm: one task per GPU, on one or many nodes.
#
# Usage (submit from the repository root):
#   sbatch slurm/train.sh CONFIG [KEY=VALUE ...]
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 slurm/train.sh configs/aspirin.yaml train.max_steps=20000
#   ASTEROID_CONFIG=configs/aspirin.yaml sbatch slurm/train.sh
#
# Parameters:
#   CONFIG            first argument, or the ASTEROID_CONFIG environment variable: the training config
#   KEY=VALUE ...     further arguments: config overrides (e.g. train.zero_stage=2)
#   GPUs per node     sbatch's --gpus-per-node=G together with --ntasks-per-node=G (one task per GPU);
#                     options on the sbatch command line override the #SBATCH header below.
#                     Without GPUs, give --gpus-per-node=0: every task then trains on CPU threads.
#   ASTEROID_VENV     the virtual environment to activate (default: .venv of this repository)
#   ASTEROID_RESUME   auto (default: the newest complete checkpoint, else a fresh start) | never | PATH
#
# Time limits and preemption: Slurm sends SIGUSR1 300 s before the time limit (--signal) and SIGTERM on
# preemption; every rank then checkpoints at the next step and exits 0. --requeue lets Slurm requeue the
# job after preemption or a node failure, and the requeued job continues from that checkpoint
# (--resume auto); after a time-limit stop, submit the same command again.
#
#SBATCH --job-name=asteroid-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

# The repository: the submission directory when it holds this script (sbatch runs a copy of the
# script from Slurm's spool directory), else the directory above this script.
if [ -n "${SLURM_SUBMIT_DIR:-}" ] && [ -f "${SLURM_SUBMIT_DIR}/slurm/train.sh" ]; then
    repo="${SLURM_SUBMIT_DIR}"
else
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
# shellcheck source=slurm/activate.sh
source "${repo}/slurm/activate.sh" slurm/train.sh

config="${1:-${ASTEROID_CONFIG:-}}"
if [ -z "${config}" ]; then
    echo "slurm/train.sh: give the training config as the first argument or in ASTEROID_CONFIG" >&2
    exit 2
fi
if [ "$#" -gt 0 ]; then
    shift
fi
resume="${ASTEROID_RESUME:-auto}"

# The rendezvous for torch.distributed (the step's first node, a port derived from the job id) is
# derived by every task from its SLURM_* variables; the start-up summary logs it (master=HOST:PORT).
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${repo}/.cache/torch_extensions}"

cd "${repo}"
echo "slurm/train.sh: job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}, ${SLURM_NTASKS} tasks, config ${config}" >&2
srun --kill-on-bad-exit=1 asteroid-hpc train "${config}" "$@" --resume "${resume}"
