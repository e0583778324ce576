"""NetCDF's faults: frames never written hold the default fill value; a full disk is reported by netCDF4
as a RuntimeError, and a dataset whose close failed crashes the interpreter when freed (segfault at exit)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np

_NO_SPACE = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT}


def no_space(exc: RuntimeError, path: Path) -> Exception:
    """``exc`` as OSError(ENOSPC or EDQUOT) naming ``path`` when it reports a full disk, else ``exc``."""
    code = _NO_SPACE.get(str(exc))
    return OSError(code, str(exc), str(path)) if code else exc


def never_free(obj) -> None:
    """Leak one reference to ``obj`` (a dataset whose close failed), so that it is never freed."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def fill_value(dtype: np.dtype):
    """NetCDF's default fill value of ``dtype`` (what frames never written hold), or None."""
    import netCDF4

    return netCDF4.default_fillvals.get(dtype.str[1:])
