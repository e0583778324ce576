"""One thread per process for the QM engine: with two OpenMP threads tblite was up to 10x slower here."""

from __future__ import annotations

import contextlib
import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def set_single_thread_env() -> None:
    """Set the thread variables to 1; effective for libraries loaded (or processes spawned) afterwards."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"


@contextlib.contextmanager
def single_threaded():
    """Limit already-loaded OpenMP/BLAS pools to one thread for the duration (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without threadpoolctl rely on the environment variables
        yield
        return
    import tblite.ase  # noqa: F401  (load tblite's OpenMP runtime so that the limit reaches it)

    with threadpool_limits(limits=1):
        yield
