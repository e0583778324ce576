"""One progress reporter for the long loops (preprocess, train, datagen, ensemble).

A tqdm bar when stderr is a terminal, otherwise a log line whenever one is due: at multiples of ``every`` units,
every ``every_s`` seconds (the clock starts at construction), at the end, or when the caller forces it.
Disabled (ranks other than 0, ``--no-progress``), it does nothing. tqdm is imported only for a bar.
"""

from __future__ import annotations

import sys
import time

from .logs import get_logger

log = get_logger(__name__)


class Progress:
    """Progress of ``done`` out of ``total`` units; ``bar``: True/False forces the bar or the log lines,
    None (default) chooses the bar on a terminal."""

    def __init__(self, label: str, total: int, *, unit: str, initial: int = 0, enabled: bool = True,
                 bar: bool | None = None, every: int = 0, every_s: float = 0.0) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.enabled, self.every, self.every_s = enabled, every, every_s
        self.done = initial
        self._last_log_s = time.monotonic()
        self._bar = None
        if enabled and (sys.stderr.isatty() if bar is None else bar):
            try:
                from tqdm import tqdm
            except ImportError:  # log lines instead
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, dynamic_ncols=True)

    def update(self, done: int, message: str, *, force: bool = False, **postfix: str) -> None:
        """Progress is now ``done`` units; ``message`` is the log line (without a bar), ``postfix`` the
        bar's extra fields."""
        if not self.enabled:
            return
        previous, self.done = self.done, done
        if self._bar is not None:
            self._bar.update(done - previous)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
        elif self._due(force):
            self._last_log_s = time.monotonic()
            log.info("%s", message)

    def _due(self, force: bool) -> bool:
        if force or self.done == self.total:
            return True
        if self.every > 0 and self.done % self.every == 0:
            return True
        return self.every_s > 0 and time.monotonic() - self._last_log_s >= self.every_s

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
