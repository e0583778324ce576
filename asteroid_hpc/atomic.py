"""Write files so that readers see either the old one or the whole new one, never a part."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_output(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield ``path.tmp-<pid><suffix>`` to write; rename it to ``path`` when the block completes, delete
    it when the block raises. ``suffix`` keeps an extension some writers insist on (``np.savez``)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``path`` through :func:`atomic_output`, flushed to disk before the rename."""
    with atomic_output(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 1, sort_keys: bool = True) -> Path:
    """:func:`write_text_atomic` of ``obj`` as JSON (plain data only, never pickle)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def write_figure_atomic(fig, path: str | os.PathLike, *, dpi: int) -> Path:
    """Save a matplotlib figure as PNG through :func:`atomic_output`, then close it (also on failure)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
