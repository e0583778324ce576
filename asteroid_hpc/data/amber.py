"""AMBER NetCDF trajectories: a streaming reader and a streaming, resumable appender.

Layout written (the AMBER trajectory convention 1.0, classic 64-bit-offset format so that MDAnalysis,
mdtraj, cpptraj and VMD read it): dimensions ``frame`` (unlimited), ``atom``, ``spatial`` = 3; global
attributes ``Conventions="AMBER"``, ``ConventionVersion="1.0"``, ``program``, ``programVersion``;
``spatial`` char variable "xyz"; ``coordinates(frame, atom, spatial)`` float32 in "angstrom";
``time(frame)`` float32 in "picosecond"; optional ``cell_lengths`` ("angstrom") / ``cell_angles`` ("degree")
float64 (with the ``cell_spatial`` "abc" and ``cell_angular`` "alpha"/"beta"/"gamma" label variables),
``velocities`` float32 ("angstrom/picosecond", stored in AMBER's time unit with ``scale_factor`` 20.455 as
pmemd and MDAnalysis write them; netCDF4 and MDAnalysis apply it on reading) and ``forces``
("kilocalorie/mole/angstrom"). The reader lives in :mod:`.amber_reader` (re-exported here).

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

from ..errors import user_error
from .amber_reader import AmberReader, _check_readable, check_netcdf3_complete, read_frames
from .netcdf_faults import never_free, no_space

__all__ = ["AmberWriter", "AmberReader", "read_frames", "partial_path", "check_netcdf3_complete", "_check_readable",
           "NETCDF3_FORMAT", "PARTIAL_SUFFIX", "VELOCITY_SCALE_FACTOR"]

PARTIAL_SUFFIX = ".partial"
NETCDF3_FORMAT = "NETCDF3_64BIT_OFFSET"
CELL_ANGLE_LABELS = ("alpha", "beta ", "gamma")
VELOCITY_SCALE_FACTOR = 20.455  # AMBER's time unit (1/20.455 ps): stored velocities x this = angstrom/ps


def partial_path(path: str | os.PathLike) -> Path:
    """Where :class:`AmberWriter` writes ``path`` until it is complete."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


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
        v = ds.createVariable("velocities", "f4", ("frame", "atom", "spatial"), **packed)
        v.units = "angstrom/picosecond"
        v.scale_factor = VELOCITY_SCALE_FACTOR  # netCDF4 divides by it on writing (auto-scaling)
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
