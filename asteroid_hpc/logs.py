"""Rank-aware logging: ``[rank r/w host]`` prefixes, rank 0 on the console, optional per-rank files."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Protocol

_ROOT = "asteroid_hpc"


class RankInfo(Protocol):
    """What logging needs to know of the process (``runtime.LaunchInfo`` is one)."""

    rank: int
    world_size: int
    hostname: str


class _RankFilter(logging.Filter):
    def __init__(self, info: RankInfo):
        super().__init__()
        self.prefix = f"[rank {info.rank}/{info.world_size} {info.hostname}]"

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_prefix = self.prefix
        return True


# The command line holds console records of a run's first seconds back: a user error found early then
# prints its one line alone, and a run that goes on prints them, in order, once the time has passed.
HOLD_S = 5.0
_hold = {"s": 0.0}  # seconds the console handlers made from now on hold their records (0: none)


def hold_console(seconds: float) -> None:
    """Make the console handlers of later :func:`setup_logging` calls hold records for ``seconds``."""
    _hold["s"] = seconds


class _HoldingHandler(logging.StreamHandler):
    """A stderr handler that holds its records for the :func:`hold_console` time after it was made, or
    until :func:`release_console`."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.until = time.monotonic() + _hold["s"] if _hold["s"] else 0.0
        self.held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.until and time.monotonic() < self.until:
            self.held.append(record)
            return
        self.let_go(drop=False)
        super().emit(record)

    def let_go(self, *, drop: bool) -> None:
        held, self.held, self.until = self.held, [], 0.0
        for record in [] if drop else held:
            super().emit(record)


def release_console(*, drop: bool = False) -> None:
    """Print the console records held so far (``drop``: discard them, before a one-line user error)."""
    for handler in logging.getLogger(_ROOT).handlers:
        if isinstance(handler, _HoldingHandler):
            handler.let_go(drop=drop)


def get_logger(name: str) -> logging.Logger:
    """A logger below the project's root logger (configure once with :func:`setup_logging`)."""
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


def setup_logging(info: RankInfo, *, level: int = logging.INFO, all_ranks: bool = False,
                  log_dir: str | Path | None = None) -> logging.Logger:
    """Configure the project's root logger for this rank.

    Rank 0 logs to stderr; other ranks only when ``all_ranks`` (or ASTEROID_LOG_ALL_RANKS=1) is set.
    With ``log_dir`` every rank also writes ``rank<r>.log`` there.
    """
    root = logging.getLogger(_ROOT)
    root.setLevel(level)
    root.propagate = False
    for handler in list(root.handlers):
        if isinstance(handler, _HoldingHandler):
            handler.let_go(drop=False)
        root.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(rank_prefix)s %(levelname)s %(message)s", "%H:%M:%S")
    rank_filter = _RankFilter(info)
    all_ranks = all_ranks or os.environ.get("ASTEROID_LOG_ALL_RANKS") == "1"
    if info.rank == 0 or all_ranks:
        console = _HoldingHandler(sys.stderr)
        console.setFormatter(fmt)
        console.addFilter(rank_filter)
        root.addHandler(console)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(log_dir) / f"rank{info.rank}.log")
        file_handler.setFormatter(fmt)
        file_handler.addFilter(rank_filter)
        root.addHandler(file_handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    return root
