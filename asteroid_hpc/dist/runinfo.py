"""What a run records about itself: the resolved config with provenance, and the start-up summary."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from .launch import LaunchInfo
from .versions import package_versions


def git_commit(repo: Path | None = None) -> str:
    """The checked-out commit of the project (with '-dirty' when modified), or 'unknown'."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(info: LaunchInfo) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "job_id": info.job_id,
        "launcher": info.launcher,
        "world_size": info.world_size,
        "hostname": info.hostname,
    }


def write_resolved_config(cfg, run_dir: str | Path, info: LaunchInfo, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config plus provenance into ``run_dir`` (atomically; call on rank 0)."""
    import yaml

    from ..atomic import write_text_atomic
    from ..config import config_hash, to_dict

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"config_hash": config_hash(cfg), "provenance": provenance(info), **to_dict(cfg)}
    return write_text_atomic(run_dir / name, yaml.safe_dump(doc, sort_keys=False))


def startup_summary(info: LaunchInfo, *, device: str, config_hash: str, run_dir: str | Path,
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
