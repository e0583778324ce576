"""Unit cells of periodic trajectories and their checks.

A cell is a row ``[a, b, c, alpha, beta, gamma]`` (lengths in Å, angles in degrees), as MDAnalysis's
``dimensions`` and the AMBER ``cell_lengths``/``cell_angles`` hold it; readers return ``[F, 6]`` per chunk
with NaN rows for frames without one. A file is periodic when its first frame has a cell (an all-zero cell
counts as none, as in MDAnalysis). Every later frame of a periodic file must have a valid cell of the same
shape (angles); its lengths may change (NPT: recorded, and the model keeps the last observed box), an open
file must have no cell anywhere. Every violation is a one-line UserError naming the file and the frame.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import user_error

ANGLE_TOLERANCE_DEG = 1e-3  # angles further apart than this: the cell changed shape
LENGTH_TOLERANCE = 1e-6  # relative: lengths further apart than this: the box changed size (NPT)
MIN_VOLUME_FACTOR = 1e-3  # volume / (a b c) below sqrt of this: a degenerate (flat) cell


def cell_missing(cell: np.ndarray) -> np.ndarray:
    """[F] True where a frame has no cell: a NaN/Inf entry (no cell read) or all lengths zero."""
    cell = np.asarray(cell, dtype=np.float64).reshape(-1, 6)
    return ~np.isfinite(cell).all(axis=1) | (cell[:, :3] == 0).all(axis=1)


def cell_kind(cell) -> str:
    """"orthorhombic" when every angle is 90 degrees, else "triclinic"."""
    return "orthorhombic" if np.all(np.abs(np.asarray(cell, dtype=np.float64)[3:6] - 90.0) <= ANGLE_TOLERANCE_DEG) \
        else "triclinic"


def volume_factor(angles_deg: np.ndarray) -> np.ndarray:
    """(volume / (a b c))² of cells with angles [F, 3]: 1 - Σcos² + 2Πcos; ≤ 0 for impossible angle triples."""
    c = np.cos(np.radians(np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3)))
    return 1.0 - (c ** 2).sum(axis=1) + 2.0 * c.prod(axis=1)


def check_cell_values(cell: np.ndarray, frames, path) -> None:
    """Refuse a cell [F, 6] (every row present) with a non-positive length, an angle outside (0°, 180°) or
    a volume of about zero; ``frames`` [F] name the frames in the message."""
    cell = np.asarray(cell, dtype=np.float64).reshape(-1, 6)
    lengths, angles = cell[:, :3], cell[:, 3:]
    for bad, what in (((lengths <= 0).any(axis=1), "a non-positive unit cell length"),
                      (((angles <= 0) | (angles >= 180)).any(axis=1), "a unit cell angle outside (0, 180) degrees"),
                      (volume_factor(angles) < MIN_VOLUME_FACTOR, "a degenerate unit cell (volume about zero: "
                                                                  "impossible angles)")):
        if bad.any():
            k = int(np.argmax(bad))
            raise user_error(path, f"frame {int(frames[k])} has {what}: {_described(cell[k])}")


def check_periodic_cells(cell: np.ndarray | None, frames, path) -> None:
    """The one check of the cells [F, 6] of frames of a periodic file (preprocess and unwrapping alike): every
    frame has one (None: the chunk has none), with valid values (:func:`check_cell_values`)."""
    if not len(frames):
        return
    missing = np.ones(len(frames), dtype=bool) if cell is None else cell_missing(cell)
    if missing.any():
        k = int(np.argmax(missing))
        raise user_error(path, f"frame {int(frames[k])} has no unit cell (missing, NaN or zero), but the file is "
                               "periodic")
    check_cell_values(cell, frames, path)


def _described(cell: np.ndarray) -> str:
    return f"lengths {cell[0]:g} {cell[1]:g} {cell[2]:g} A, angles {cell[3]:g} {cell[4]:g} {cell[5]:g} degrees"


def first_cell(cell: np.ndarray | None, frame: int, path) -> list[float] | None:
    """The cell of a file's first frame (checked) as a list, or None when the file is not periodic."""
    if cell is None or cell_missing(cell[:1])[0]:
        return None
    check_cell_values(cell[:1], [frame], path)
    return [float(v) for v in np.asarray(cell[0], dtype=np.float64)]


class CellCheck:
    """Checks the cells of every chunk of one source against its first frame's cell ``first`` (None: an open
    system); ``raw_frame`` maps the strided frame indices of the chunks to the file's frames for messages.
    :attr:`box_changed` is True once a frame's lengths differ from the first frame's (NPT)."""

    def __init__(self, first: list[float] | None, path, raw_frame: Callable[[int], int]) -> None:
        self.first = None if first is None else np.asarray(first, dtype=np.float64)
        self.path, self.raw_frame = path, raw_frame
        self.box_changed = False

    def __call__(self, cell: np.ndarray | None, index: np.ndarray) -> None:
        """``cell`` [F, 6] or None, of the strided frames ``index`` [F]."""
        if self.first is None:
            if cell is not None and not cell_missing(cell).all():
                k = int(np.argmax(~cell_missing(cell)))
                raise user_error(self.path, f"frame {self.raw_frame(int(index[k]))} has a unit cell, but the first "
                                            "frame has none (a periodic file needs the cell of every frame)")
            return
        frames = [self.raw_frame(int(i)) for i in index]
        check_periodic_cells(cell, frames, self.path)
        turned = (np.abs(cell[:, 3:] - self.first[3:]) > ANGLE_TOLERANCE_DEG).any(axis=1)
        if turned.any():
            k = int(np.argmax(turned))
            raise user_error(self.path, f"the unit cell changes shape at frame {frames[k]} (angles "
                                        f"{cell[k, 3]:g} {cell[k, 4]:g} {cell[k, 5]:g} degrees, first frame "
                                        f"{self.first[3]:g} {self.first[4]:g} {self.first[5]:g}): not supported")
        if (np.abs(cell[:, :3] - self.first[:3]) > LENGTH_TOLERANCE * self.first[:3]).any():
            self.box_changed = True
