"""A periodic trajectory wrapped into its box, in a file that holds no unit cell: caught, never read as open.

Without a cell a file is an open system (:mod:`.cells`). If its atoms were wrapped into a periodic box, that
reading is silently wrong: molecules are cut by the faces and atoms jump by a box length between frames.
Two cheap signals, both measured on real files (tests/test_wrapped_inputs.py; README, unit cells):

- **a cut bond** (:func:`cut_bond`, first frame, when a topology gives bonds): a bond at least
  ``CUT_BOND_ANGSTROM`` long and at least half the system's smallest extent: a molecule cut by a face
  (covalent bonds are below 2.1 Å; per-atom wrapping, e.g. GROMACS ``-pbc atom`` or a LAMMPS dump, cuts them).
- **a jump across the box** (:func:`box_jump`, consecutive frames as they are read): an atom that moves along
  an axis by ``JUMP_FRACTION`` or more of the system's extent on that axis, at least ``MIN_JUMP_ANGSTROM``,
  ``THERMAL_FACTOR`` times the frame's median step or more, by nearly the extent vector itself (what remains
  after removing it is at most ``RESIDUAL_FRACTION`` of the extent), while the extent along that axis stays
  within ``EXTENT_TOLERANCE`` (atoms filling one box). Molecules wrapped whole (OpenMM's
  ``enforcePeriodicBox``) keep their bonds but jump. Frames far apart (the median step of a liquid then
  approaches the box) are not caught by this signal: a limit, documented.

Setting ``ASTEROID_ALLOW_WRAPPED=1`` turns both checks off (for a genuinely open system that trips one).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ..errors import UserError, user_error

ALLOW_ENV = "ASTEROID_ALLOW_WRAPPED"  # "1": no check (an open system the heuristic takes for a wrapped one)
CUT_BOND_ANGSTROM = 4.0  # twice the longest covalent bond (S–S 2.05 Å)
MIN_JUMP_ANGSTROM = 10.0  # an MD box is at least twice its cutoff, which is at least 5 Å
JUMP_FRACTION = 0.8  # of the extent along the axis
RESIDUAL_FRACTION = 0.25  # of the extent: the jump minus the extent vector
THERMAL_FACTOR = 10.0  # times the median step of all atoms between the two frames
EXTENT_TOLERANCE = 0.05  # relative change of the extent along the axis between the two frames

FIX = ("write the unit cell into the file (cell_lengths/cell_angles, the DCD/XTC box), or set "
       f"{ALLOW_ENV}=1 if the system really is open")


class Jump(NamedTuple):
    pair: int  # the jump is between frames pair and pair + 1 of the frames given
    atom: int
    axis: int
    jump_angstrom: float
    extent_angstrom: float


def checking() -> bool:
    return os.environ.get(ALLOW_ENV) != "1"


def box_jump(frames: np.ndarray) -> Jump | None:
    """The first jump across the box between consecutive frames [F, N, 3] (see the module docstring), or None.
    Frames with non-finite or all-zero coordinates never count (other checks name them)."""
    x = np.asarray(frames)
    if len(x) < 2 or x.shape[1] < 2:
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite frames: NaN, and every comparison False
        extent = np.ptp(x, axis=1).astype(np.float64)  # [F, 3]
        wider = np.maximum(extent[:-1], extent[1:])  # [F - 1, 3]
        steady = (np.abs(extent[:-1] - extent[1:]) <= EXTENT_TOLERANCE * wider) \
            & (JUMP_FRACTION * wider >= MIN_JUMP_ANGSTROM)  # small (open) molecules stop here
        for t in np.flatnonzero(steady.any(axis=1)):
            hit = _pair_jump(x[t], x[t + 1], wider[t], steady[t])
            if hit is not None:
                return Jump(int(t), *hit)
    return None


def _pair_jump(prev: np.ndarray, cur: np.ndarray, extent: np.ndarray, steady: np.ndarray):
    """(atom, axis, jump, extent) of the first jump between two frames along a ``steady`` axis, or None."""
    d = cur.astype(np.float64) - prev
    along = np.abs(d) * steady  # [N, 3]: only the steady axes
    big = along >= JUMP_FRACTION * extent
    if not big.any():
        return None
    step = np.sqrt((d * d).sum(axis=1))
    typical = float(np.median(step))
    for atom, axis in zip(*np.nonzero(big)):
        rest = d[atom].copy()
        rest[axis] -= np.sign(rest[axis]) * extent[axis]
        if along[atom, axis] >= THERMAL_FACTOR * typical and \
                np.sqrt((rest * rest).sum()) <= RESIDUAL_FRACTION * extent[axis]:
            return int(atom), int(axis), float(along[atom, axis]), float(extent[axis])
    return None


def cut_bond(frame: np.ndarray, bonds: np.ndarray | None) -> tuple[int, int, float, float] | None:
    """(atom i, atom j, length Å, smallest extent Å) of the first bond of ``frame`` [N, 3] cut by a box face
    (see the module docstring), or None (no bonds: None)."""
    if bonds is None or not len(bonds):
        return None
    x = np.asarray(frame, dtype=np.float64)
    if not np.isfinite(x).all():
        return None
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    length = np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)
    smallest = float(np.ptp(x, axis=0).min())
    cut = length >= max(CUT_BOND_ANGSTROM, 0.5 * smallest)
    if not cut.any():
        return None
    k = int(np.argmax(cut))
    return int(bonds[k, 0]), int(bonds[k, 1]), float(length[k]), smallest


def wrapped_error(path, frames: tuple[int, int], jump: Jump) -> UserError:
    """The one line for a ``jump`` between file frames ``frames``."""
    return user_error(path, f"atom {jump.atom} jumps {jump.jump_angstrom:.1f} A along {'xyz'[jump.axis]} between "
                            f"frames {frames[0]} and {frames[1]}, nearly the system's extent "
                            f"({jump.extent_angstrom:.1f} A), and the file has no unit cell: a periodic trajectory "
                            f"wrapped into its box? {FIX}")


def check_bonds_whole(path, frame: np.ndarray, bonds: np.ndarray | None, frame_index: int = 0) -> None:
    """Refuse a first frame [N, 3] of a file without a cell whose ``bonds`` are cut by a box face."""
    cut = cut_bond(frame, bonds) if checking() else None
    if cut is not None:
        i, j, length, smallest = cut
        raise user_error(path, f"the bond {i}-{j} is {length:.1f} A long in frame {frame_index} (the system spans "
                               f"{smallest:.1f} A at its narrowest), and the file has no unit cell: a periodic "
                               f"trajectory wrapped into its box, molecules cut by its faces? {FIX}")


class JumpCheck:
    """Checks the frames of one file without a cell as they are read: within each chunk, and across chunks
    that follow each other (``start`` the file frame of the chunk's first frame, ``stride`` between frames)."""

    def __init__(self, path) -> None:
        self.path = path
        self.enabled = checking()
        self.last: tuple[int, np.ndarray] | None = None  # (file frame, coordinates) of the last frame checked

    def __call__(self, coordinates: np.ndarray, start: int, stride: int = 1) -> None:
        if not self.enabled or not len(coordinates):
            return
        frames, first = coordinates, start
        if self.last is not None and self.last[0] + stride == start:
            frames, first = np.concatenate([self.last[1][None], coordinates]), start - stride
        jump = box_jump(frames)
        if jump is not None:
            frame = first + jump.pair * stride
            raise wrapped_error(self.path, (frame, frame + stride), jump)
        self.last = (start + (len(coordinates) - 1) * stride, np.array(coordinates[-1]))
