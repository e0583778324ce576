"""A lazy MPI helper: mpi4py is imported only when the process was started by an MPI launcher.

``world()`` returns the same small interface either way, so callers need no ``if size > 1``:
a single process gets a trivial communicator whose collectives return their input.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any

from .launch import launched_by_mpi

_OPS = ("sum", "max", "min")


class SingleProcess:
    """The world of one process."""

    rank = 0
    size = 1
    comm = None

    def barrier(self) -> None:
        pass

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        assert op in _OPS, op
        return value

    def allgather(self, obj: Any) -> list:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return [obj]

    def abort(self, code: int = 1) -> None:
        os._exit(code)


class MPIWorld:
    """COMM_WORLD through mpi4py, with the same interface as :class:`SingleProcess`."""

    def __init__(self, comm) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def barrier(self) -> None:
        self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        mpi_op = {"sum": self._mpi.SUM, "max": self._mpi.MAX, "min": self._mpi.MIN}[op]
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            np = None
        if np is not None and isinstance(value, np.ndarray):
            out = np.empty_like(value)
            self.comm.Allreduce(np.ascontiguousarray(value), out, op=mpi_op)
            return out
        return self.comm.allreduce(value, op=mpi_op)

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return self.comm.gather(obj, root=root)

    def abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        self.comm.Abort(code)


@functools.lru_cache(maxsize=1)
def world() -> SingleProcess | MPIWorld:
    """The process's world: MPI COMM_WORLD under an MPI launcher or srun, else a single process.

    Set ASTEROID_NO_MPI=1 to never initialise MPI (e.g. under torchrun).
    """
    if os.environ.get("ASTEROID_NO_MPI") == "1" or not launched_by_mpi():
        return SingleProcess()
    import mpi4py

    mpi4py.rc.threads = False  # no MPI_THREAD_MULTIPLE needed; lighter on some fabrics
    from mpi4py import MPI

    return MPIWorld(MPI.COMM_WORLD)


def abort_on_uncaught_exception() -> None:
    """Make an uncaught exception on any rank end the whole job (MPI_Abort) instead of hanging the others.

    The exception is printed first (one line for a UserError, else the traceback), then the job aborts.
    Installed by the CLI for every command that runs under MPI.
    """
    w = world()
    if w.size == 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        w.abort(getattr(exc, "exit_code", 1) or 1)

    sys.excepthook = hook
    threading.excepthook = lambda args: hook(args.exc_type, args.exc_value, args.exc_traceback)
