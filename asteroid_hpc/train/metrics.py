"""Training metrics: JSONL (always), TensorBoard (when installed), and progress on rank 0.

``run_dir/metrics.jsonl`` holds one JSON object per line with a ``kind`` of ``"train"`` or ``"val"``
and the ``step``. On resume the lines after the checkpoint's step are dropped, so the file reads as if
the run had never stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..atomic import write_text_atomic
from ..progress import Progress as Reporter

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike, kind: Optional[str] = None) -> list[dict]:
    """Records of a metrics file (optionally only one ``kind``), in file order."""
    records = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                record = json.loads(line)
                if kind is None or record.get("kind") == kind:
                    records.append(record)
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records with ``step > last_step`` (rewritten atomically)."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors scalars to TensorBoard; a no-op when not enabled."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, resume_step: Optional[int] = None,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        else:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, (int, float)):
                            self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}/{sub}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """Training progress through the shared reporter (a bar on a terminal, else a status line every
    ``every`` steps), on the ranks where ``enabled`` (rank 0)."""

    def __init__(self, total: int, initial: int, enabled: bool, every: int):
        self.total = total
        self._reporter = Reporter("train", total, unit="step", initial=initial, enabled=enabled, every=every)

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        self._reporter.update(step, f"step {step}/{self.total} loss {loss:.5g} {samples_per_s:.1f} samples/s",
                              loss=f"{loss:.4g}", samples_s=f"{samples_per_s:.1f}")

    def close(self) -> None:
        self._reporter.close()
