"""Trajectories of other MD engines through MDAnalysis's own readers (streamed, converted to Å and ps).

- GROMACS ``.xtc``/``.trr``, CHARMM/NAMD/OpenMM ``.dcd``: random access by frame offsets, so ranks can read
  their own frames of one long file;
- LAMMPS dump (``.lammpstrj``, ``.dump``), AMBER ASCII (``.mdcrd``, ``.trj``; ``.gz``/``.bz2``
  too), H5MD (``.h5md``, ``.h5``).

These files hold no elements (atomic numbers come from ``--topology``); an AMBER ASCII file does not even
hold its atom count, which then comes from the topology. Velocities and the unit cell are carried when the
file has them. Formats whose frames carry no time (LAMMPS dump: step numbers only; AMBER ASCII) report no
time axis, so the frame spacing must be given (``data.timestep_fs``); MDAnalysis's made-up 1 ps is never used.
With ``check_time``, every frame's time is checked as it is read (against the frame before it in the file,
or the last frame read before) for an even spacing: no frame is decoded for the check alone.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import user_error
from .amber_reader import _check_readable
from .frames import FrameChunk
from .units import uneven_step

# suffix (after any .gz/.bz2) -> (MDAnalysis format, the frames carry their time)
MDA_FORMATS = {".xtc": ("XTC", True), ".trr": ("TRR", True), ".dcd": ("DCD", True),
               ".lammpstrj": ("LAMMPSDUMP", False), ".dump": ("LAMMPSDUMP", False),
               ".mdcrd": ("TRJ", False), ".trj": ("TRJ", False),
               ".h5md": ("H5MD", True), ".h5": ("H5MD", True)}
COMPRESSED = (".gz", ".bz2")
NEEDS_ATOM_COUNT = ("TRJ",)


def mda_format(path: Path) -> tuple[str, bool] | None:
    """(MDAnalysis format, frames carry time) of ``path`` by suffix, or None when not one of these."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return MDA_FORMATS.get(suffixes[-1]) if suffixes else None


def _collect_quietly(exc: BaseException) -> None:
    """Free a half-built MDAnalysis reader now: its ``__del__`` fails on a file it could not open, and
    Python would print that ("Exception ignored in ...") after the error line."""
    import gc
    import sys

    hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
    try:
        exc.__traceback__ = None  # its frames hold the half-built reader: freed here
        gc.collect()
    finally:
        sys.unraisablehook = hook


class MdaReader:
    """One trajectory file through the MDAnalysis reader of its format (see the module docstring)."""

    atomic_numbers = None  # from the topology

    def __init__(self, path: str | os.PathLike, n_atoms: int | None = None, *, check_time: bool = True) -> None:
        from MDAnalysis.coordinates.core import get_reader_for

        self.path = Path(path)
        _check_readable(self.path)
        found = mda_format(self.path)
        if found is None:
            raise user_error(self.path, "not a trajectory format read through MDAnalysis")
        self.format, carries_time = found
        kwargs = {}
        if self.format in NEEDS_ATOM_COUNT:
            if n_atoms is None:
                raise user_error(self.path, "an AMBER ASCII trajectory does not hold its atom count: pass "
                                            "--topology FILE (e.g. the .prmtop)")
            kwargs["n_atoms"] = int(n_atoms)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # offsets that cannot be cached beside a read-only file, ...
                self._reader = get_reader_for(str(self.path), format=self.format)(str(self.path), **kwargs)
                self.n_frames = int(self._reader.n_frames)
                self.n_atoms = int(self._reader.n_atoms)
        except Exception as exc:  # MDAnalysis raises assorted types on malformed files
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _collect_quietly(exc)
            raise user_error(self.path, f"not a readable {self.format} trajectory ({message})") from None
        if n_atoms is not None and n_atoms != self.n_atoms:
            raise user_error(self.path, f"{self.n_atoms} atoms, but the topology has {n_atoms}")
        self.has_time = carries_time and self.n_frames > 0
        self.timestep_ps: float | None = None
        if self.has_time and self.n_frames > 1:
            self.timestep_ps = self._timestep_ps(check_time)
        self.check_time = check_time and self.timestep_ps is not None
        self._last_time: tuple[int, float] | None = None  # (frame, time) of the last frame read
        first = self._reader.ts if self.n_frames else None  # frame 0, decoded on opening
        self.has_velocities = bool(first is not None and first.has_velocities)
        self.has_cell = bool(first is not None and first.dimensions is not None)

    def _timestep_ps(self, check: bool) -> float:
        """The mean frame spacing (frames 0 and last); with ``check`` frames 0 -> 1 must be that far apart
        (the other frames are checked as they are read: :meth:`_check_times`)."""
        first, second, last = (self._time_of(i) for i in (0, 1, self.n_frames - 1))
        mean = (last - first) / (self.n_frames - 1)
        if not np.isfinite(mean) or mean <= 0:
            raise user_error(self.path, f"time does not increase ({first:g} ps at frame 0, {last:g} ps at frame "
                                        f"{self.n_frames - 1})")
        if check:
            uneven_step(np.array([first, second]), np.array([0, 1]), mean, self.path)
        return float(f"{mean:.6g}")

    def _check_times(self, start: int, time_ps: np.ndarray) -> None:
        """Frames start, start+1, ... at ``time_ps``: each (with the last frame read before them) must be
        timestep_ps apart per frame, within the tolerance."""
        frames = start + np.arange(len(time_ps))
        if self._last_time is not None:  # pairs that do not move forward are not compared
            frames = np.concatenate([[self._last_time[0]], frames])
            time_ps = np.concatenate([[self._last_time[1]], time_ps])
        uneven_step(time_ps, frames, self.timestep_ps, self.path)

    def _time_of(self, frame: int) -> float:
        return float(self._reader[frame].time)

    def read(self, start: int, stop: int) -> FrameChunk:
        """Frames ``start:stop`` (clipped to the file): coordinates (and velocities, cell) in Å, Å/ps."""
        start, stop = max(0, start), min(stop, self.n_frames)
        n = max(0, stop - start)
        coords = np.empty((n, self.n_atoms, 3), dtype=np.float32)
        time_ps = np.empty(n, dtype=np.float64)
        velocities = cell = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for k, ts in enumerate(self._reader[start:stop]):
                    coords[k] = ts.positions
                    time_ps[k] = ts.time
                    if ts.has_velocities:
                        if velocities is None:
                            velocities = np.full((n, self.n_atoms, 3), np.nan, dtype=np.float32)
                        velocities[k] = ts.velocities
                    if ts.dimensions is not None:
                        if cell is None:
                            cell = np.full((n, 6), np.nan, dtype=np.float64)
                        cell[k] = ts.dimensions
        except Exception as exc:
            raise user_error(self.path, f"cannot read frames {start}..{stop - 1} ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if self.check_time and n:
            self._check_times(start, time_ps)
            self._last_time = (stop - 1, float(time_ps[-1]))
        return FrameChunk(start, coords, time_ps if self.has_time else None, velocities, cell)

    def close(self) -> None:
        self._reader.close()
