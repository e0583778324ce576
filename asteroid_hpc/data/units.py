"""Units of trajectory files: factors to Å and ps from ``units`` attributes, and the even-time-axis check."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import user_error

# unit attribute values (lower case) → factor to angstrom / picosecond; other units are refused
LENGTH_TO_ANGSTROM = {"angstrom": 1.0, "angstroms": 1.0, "a": 1.0, "\u00e5": 1.0, "nanometer": 10.0,
                      "nanometers": 10.0, "nm": 10.0, "picometer": 0.01, "pm": 0.01}
TIME_TO_PS = {"picosecond": 1.0, "picoseconds": 1.0, "ps": 1.0, "nanosecond": 1000.0, "nanoseconds": 1000.0,
              "ns": 1000.0, "femtosecond": 1e-3, "femtoseconds": 1e-3, "fs": 1e-3}
VELOCITY_TO_ANGSTROM_PS = {"angstrom/picosecond": 1.0, "angstroms/picosecond": 1.0, "a/ps": 1.0,
                           "\u00e5/ps": 1.0, "nanometer/picosecond": 10.0, "nanometers/picosecond": 10.0, "nm/ps": 10.0}
ANGLE_TO_DEGREE = {"degree": 1.0, "degrees": 1.0, "deg": 1.0}
# relative deviation of one frame spacing from the mean spacing beyond which a time axis is uneven
UNEVEN_TIME_TOLERANCE = 1e-3


def unit_factor(variable, table: dict[str, float], default: str, path: Path) -> float:
    """The factor from ``variable``'s ``units`` attribute to the unit of ``table`` (``default`` when absent,
    as the AMBER convention prescribes); unknown units are a UserError naming the file."""
    units = str(getattr(variable, "units", default)).strip().lower()
    if units not in table:
        raise user_error(path, f"'{variable.name}' has units {units!r}; expected one of "
                               f"{', '.join(sorted(k for k in table if k.isascii()))}")
    return table[units]


def check_even_spacing(time_ps: np.ndarray, path) -> None:
    """A time axis whose frame spacings differ from their mean by more than the tolerance is a UserError."""
    if len(time_ps) < 3:
        return
    steps = np.diff(np.asarray(time_ps, dtype=np.float64))
    backwards = np.flatnonzero(steps <= 0)
    if len(backwards):
        raise user_error(path, f"time is not increasing (non-monotonic time) at frame {int(backwards[0]) + 1}")
    mean = (time_ps[-1] - time_ps[0]) / (len(time_ps) - 1)
    # float32 time stamps carry ~7 digits: allow that rounding beside the relative tolerance
    slack = UNEVEN_TIME_TOLERANCE * abs(mean) + 4 * np.finfo(np.float32).eps * float(np.max(np.abs(time_ps)))
    worst = int(np.argmax(np.abs(steps - mean)))
    if not np.isfinite(steps).all() or abs(steps[worst] - mean) > slack:
        raise user_error(path, f"uneven time axis: frames {worst} -> {worst + 1} are {steps[worst]:g} ps apart, "
                               f"the mean spacing is {mean:g} ps (give the frame spacing to override it: "
                               "data.timestep_fs, evaluate --timestep-fs)")


def uneven_step(time_ps: np.ndarray, frames: np.ndarray, timestep_ps: float, path) -> None:
    """Times ``time_ps`` of the file's ``frames`` (in reading order): every pair of neighbours whose frame
    moves forward by k must be k x ``timestep_ps`` apart within the tolerance (plus float32 rounding of the
    stamps), else a UserError naming the first uneven frame. Pairs that do not move forward are skipped."""
    time_ps, frames = np.asarray(time_ps, dtype=np.float64), np.asarray(frames)
    k = np.diff(frames)
    steps = np.diff(time_ps)
    forward = k > 0
    if not forward.any():
        return
    slack = UNEVEN_TIME_TOLERANCE * abs(timestep_ps) * k + 4 * np.finfo(np.float32).eps * np.abs(time_ps[1:])
    bad = forward & (~np.isfinite(steps) | (np.abs(steps - k * timestep_ps) > slack))
    if bad.any():
        i = int(np.argmax(bad))
        if not steps[i] > 0:
            raise user_error(path, f"time is not increasing (non-monotonic time) at frame {int(frames[i + 1])}")
        raise user_error(path, f"uneven time axis: frames {int(frames[i])} -> {int(frames[i + 1])} are "
                               f"{steps[i]:g} ps apart, the mean spacing is {timestep_ps:g} ps per frame (give the "
                               "frame spacing to override it: data.timestep_fs, evaluate --timestep-fs)")
