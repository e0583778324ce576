"""Write a small file so that readers see either the old one or the whole new one, never a part."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``path`` through ``path.tmp-<pid>``, flushed to disk, then an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 1, sort_keys: bool = True) -> Path:
    """:func:`write_text_atomic` of ``obj`` as JSON (plain data only, never pickle)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
