"""Versions of the packages a run depends on, read from metadata without importing them."""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("asteroid-hpc", "torch", "deepspeed", "mpi4py", "numpy", "netCDF4", "click")


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
