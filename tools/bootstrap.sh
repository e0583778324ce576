#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install everything it needs,
# system packages included. Sourced by tools/demo.sh and tools/test.sh; safe to re-run.
#
#   ASTEROID_TORCH   pip requirement for torch (default "torch==2.13.0", the CPU build
#                    that lies on these machines' disk). On a GPU cluster set e.g.
#                    ASTEROID_TORCH="torch==2.5.1" with PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
#                    pointing at the CUDA wheel index, or preinstall torch and set
#                    ASTEROID_TORCH=skip.
#   ASTEROID_VENV    where the venv lives (default .venv in the repository)
#   ASTEROID_EXTRAS  pip extras to install (default "io,test,datagen")
#   ASTEROID_NO_APT  set to 1 to skip the Debian packages (bring your own MPI)
_asteroid_saved_opts="$(set +o)"  # restored at the end: this file is sourced
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ASTEROID_VENV:-$repo/.venv}"
torch_req="${ASTEROID_TORCH:-torch==2.13.0}"
extras="${ASTEROID_EXTRAS:-io,test,datagen}"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- system packages: Open MPI (launchable by srun --mpi=pmix as well as mpiexec), shellcheck ---
# (the local Slurm of the test suite installs its own packages: tools/slurm_local.sh)
need_apt=()
command -v mpiexec.openmpi >/dev/null 2>&1 || need_apt+=(openmpi-bin libopenmpi-dev)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
if [ "${ASTEROID_NO_APT:-0}" != 1 ] && [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing Debian packages: ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; }
    else
        log "missing ${need_apt[*]} and cannot apt-get install: install them (or an MPI module) yourself"
    fi
fi

# --- the virtual environment ---
stamp="$venv/.asteroid-installed"
want="$(sha256sum < "$repo/pyproject.toml" | cut -c1-16) $torch_req $extras"
if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    if [ "$torch_req" != skip ]; then
        log "installing $torch_req (before the project, so nothing pulls in a second torch)"
        "$venv/bin/python" -m pip install -q "$torch_req"
    fi
    log "installing asteroid-hpc[$extras]"
    "$venv/bin/python" -m pip install -q -e "${repo}[${extras}]"
    echo "$want" > "$stamp"
fi

# --- runtime environment for MPI and DeepSpeed on this machine ---
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
export DS_ACCELERATOR="${DS_ACCELERATOR:-$( [ -e /dev/nvidia0 ] && echo cuda || echo cpu )}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}"
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
eval "$_asteroid_saved_opts"
unset _asteroid_saved_opts
