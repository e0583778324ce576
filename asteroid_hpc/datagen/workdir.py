"""The work folder of a resumable generation: one process at a time, and only under the settings it began with."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from ..atomic import write_text_atomic
from ..errors import user_error


@contextlib.contextmanager
def exclusive(folder: Path):
    """One process per output: a second one fails instead of writing the same files (flock, freed on exit)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise user_error(folder, "another process is generating this trajectory") from None
        yield


def check_spec(folder: Path, wanted: dict) -> None:
    """Record ``wanted`` (the settings) in ``folder/spec.json``, or fail when the folder holds other ones."""
    meta = folder / "spec.json"
    if meta.exists():
        found = json.loads(meta.read_text())
        if found != wanted:
            diff = sorted(k for k in wanted.keys() | found.keys() if found.get(k) != wanted.get(k))
            raise user_error(folder, f"unfinished run made with other settings ({', '.join(diff)}); "
                                     "delete it or rerun with the same settings")
        return
    write_text_atomic(meta, json.dumps(wanted, indent=1))
