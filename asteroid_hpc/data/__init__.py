"""Trajectory data: readers and writers (AMBER NetCDF, MD17 npz, extended XYZ), preprocessing into shards,
the dataset manifest, and the torch windows dataset and sampler.

Names are imported lazily so that ``import asteroid_hpc.data`` pulls in neither torch nor netCDF4.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AmberWriter": "amber",
    "AmberReader": "amber",
    "TrajectoryReader": "readers",
    "read_frames": "readers",
    "read_manifest": "manifest",
    "run_preprocess": "preprocess",
    "WindowDataset": "windows",
    "DistributedWindowSampler": "sampler",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = sorted(_EXPORTS)
