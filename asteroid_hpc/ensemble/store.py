"""The output directory of an ensemble run and what makes a re-run continue it.

Layout::

    OUTDIR/run.json                     what the run is (model hash, initial condition, ensemble settings)
    OUTDIR/members/member_00003.nc      one AMBER NetCDF per member (lead times 1 … H), streamed to
                                        member_00003.nc.partial and renamed when complete
    OUTDIR/members/member_00003.done    completion marker (JSON), written after the rename
    OUTDIR/summary.json, summary.nc, mean.nc, COMPLETE

A member counts as finished only when its marker exists. A re-run with the same run.json skips finished
members and continues a partial one from its last flushed frame; a different run.json is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import user_error

RUN_FILE = "run.json"
COMPLETE_FILE = "COMPLETE"
# ensemble settings that change a member's trajectory (domains and chunk_frames do not)
TRAJECTORY_KEYS = ("members", "horizon_frames", "perturbation", "noise_angstrom", "frame_spacing", "start_frame", "seed")


def member_path(outdir: Path, member: int) -> Path:
    return outdir / "members" / f"member_{member:05d}.nc"


def marker_path(outdir: Path, member: int) -> Path:
    return outdir / "members" / f"member_{member:05d}.done"


def is_finished(outdir: Path, member: int) -> bool:
    return marker_path(outdir, member).is_file() and member_path(outdir, member).is_file()


def claim_run(outdir: Path, identity: dict[str, Any]) -> bool:
    """Write run.json, or check that the one there describes the same run. True when continuing."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "members").mkdir(exist_ok=True)
    path = outdir / RUN_FILE
    if not path.exists():
        write_json_atomic(path, identity, indent=2)
        return False
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise user_error(path, f"unreadable ({exc}); remove it or choose another output directory") from None
    differing = sorted(k for k in set(identity) | set(previous) if identity.get(k) != previous.get(k))
    if differing:
        shown = ", ".join(f"{k}: {previous.get(k)!r} -> {identity.get(k)!r}" for k in differing[:4])
        raise user_error(path, f"the directory holds a different ensemble run ({shown}); choose another "
                               "output directory")
    return True
