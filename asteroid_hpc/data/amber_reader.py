"""Reading AMBER NetCDF trajectories: a streaming reader (coordinates, time, velocities, cells) and the checks
of a file before it is opened (readable, not truncated). The layout is described in :mod:`.amber`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError, user_error
from .frames import FrameChunk
from .netcdf_faults import fill_value
from .units import (ANGLE_TO_DEGREE, LENGTH_TO_ANGSTROM, TIME_TO_PS, VELOCITY_TO_ANGSTROM_PS,
                    check_even_spacing, unit_factor)

def check_netcdf3_complete(path: Path) -> None:
    """Detect a truncated classic-format file (netCDF-C reads missing records as zeros): scipy's header
    parser, memory-mapped so that no data is read, refuses a file shorter than its header promises."""
    import warnings

    from scipy.io import netcdf_file

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic not in (b"CDF\x01", b"CDF\x02"):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = netcdf_file(path, "r", mmap=True)
            f.variables.clear()
            f.close()
    except Exception:
        raise user_error(path, "truncated or corrupt NetCDF file (shorter than its header says)") from None


class AmberReader:
    """Streaming reader of an AMBER-convention NetCDF trajectory (NETCDF3 classic/64-bit offset or NETCDF4).

    Accepts float32 or float64 coordinates, a fixed or unlimited frame dimension, files with or without
    ``time`` (a time axis of all zeros counts as absent), cell (read with the frames: [F, 6], NaN rows for
    cells never written), velocities (read with the frames when asked: ``read_velocities``; their
    ``scale_factor`` applied) and forces (:meth:`read_variable`). Coordinates, cell lengths and velocities
    in nanometres and times in ns or fs (their ``units`` attributes) are converted to Å, Å/ps and ps;
    unknown units are refused. Errors in the file are UserErrors naming it.
    """

    def __init__(self, path: str | os.PathLike, *, check_time: bool = False, read_velocities: bool = False) -> None:
        import netCDF4

        self.path = Path(path)
        self.check_time = check_time  # refuse an uneven time axis (off: data.timestep_fs overrides it)
        self.read_velocities = read_velocities  # off by default: it would double the bytes read
        _check_readable(self.path)
        check_netcdf3_complete(self.path)
        try:
            ds = netCDF4.Dataset(self.path, "r")
        except OSError as exc:
            cause = "not a NetCDF file" if "Unknown file format" in str(exc) else f"cannot open as NetCDF ({exc})"
            raise user_error(self.path, cause) from None
        ds.set_auto_mask(False)
        self._ds = ds
        try:
            self._inspect()
        except UserError:
            ds.close()
            raise

    def _inspect(self) -> None:
        ds = self._ds
        if "coordinates" not in ds.variables:
            raise user_error(self.path, "no 'coordinates' variable (not an AMBER trajectory)")
        coords = ds["coordinates"]
        if coords.dimensions != ("frame", "atom", "spatial"):
            raise user_error(self.path, f"'coordinates' has dimensions {coords.dimensions}, "
                                        "expected ('frame', 'atom', 'spatial')")
        if coords.shape[2] != 3:
            raise user_error(self.path, f"'coordinates' has spatial size {coords.shape[2]}, expected 3")
        if coords.dtype not in (np.float32, np.float64):
            raise user_error(self.path, f"'coordinates' has type {coords.dtype}, expected float32 or float64")
        self.n_frames, self.n_atoms = int(coords.shape[0]), int(coords.shape[1])
        self._length_factor = unit_factor(coords, LENGTH_TO_ANGSTROM, "angstrom", self.path)
        self._time_factor = unit_factor(ds["time"], TIME_TO_PS, "picosecond", self.path) \
            if "time" in ds.variables else 1.0
        self.atomic_numbers: np.ndarray | None = None
        if "atomic_number" in ds.variables:
            z = ds["atomic_number"]
            if z.dimensions != ("atom",):
                raise user_error(self.path, f"'atomic_number' has dimensions {z.dimensions}, expected ('atom',)")
            self.atomic_numbers = np.asarray(z[:], dtype=np.int64)
        self._inspect_velocities_and_cell()
        self.has_time = False
        self.timestep_ps: float | None = None
        if "time" in ds.variables and ds["time"].dimensions == ("frame",) and self.n_frames > 0:
            t = ds["time"]
            first, last = float(t[0]) * self._time_factor, float(t[self.n_frames - 1]) * self._time_factor
            if self.n_frames == 1 or first != 0.0 or last != 0.0:
                self.has_time = True
                if self.n_frames > 1:
                    if self.check_time:
                        check_even_spacing(np.asarray(t[:], dtype=np.float64) * self._time_factor, self.path)
                    # mean spacing, rounded to the ~6 digits that float32 time values carry
                    self.timestep_ps = float(f"{(last - first) / (self.n_frames - 1):.6g}")
        if "timestep_ps" in ds.ncattrs():  # exact value written by AmberWriter
            self.timestep_ps = float(ds.timestep_ps)

    def _inspect_velocities_and_cell(self) -> None:
        ds, per_atom, per_frame = self._ds, ("frame", "atom", "spatial"), {"cell_lengths": ("frame", "cell_spatial"),
                                                                          "cell_angles": ("frame", "cell_angular")}
        self.has_velocities = "velocities" in ds.variables
        if self.has_velocities:
            if ds["velocities"].dimensions != per_atom:
                raise user_error(self.path, f"'velocities' has dimensions {ds['velocities'].dimensions}, expected "
                                            f"{per_atom}")
            self._velocity_factor = unit_factor(ds["velocities"], VELOCITY_TO_ANGSTROM_PS, "angstrom/picosecond",
                                                self.path)
        self.has_cell = "cell_lengths" in ds.variables and "cell_angles" in ds.variables
        if self.has_cell:
            for name, dims in per_frame.items():
                if ds[name].dimensions != dims or ds[name].shape[1] != 3:
                    raise user_error(self.path, f"'{name}' has dimensions {ds[name].dimensions} {ds[name].shape}, "
                                                f"expected {dims} of 3")
            self._cell_length_factor = unit_factor(ds["cell_lengths"], LENGTH_TO_ANGSTROM, "angstrom", self.path)
            unit_factor(ds["cell_angles"], ANGLE_TO_DEGREE, "degree", self.path)

    def _read_cell(self, start: int, stop: int) -> np.ndarray:
        """Cells [F, 6] of frames start:stop; a cell never written (fill values) is a NaN row."""
        cell = np.concatenate([np.asarray(self._ds["cell_lengths"][start:stop], dtype=np.float64)
                               * self._cell_length_factor,
                               np.asarray(self._ds["cell_angles"][start:stop], dtype=np.float64)], axis=1)
        cell[(np.abs(cell) > 1e30).any(axis=1)] = np.nan  # NetCDF's fill values (9.97e36)
        return cell

    # -- reading
    def read(self, start: int, stop: int) -> FrameChunk:
        """Frames ``start:stop`` (clipped to the file)."""
        start, stop = max(0, start), min(stop, self.n_frames)
        try:
            raw = self._ds["coordinates"][start:stop]
        except (RuntimeError, OSError) as exc:  # e.g. a corrupt compressed chunk: "NetCDF: HDF error"
            raise user_error(self.path, f"cannot read frames {start}..{stop - 1}: corrupt data ({exc})") from None
        coords = np.asarray(raw)
        first_atom = coords[:, :1, 0].ravel()
        unwritten = np.ma.getmaskarray(raw)[:, :1, 0].ravel() | (first_atom == fill_value(coords.dtype))
        if unwritten.any():
            raise user_error(self.path, f"coordinates of frame {start + int(np.argmax(unwritten))} were never written "
                                        "(NetCDF fill values)")
        if self._length_factor != 1.0:
            coords = coords * coords.dtype.type(self._length_factor)
        time_ps = np.asarray(self._ds["time"][start:stop], dtype=np.float64) * self._time_factor \
            if self.has_time else None
        velocities = None
        if self.read_velocities and self.has_velocities:  # netCDF4 applies scale_factor
            velocities = np.asarray(self._ds["velocities"][start:stop], dtype=np.float32)
            if self._velocity_factor != 1.0:
                velocities = velocities * np.float32(self._velocity_factor)
        cell = self._read_cell(start, stop) if self.has_cell else None
        return FrameChunk(start, coords, time_ps, velocities, cell)

    def read_variable(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Any per-frame variable (``velocities``, ``forces``, ``cell_lengths`` ...) for frames ``start:stop``."""
        if name not in self._ds.variables:
            raise user_error(self.path, f"no '{name}' variable")
        return np.asarray(self._ds[name][start:stop])

    def close(self) -> None:
        if self._ds.isopen():
            self._ds.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise user_error(path, "no such file")
    if path.is_dir():
        raise user_error(path, "is a directory, expected a trajectory file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise user_error(path, f"cannot read ({exc.strerror or exc})") from None


def read_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> FrameChunk:
    """Read frames ``start:stop`` of an AMBER NetCDF file at once."""
    with AmberReader(path) as reader:
        return reader.read(start, reader.n_frames if stop is None else stop)
