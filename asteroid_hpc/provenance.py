"""What a run records about itself: package versions, the project's commit, the start-up summary.

Read from metadata and the environment without importing the packages (bottom layer: imports nothing
of the project).
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("asteroid-hpc", "torch", "deepspeed", "mpi4py", "numpy", "netCDF4", "click")


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo: Path | None = None) -> str:
    """The checked-out commit of the project (with '-dirty' when modified), or 'unknown'."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(info) -> dict[str, Any]:
    """Commit, versions and launch facts of this run (``info``: a ``runtime.LaunchInfo``)."""
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "job_id": info.job_id,
        "launcher": info.launcher,
        "world_size": info.world_size,
        "hostname": info.hostname,
    }


def startup_summary(info, *, device: str, config_hash: str, run_dir: str | Path,
                    extra: dict[str, Any] | None = None) -> str:
    """One block of text, logged once by rank 0 when a command starts."""
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    lines = [
        f"asteroid-hpc start-up: launcher={info.launcher} world_size={info.world_size} "
        f"local_world_size={info.local_world_size} device={device} master={info.master_addr}:{info.master_port}",
        f"  versions: {versions}",
        f"  config hash: {config_hash}   run directory: {run_dir}   job id: {info.job_id or '-'}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)
