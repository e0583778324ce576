#!/usr/bin/env bash
# Sourced by the templates once they know the repository (${repo}):
#   source "${repo}/slurm/activate.sh" slurm/NAME.sh
# activates the project's virtual environment: ASTEROID_VENV, else .venv of the repository.
# shellcheck disable=SC2154  # repo is set by the template that sources this file
venv="${ASTEROID_VENV:-${repo}/.venv}"
if [ ! -f "${venv}/bin/activate" ]; then
    echo "${1:-slurm}: no virtual environment at ${venv} (run tools/bootstrap.sh, or set ASTEROID_VENV)" >&2
    exit 2
fi
# shellcheck disable=SC1091  # the venv is created at run time
source "${venv}/bin/activate"
