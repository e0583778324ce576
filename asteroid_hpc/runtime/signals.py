"""Stop signals: SIGUSR1 (Slurm's ``--signal=USR1@300``) or SIGTERM set a flag; nothing else happens.

The handler only records the request. The training loop polls :func:`stop_requested` at each step
boundary, the ranks agree on it (an all-reduce of the flag with ``max``), checkpoint, and exit 0.
"""

from __future__ import annotations

import signal
import threading
from typing import Iterable

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

_stop = threading.Event()
_received: list[str] = []


def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    _received.append(signal.Signals(signum).name)
    _stop.set()


def install_stop_handlers(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> dict:
    """Route ``signals`` to the stop flag; returns the previous handlers (for :func:`restore_handlers`).

    Must be called from the main thread (a Python rule for signal handlers).
    """
    previous = {}
    for sig in signals:
        previous[sig] = signal.signal(sig, _handler)
    return previous


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def stop_requested() -> bool:
    """True once a stop signal has arrived (on this process)."""
    return _stop.is_set()


def received_signals() -> list[str]:
    """Names of the stop signals received so far, in order."""
    return list(_received)


def clear_stop() -> None:
    _stop.clear()
    _received.clear()
