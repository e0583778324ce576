"""The resolved config of a run, written beside its outputs with the run's provenance."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_text_atomic
from ..provenance import provenance
from .load import config_hash, to_dict


def write_resolved_config(cfg, run_dir: str | Path, info, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config plus provenance into ``run_dir`` (atomically; call on rank 0)."""
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"config_hash": config_hash(cfg), "provenance": provenance(info), **to_dict(cfg)}
    return write_text_atomic(run_dir / name, yaml.safe_dump(doc, sort_keys=False))
