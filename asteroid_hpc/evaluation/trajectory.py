"""Bring the frames an evaluation needs into memory, through the data layer's readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..logs import get_logger
from ..errors import user_error
from .protocols import MD17_FRAME_FS, Trajectory

log = get_logger(__name__)


def input_atomic_numbers(path: Path, file_numbers: np.ndarray | None, from_topology: np.ndarray | None,
                         n_atoms: int) -> np.ndarray:
    """The elements of a trajectory's atoms: the topology's (checked against the file's own), else the file's."""
    if from_topology is not None:
        if len(from_topology) != n_atoms:
            raise user_error(path, f"{n_atoms} atoms, but the topology has {len(from_topology)}")
        if file_numbers is not None and not np.array_equal(from_topology, file_numbers):
            raise user_error(path, "atomic numbers differ from those of the topology")
        return from_topology
    if file_numbers is None:
        raise user_error(path, "no atomic numbers in the file (needed to pick heavy atoms and embed elements): "
                               "pass --topology FILE")
    return np.asarray(file_numbers, dtype=np.int64)


def load_trajectory(path: str | os.PathLike, timestep_fs: float | None = None, *, topology: str | None = None,
                    signature: dict | None = None, model: str | os.PathLike = "",
                    allow_mismatch: bool = False) -> Trajectory:
    """A whole trajectory file (any format of :mod:`asteroid_hpc.data.readers`) as positions [F, N, 3]
    float32 Å.

    The frame spacing comes from ``timestep_fs`` when given, else from the file's time axis, else it is
    taken to be MD17's 0.5 fs (logged). Elements: see :func:`~asteroid_hpc.data.signature.input_topology_numbers`. With the ``signature``
    of ``model``, an input of other atoms or another frame spacing is refused (unless ``allow_mismatch``), and
    a whole input of a model trained on a selection of its atoms is cut to those atoms.
    """
    from ..data.frames import COLLAPSED, first_collapsed_frame
    from ..data.readers import TrajectoryReader
    from ..data.signature import check_against_model, input_topology_numbers, model_atoms, selection_note

    path = Path(path)
    from_topology = input_topology_numbers(path, topology, signature)
    with TrajectoryReader(path, n_atoms=None if from_topology is None else len(from_topology),
                          check_time=timestep_fs is None) as reader:
        atomic_numbers = input_atomic_numbers(path, reader.atomic_numbers, from_topology, reader.n_atoms)
        chunk = reader.read(0, reader.n_frames)
        positions, cell = np.asarray(chunk.coordinates, dtype=np.float32), _periodic_cells(chunk.cell, path)
        file_timestep_ps = reader.timestep_ps
    if timestep_fs is None:
        if file_timestep_ps is None or file_timestep_ps <= 0:
            log.warning("%s: no time axis; taking frames to be %g fs apart (MD17)", path, MD17_FRAME_FS)
            timestep_fs = MD17_FRAME_FS
        else:
            timestep_fs = round(file_timestep_ps * 1000.0, 3)  # float32 time axes carry rounding
    if len(positions) < 2:
        raise user_error(path, f"{len(positions)} frame(s): too short to evaluate")
    collapsed = first_collapsed_frame(positions)
    if collapsed is not None:
        raise user_error(path, f"frame {collapsed}: {COLLAPSED}")
    check_against_model(signature, atomic_numbers, float(timestep_fs), path, model, allow_mismatch)
    selected = model_atoms(signature, len(atomic_numbers))
    bonds = _topology_bonds(path, topology, signature, len(atomic_numbers), selected)
    if selected is not None:
        log.info("%s", selection_note(signature, path))
        positions, atomic_numbers = positions[:, selected], atomic_numbers[selected]
    if cell is not None:
        positions = _unwrapped(positions, cell, bonds, path)
    else:  # an open input: no molecule of its topology may be cut by a box face
        from ..data.wrapped import check_bonds_whole

        check_bonds_whole(path, positions[0], bonds)
    return Trajectory(positions, atomic_numbers, float(timestep_fs), str(path), cell, bonds)


def _periodic_cells(cell: np.ndarray | None, path: Path) -> np.ndarray | None:
    """The boxes [F, 6] of a periodic file (checked as preprocess checks them), None for an open one."""
    from ..data.cells import CellCheck, first_cell

    first = None if cell is None else first_cell(cell, 0, path)
    if first is None:
        return None
    CellCheck(first, path, int)(cell, np.arange(len(cell)))
    return np.asarray(cell, dtype=np.float64)


def _topology_bonds(path: Path, topology: str | None, signature: dict | None, n_atoms: int,
                    selected: np.ndarray | None) -> np.ndarray | None:
    """The topology's bonds among the loaded atoms (renumbered after a selection), None without them."""
    from ..data.signature import recorded_topology
    from ..data.topology import read_topology
    from ..data.unwrap import selected_bonds

    topology = topology or recorded_topology(signature)
    if topology is None:
        return None
    read = read_topology(topology)
    if len(read.atomic_numbers) != n_atoms or not len(read.bonds):
        return None
    bonds = read.bonds
    return bonds if selected is None else selected_bonds(bonds, selected, n_atoms)


def _unwrapped(positions: np.ndarray, cell: np.ndarray, bonds: np.ndarray | None, path: Path) -> np.ndarray:
    """A periodic trajectory made continuous (molecules whole, no jumps across the faces) as preprocess does."""
    from ..data.unwrap import Unwrapper

    if bonds is None:
        log.info("%s: no bonds from a topology: atoms unwrapped one by one", path)
    return Unwrapper(positions.shape[1], bonds, path)(positions, cell).astype(np.float32)
