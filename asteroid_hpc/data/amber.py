"""AMBER NetCDF trajectories: a streaming reader and a streaming, resumable appender.

Layout written (the AMBER trajectory convention 1.0, classic 64-bit-offset format so that MDAnalysis,
mdtraj, cpptraj and VMD read it): dimensions ``frame`` (unlimited), ``atom``, ``spatial`` = 3; global
attributes ``Conventions="AMBER"``, ``ConventionVersion="1.0"``, ``program``, ``programVersion``;
``spatial`` char variable "xyz"; ``coordinates(frame, atom, spatial)`` float32 in "angstrom";
``time(frame)`` float32 in "picosecond"; optional ``cell_lengths``/``cell_angles`` (with the
``cell_spatial``, ``cell_angular`` and ``label`` dimensions), ``velocities`` ("angstrom/picosecond")
and ``forces`` ("kilocalorie/mole/angstrom").

Project extension: ``atomic_number(atom)`` int32 carries the element of each atom, so a trajectory
needs no separate topology. Readers that do not know it ignore it.

Writing is atomic: frames go to ``<path>.partial``; :meth:`AmberWriter.close` renames it to ``path``.
A killed writer leaves ``<path>.partial`` behind; :meth:`AmberWriter.resume` reopens it and keeps
appending (every append is synced, so the frame count on disk is that of the last whole append).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError, user_error
from .frames import FrameChunk
from .netcdf_faults import fill_value, never_free, no_space
from .units import LENGTH_TO_ANGSTROM, TIME_TO_PS, check_even_spacing, unit_factor

PARTIAL_SUFFIX = ".partial"
NETCDF3_FORMAT = "NETCDF3_64BIT_OFFSET"
CELL_ANGLE_LABELS = ("alpha", "beta ", "gamma")


def partial_path(path: str | os.PathLike) -> Path:
    """Where :class:`AmberWriter` writes ``path`` until it is complete."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


# --------------------------------------------------------------------------------------------- writer

def _write_header(ds, program: str, program_version: str, title: str, timestep_ps: float | None,
                  attributes: dict) -> None:
    """The global attributes of a new AMBER trajectory."""
    ds.Conventions = "AMBER"
    ds.ConventionVersion = "1.0"
    ds.program = program
    ds.programVersion = program_version
    if title:
        ds.title = title
    if timestep_ps is not None:
        ds.timestep_ps = float(timestep_ps)  # project extension: the uniform frame spacing
    for key, value in attributes.items():
        ds.setncattr(key, value)


def _create_variables(ds, n_atoms: int, atomic_numbers, packed: dict, *, velocities: bool, forces: bool) -> None:
    """Dimensions frame/spatial/atom, time, coordinates (and velocities, forces, atomic numbers) with their
    units; ``packed``: the compression options of the per-frame arrays."""
    ds.createDimension("frame", None)
    ds.createDimension("spatial", 3)
    ds.createDimension("atom", n_atoms)
    ds.createVariable("spatial", "S1", ("spatial",))[:] = np.array(list("xyz"), dtype="S1")
    ds.createVariable("time", "f4", ("frame",)).units = "picosecond"
    ds.createVariable("coordinates", "f4", ("frame", "atom", "spatial"), **packed).units = "angstrom"
    if atomic_numbers is not None:
        z = ds.createVariable("atomic_number", "i4", ("atom",))
        z.long_name = "atomic number (asteroid-hpc extension of the AMBER convention)"
        z[:] = np.asarray(atomic_numbers, dtype=np.int32)
    if velocities:
        ds.createVariable("velocities", "f4", ("frame", "atom", "spatial"), **packed).units = \
            "angstrom/picosecond"
    if forces:
        ds.createVariable("forces", "f4", ("frame", "atom", "spatial"), **packed).units = \
            "kilocalorie/mole/angstrom"


def _create_cell_variables(ds) -> None:
    """The periodic cell per frame: lengths (Å) and angles (degrees), with the AMBER label variables."""
    ds.createDimension("cell_spatial", 3)
    ds.createDimension("cell_angular", 3)
    ds.createDimension("label", 5)
    ds.createVariable("cell_spatial", "S1", ("cell_spatial",))[:] = np.array(list("abc"), dtype="S1")
    ds.createVariable("cell_angular", "S1", ("cell_angular", "label"))[:] = \
        np.array([list(s) for s in CELL_ANGLE_LABELS], dtype="S1")
    ds.createVariable("cell_lengths", "f8", ("frame", "cell_spatial")).units = "angstrom"
    ds.createVariable("cell_angles", "f8", ("frame", "cell_angular")).units = "degree"


class AmberWriter:
    """Append frames to an AMBER NetCDF trajectory; the file appears under ``path`` only on :meth:`close`.

    >>> with AmberWriter("out.nc", n_atoms=3, atomic_numbers=[8, 1, 1], timestep_ps=0.0005) as w:
    ...     w.append(coords)              # [F, N, 3] in angstrom; time continues from the last frame

    ``compression="zlib"`` writes NETCDF4 (HDF5) with zlib level 1 + shuffle instead of the classic
    format; MDAnalysis cannot read that variant (mdtraj and netCDF4 can).
    On an exception inside ``with`` the partial file is closed and kept, so it can be resumed.
    """

    def __init__(self, path: str | os.PathLike, n_atoms: int, atomic_numbers=None, *, cell: bool = False,
                 velocities: bool = False, forces: bool = False, timestep_ps: float | None = None,
                 program: str = "asteroid-hpc", program_version: str | None = None, title: str = "",
                 attributes: dict | None = None, compression: str = "none", chunk_frames: int = 64,
                 _resume: bool = False) -> None:
        import netCDF4

        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.n_atoms = int(n_atoms)
        if _resume:
            try:
                self._ds = netCDF4.Dataset(self.partial, "a")
            except OSError as exc:
                raise user_error(self.partial, f"cannot resume: not a readable NetCDF file ({exc})") from None
            self._ds.set_auto_mask(False)
            self._ds.set_fill_off()
            self._check_resumable()
            return
        if atomic_numbers is not None and len(atomic_numbers) != self.n_atoms:
            raise ValueError(f"atomic_numbers has {len(atomic_numbers)} entries for {self.n_atoms} atoms")
        if compression not in ("none", "zlib"):
            raise ValueError(f"compression must be 'none' or 'zlib' (got {compression!r})")
        if program_version is None:
            from .. import __version__ as program_version
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        fmt = NETCDF3_FORMAT if compression == "none" else "NETCDF4"
        ds = self._ds = netCDF4.Dataset(self.partial, "w", format=fmt)
        ds.set_auto_mask(False)
        # No pre-filling of new records with fill values (every record is written whole by append, and
        # the record count on disk only grows at the sync that ends an append): writes each byte once.
        ds.set_fill_off()
        _write_header(ds, program, program_version, title, timestep_ps, attributes or {})
        packed = {}
        if compression == "zlib":
            packed = dict(zlib=True, complevel=1, shuffle=True,
                          chunksizes=(max(1, min(chunk_frames, 1 << 20)), self.n_atoms, 3))
        _create_variables(ds, self.n_atoms, atomic_numbers, packed, velocities=velocities, forces=forces)
        if cell:
            _create_cell_variables(ds)
        ds.sync()

    @classmethod
    def resume(cls, path: str | os.PathLike) -> "AmberWriter":
        """Reopen ``<path>.partial`` left by an interrupted writer and continue appending after its last
        synced frame (see :attr:`n_frames`). Raises UserError when there is nothing resumable."""
        path = Path(path)
        if not partial_path(path).exists():
            raise user_error(partial_path(path), "cannot resume: no partial file")
        check_netcdf3_complete(partial_path(path))
        import netCDF4

        with netCDF4.Dataset(partial_path(path)) as ds:
            n_atoms = ds.dimensions["atom"].size if "atom" in ds.dimensions else 0
        return cls(path, n_atoms, _resume=True)

    def _check_resumable(self) -> None:
        ds = self._ds
        if getattr(ds, "Conventions", None) != "AMBER" or "coordinates" not in ds.variables \
                or "time" not in ds.variables:
            ds.close()
            raise user_error(self.partial, "cannot resume: not an AMBER trajectory written by AmberWriter")

    # -- properties of the open file
    @property
    def n_frames(self) -> int:
        """Frames in the file. Each append ends with a sync, so after a kill the classic-format header
        counts the frames of the last whole append."""
        return self._ds.dimensions["frame"].size

    @property
    def timestep_ps(self) -> float | None:
        value = getattr(self._ds, "timestep_ps", None)
        return None if value is None else float(value)

    @property
    def atomic_numbers(self) -> np.ndarray | None:
        return np.asarray(self._ds["atomic_number"][:], dtype=np.int64) if "atomic_number" in self._ds.variables \
            else None

    def append(self, coords, time_ps=None, *, velocities=None, forces=None, cell_lengths=None,
               cell_angles=None) -> None:
        """Append frames ``coords`` [F, N, 3] (angstrom). ``time_ps`` [F] defaults to continuing the
        uniform time axis given by ``timestep_ps``; cell/velocity/force arrays match the file's layout."""
        ds = self._ds
        coords = np.asarray(coords)
        if coords.ndim == 2:
            coords = coords[None]
        if coords.ndim != 3 or coords.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"coords must be [frames, {self.n_atoms}, 3], got {coords.shape}")
        n_new = coords.shape[0]
        start = self.n_frames
        stop = start + n_new
        if time_ps is None:
            if self.timestep_ps is None:
                raise ValueError("pass time_ps or create the writer with timestep_ps")
            time_ps = (start + np.arange(n_new)) * self.timestep_ps
        time_ps = np.broadcast_to(np.asarray(time_ps, dtype=np.float64), (n_new,))
        per_frame = {"coordinates": coords, "velocities": velocities, "forces": forces,
                     "cell_lengths": cell_lengths, "cell_angles": cell_angles}
        for name, value in per_frame.items():
            present = name in ds.variables
            if present and value is None:
                raise ValueError(f"this trajectory has {name}: pass {name}= to append()")
            if not present and value is not None:
                raise ValueError(f"this trajectory was created without {name}")
        try:
            for name, value in per_frame.items():
                if value is not None:
                    shape = (n_new, 3) if name.startswith("cell") else (n_new, self.n_atoms, 3)
                    ds[name][start:stop] = np.broadcast_to(np.asarray(value), shape)
            ds["time"][start:stop] = time_ps
            ds.sync()
        except RuntimeError as exc:
            raise no_space(exc, self.partial) from None

    def close(self) -> Path:
        """Close the file and rename it to its final name. Returns the final path."""
        try:
            if self._ds.isopen():
                self._ds.close()
        except RuntimeError as exc:
            raise no_space(exc, self.partial) from None
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        """Close and delete the partial file."""
        try:
            if self._ds.isopen():
                self._ds.close()
        except RuntimeError:  # e.g. a full disk: the file goes anyway
            never_free(self._ds)
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "AmberWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._ds.isopen():
            self._ds.close()  # keep the partial file: it can be resumed


# --------------------------------------------------------------------------------------------- reader

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
    ``time`` (a time axis of all zeros counts as absent), cell (read with the frames), velocities (read
    with the frames when asked) and forces (:meth:`read_variable`). Coordinates in nanometres and times in
    ns or fs (their ``units`` attributes) are converted to Å and ps; unknown units are refused. Errors in
    the file are UserErrors naming it.
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
        velocities = cell = None
        if self.read_velocities and "velocities" in self._ds.variables:  # netCDF4 applies scale_factor
            velocities = np.asarray(self._ds["velocities"][start:stop]) * self._length_factor
        if "cell_lengths" in self._ds.variables and "cell_angles" in self._ds.variables:
            cell = np.concatenate([np.asarray(self._ds["cell_lengths"][start:stop], dtype=np.float64)
                                   * self._length_factor,
                                   np.asarray(self._ds["cell_angles"][start:stop], dtype=np.float64)], axis=1)
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
