"""Trajectory readers behind one interface, chosen by file extension.

- ``.nc .ncdf .netcdf``: AMBER NetCDF (:class:`~asteroid_hpc.data.amber.AmberReader`)
- ``.npz``: MD17-style arrays ``R`` [F, N, 3] angstrom, ``z`` [N], optional ``E``, ``F`` (ignored here);
  ``R`` is streamed from inside the archive, never loaded whole
- ``.xyz .extxyz``: (extended) XYZ through ASE, streamed with ``ase.io.iread``
- GROMACS ``.xtc .trr``, CHARMM/NAMD/OpenMM ``.dcd``, LAMMPS dump, H5MD, AMBER ASCII ``.mdcrd``: through
  MDAnalysis (:class:`~asteroid_hpc.data.mda_reader.MdaReader`); their elements come from a topology

Every reader has ``n_frames``, ``n_atoms``, ``atomic_numbers`` (or None), ``timestep_ps`` (or None),
``has_time``, ``read(start, stop) -> FrameChunk`` and ``close()``; :class:`TrajectoryReader` adds
``iter_chunks(chunk_frames, start, stop, stride)`` and ``has_velocities``. Coordinates are in Å, velocities
in Å/ps and times in ps whatever the file's units; chunks carry the unit cell ([F, 6]) where the file has one
(see :mod:`.cells`).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError, user_error
from .amber_reader import AmberReader, _check_readable
from .cells import cell_missing
from .frames import FrameChunk, iter_strided_chunks
from .mda_reader import MDA_FORMATS, NEEDS_ATOM_COUNT, MdaReader, mda_format
from .wrapped import JumpCheck

NETCDF_SUFFIXES = (".nc", ".ncdf", ".netcdf")
NPZ_SUFFIXES = (".npz",)
XYZ_SUFFIXES = (".xyz", ".extxyz")
SUFFIXES = NETCDF_SUFFIXES + NPZ_SUFFIXES + XYZ_SUFFIXES + tuple(MDA_FORMATS)


class NpzReader:
    """MD17-style ``.npz``: the ``R.npy`` member is read in slices straight from the zip archive."""

    has_time = False
    timestep_ps = None

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        _check_readable(self.path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError):
            raise user_error(self.path, "not an .npz archive") from None
        try:
            self._inspect()
        except UserError:
            self._zip.close()
            raise

    def _inspect(self) -> None:
        names = set(self._zip.namelist())
        for key in ("R", "z"):
            if f"{key}.npy" not in names:
                raise user_error(self.path, f"no '{key}' array (an MD17 .npz needs R [frames, atoms, 3] and z)")
        try:
            with self._zip.open("z.npy") as fh:
                self.atomic_numbers = np.asarray(np.lib.format.read_array(fh, allow_pickle=False), dtype=np.int64)
            self._fh = self._zip.open("R.npy")
            version = np.lib.format.read_magic(self._fh)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = header(self._fh)
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise user_error(self.path, f"corrupt .npz archive ({exc})") from None
        if fortran or len(shape) != 3 or shape[2] != 3 or dtype not in (np.float32, np.float64):
            raise user_error(self.path, f"'R' must be a C-ordered float array [frames, atoms, 3], got "
                                        f"{dtype} {shape}")
        self.n_frames, self.n_atoms = int(shape[0]), int(shape[1])
        if self.atomic_numbers.shape != (self.n_atoms,):
            raise user_error(self.path, f"'z' has shape {self.atomic_numbers.shape}, expected ({self.n_atoms},)")
        self._dtype = dtype
        self._frame_bytes = self.n_atoms * 3 * dtype.itemsize
        self._data_offset = self._fh.tell()
        self._position = 0  # next frame the open member handle will return

    def read(self, start: int, stop: int) -> FrameChunk:
        start, stop = max(0, start), min(stop, self.n_frames)
        if start != self._position:
            self._fh.seek(self._data_offset + start * self._frame_bytes)
        raw = self._fh.read((stop - start) * self._frame_bytes)
        if len(raw) != (stop - start) * self._frame_bytes:
            raise user_error(self.path, "truncated 'R' array")
        self._position = stop
        return FrameChunk(start, np.frombuffer(raw, dtype=self._dtype).reshape(stop - start, self.n_atoms, 3),
                          None)

    def close(self) -> None:
        if hasattr(self, "_fh"):
            self._fh.close()
        self._zip.close()


class XyzReader:
    """(Extended) XYZ through ASE. Opening scans the file once (frame count, elements)."""

    has_time = False
    timestep_ps = None

    def __init__(self, path: str | os.PathLike) -> None:
        from ase.io import iread

        self.path = Path(path)
        _check_readable(self.path)
        self.n_frames = 0
        self.atomic_numbers = None
        try:
            for atoms in iread(str(self.path), index=":", format="extxyz"):
                numbers = np.asarray(atoms.numbers, dtype=np.int64)
                if self.atomic_numbers is None:
                    self.atomic_numbers = numbers
                elif not np.array_equal(numbers, self.atomic_numbers):
                    raise user_error(self.path, f"frame {self.n_frames} has different atoms from frame 0")
                self.n_frames += 1
        except UserError:
            raise
        except Exception as exc:  # ASE raises assorted exception types on malformed text
            raise user_error(self.path, f"not a readable XYZ file ({type(exc).__name__}: {exc})") from None
        self.n_atoms = 0 if self.atomic_numbers is None else len(self.atomic_numbers)

    def iter_chunks(self, chunk_frames: int, start: int = 0, stop: int | None = None,
                    stride: int = 1) -> Iterator[FrameChunk]:
        from ase.io import iread

        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        batch: list[np.ndarray] = []
        first = start
        for k, atoms in enumerate(iread(str(self.path), index=slice(start, stop, stride), format="extxyz")):
            if not batch:
                first = start + k * stride
            batch.append(atoms.positions)
            if len(batch) == chunk_frames:
                yield FrameChunk(first, np.stack(batch), None)
                batch = []
        if batch:
            yield FrameChunk(first, np.stack(batch), None)

    def read(self, start: int, stop: int) -> FrameChunk:
        chunks = list(self.iter_chunks(max(1, stop - start), start, stop))
        if not chunks:
            return FrameChunk(start, np.empty((0, self.n_atoms, 3)), None)
        return chunks[0]

    def close(self) -> None:
        pass


class ReaderView:
    """A reader of another reader's frames, changed on the way (a selection of atoms, unwrapped coordinates):
    the path, frame and atom counts are the underlying reader's unless the view sets others; closing the view
    closes it."""

    def __init__(self, reader) -> None:
        self.reader = reader
        self.path, self.n_frames, self.n_atoms = reader.path, reader.n_frames, reader.n_atoms

    def close(self) -> None:
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TrajectoryReader:
    """Open any supported trajectory by extension and stream it in chunks of frames.

    ``n_atoms``: the topology's atom count (AMBER ASCII files need it; others are checked against it);
    ``check_time``: refuse an uneven time axis (off when the frame spacing is given explicitly);
    ``velocities``: read them (AMBER NetCDF: off by default, it doubles the bytes read; the other formats
    decode them with the frames anyway).

    Frames without a unit cell are checked as they are read for atoms jumping across a box, within a chunk and
    from one chunk to the next that follows it (:class:`.wrapped.JumpCheck`): a periodic trajectory wrapped
    into its box, written without its cell, is refused rather than read as an open system.
    """

    def __init__(self, path: str | os.PathLike, *, n_atoms: int | None = None, check_time: bool = True,
                 velocities: bool = False) -> None:
        self.path = Path(path)
        try:
            str(self.path).encode("utf-8")
        except UnicodeEncodeError:
            raise user_error(self.path, "the file name is not UTF-8 (rename the file)") from None
        suffix = self.path.suffix.lower()
        if suffix in NETCDF_SUFFIXES:
            self._backend = AmberReader(self.path, check_time=check_time, read_velocities=velocities)
            self.format = "amber-netcdf"
        elif mda_format(self.path) is not None:
            self._backend = MdaReader(self.path, n_atoms, check_time=check_time)
            self.format = self._backend.format.lower()
        elif suffix in NPZ_SUFFIXES:
            self._backend = NpzReader(self.path)
            self.format = "npz"
        elif suffix in XYZ_SUFFIXES:
            self._backend = XyzReader(self.path)
            self.format = "extxyz"
        else:
            raise user_error(self.path, f"unknown trajectory format '{suffix}' (expected one of "
                                        f"{' '.join(SUFFIXES)})")
        self._jumps = JumpCheck(self.path)

    n_frames = property(lambda self: self._backend.n_frames)
    n_atoms = property(lambda self: self._backend.n_atoms)
    atomic_numbers = property(lambda self: self._backend.atomic_numbers)
    timestep_ps = property(lambda self: self._backend.timestep_ps)
    has_time = property(lambda self: self._backend.has_time)
    has_velocities = property(lambda self: getattr(self._backend, "has_velocities", False))

    def read(self, start: int, stop: int) -> FrameChunk:
        return self._checked(self._backend.read(start, stop), 1)

    def iter_chunks(self, chunk_frames: int, start: int = 0, stop: int | None = None,
                    stride: int = 1) -> Iterator[FrameChunk]:
        """Frames ``start:stop:stride`` in chunks of at most ``chunk_frames`` frames."""
        if hasattr(self._backend, "iter_chunks"):
            chunks = self._backend.iter_chunks(chunk_frames, start, stop, stride)
        else:
            chunks = iter_strided_chunks(self._backend, chunk_frames, start, stop, stride)
        return (self._checked(chunk, stride) for chunk in chunks)

    def _checked(self, chunk: FrameChunk, stride: int) -> FrameChunk:
        if chunk.cell is None or cell_missing(chunk.cell).all():
            self._jumps(chunk.coordinates, chunk.start, stride)
        return chunk

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> "TrajectoryReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def needs_atom_count(path: str | os.PathLike) -> bool:
    """True for the formats that do not hold their atom count (AMBER ASCII): their readers need ``n_atoms``."""
    found = mda_format(Path(path))
    return found is not None and found[0] in NEEDS_ATOM_COUNT


def read_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None, *,
                n_atoms: int | None = None) -> FrameChunk:
    """Frames ``start:stop`` of any supported trajectory, at once."""
    with TrajectoryReader(path, n_atoms=n_atoms, check_time=False) as reader:
        return reader.read(start, reader.n_frames if stop is None else stop)
