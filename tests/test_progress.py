"""The one progress reporter (asteroid_hpc.progress): when it logs, when it draws a bar, when it is silent."""

from __future__ import annotations

import logging

import pytest

from asteroid_hpc import progress as progress_module
from asteroid_hpc.progress import Progress


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    handler = _Lines()
    logger = progress_module.log
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield handler.lines
    logger.removeHandler(handler)
    logger.level = level


def test_log_lines_at_multiples_of_every_and_at_the_end(lines):
    reporter = Progress("train", 25, unit="step", bar=False, every=10)
    for step in range(1, 26):
        reporter.update(step, f"step {step}")
    reporter.close()
    assert lines == ["step 10", "step 20", "step 25"]


def test_resumed_count_and_forced_lines(lines):
    reporter = Progress("x", 100, unit="frame", initial=40, bar=False, every=50)
    reporter.update(45, "45")
    reporter.update(47, "47 forced", force=True)
    reporter.update(50, "50")
    assert lines == ["47 forced", "50"]


def test_log_lines_every_so_many_seconds(lines, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    reporter = Progress("gen", 10, unit="frame", bar=False, every_s=30.0)
    for done, at in ((1, 1010.0), (2, 1030.0), (3, 1050.0), (4, 1061.0), (10, 1062.0)):
        now[0] = at
        reporter.update(done, str(done))
    assert lines == ["2", "4", "10"]  # 30 s after the start, 30 s after that line, and the end


def test_disabled_is_silent(lines, capsys):
    reporter = Progress("train", 2, unit="step", enabled=False, bar=True, every=1)
    reporter.update(1, "1", force=True)
    reporter.update(2, "2")
    reporter.close()
    assert lines == [] and capsys.readouterr().err == ""


def test_bar_instead_of_lines(lines, capsys):
    reporter = Progress("preprocess (rank 0)", 4, unit="shard", bar=True, every=1)
    for done in range(1, 5):
        reporter.update(done, str(done), loss="0.5")
    reporter.close()
    err = capsys.readouterr().err
    assert lines == []
    assert "preprocess (rank 0)" in err and "4/4" in err and "loss=0.5" in err


def test_training_progress_status_line(lines, monkeypatch):
    from asteroid_hpc.train.metrics import Progress as TrainProgress

    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    reporter = TrainProgress(total=4, initial=0, enabled=True, every=2)
    for step in range(1, 5):
        reporter.update(step, 0.123456, 12.34)
    reporter.close()
    assert lines == ["step 2/4 loss 0.12346 12.3 samples/s", "step 4/4 loss 0.12346 12.3 samples/s"]
