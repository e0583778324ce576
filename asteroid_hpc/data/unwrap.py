"""Continuous trajectories from a periodic box: molecules made whole on the first frame, then no jumps.

For the frames of one source (one time series), in order, with the unit cell of every frame ([F, 6]:
lengths Å, angles °)::

    x'_0 = x_0 made whole: each atom at the minimum image of its parent in a breadth-first spanning tree of
           its molecule (bonds from the topology); without bonds x'_0 = x_0 (single atoms: nothing to join)
    x'_t = x'_{t-1} + minimum_image_t(x_t - x_{t-1})      ("nojump", frame t's own cell)

Minimum image by rounding in fractional coordinates, exact for any cell (orthorhombic or triclinic:
truncated octahedron, rhombic dodecahedron; reduced or not): with w the cell's smallest perpendicular
width, every fractional component of a vector shorter than w/2 lies in (-1/2, 1/2), so rounding recovers
a minimum image shorter than w/2 exactly; and a result shorter than w/2 is the unique minimum image, since
every non-zero lattice vector is at least w long. A result of w/2 or more is a step (or a bond) that no
wrap can tell from a jump across the box: refused with a one-line error, never guessed.

A box that changes (NPT): each displacement is wrapped with its own frame's cell, the "toroidal-view-
preserving" scheme of von Bülow, Bullerjahn and Hummer (J. Chem. Phys. 153, 021101, 2020); for coordinates
an engine wrapped with its current box it returns the engine's own displacements.

Exact composition: the offset x'_t - x_t of every atom is an int64 in units of 2^-32 Å (the cell vectors
are rounded to that grid, about 2e-10 Å, far below float32 data), so offsets add up exactly in any order
and a source split into ranges (chunks, shards, MPI ranks) unwraps bit-identically to one pass. For
consecutive ranges R_k = frames [a_k, b_k) of one source:

1. pass 1, per range: ``Unwrapper(n, bonds)`` for R_0, ``Unwrapper.after(x[a_k - 1])`` for k > 0;
   ``advance`` through the range's chunks; its ``offset`` is the range's shift S_k;
2. ``exclusive_prefix([S_0, S_1, ...])`` (or :func:`range_start_offsets` across MPI ranks): start offsets;
3. pass 2: the same, with ``Unwrapper.after(x[a_k - 1], starts[k])`` for k > 0, calling it on every chunk.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import user_error
from ..logs import get_logger
from .cells import check_periodic_cells

log = get_logger(__name__)

OFFSET_UNIT_ANGSTROM = 2.0 ** -32  # offsets are int64 multiples of this: exact sums in any order
_BLOCK_ATOM_FRAMES = 1 << 18  # frames x atoms per vectorised step: bounded temporaries (~6 MB per array)


class Cells:
    """Cells [F, 6] as row vectors H [F, 3, 3] (a along x, b in the xy plane, as MDAnalysis), their
    inverses, half their smallest perpendicular widths [F] and H on the 2^-32 Å grid (int64)."""

    def __init__(self, cell, where, frames: np.ndarray) -> None:
        check_periodic_cells(None if cell is None else np.asarray(cell, dtype=np.float64).reshape(-1, 6), frames,
                             where)
        cell = np.asarray(cell, dtype=np.float64).reshape(-1, 6)
        self.vectors = cell_vectors(cell)
        h = self.vectors
        volume = h[:, 0, 0] * h[:, 1, 1] * h[:, 2, 2]
        areas = np.stack([np.linalg.norm(np.cross(h[:, (i + 1) % 3], h[:, (i + 2) % 3]), axis=-1)
                          for i in range(3)], axis=1)
        self.half_width = 0.5 * (volume / areas.max(axis=1))
        self.inverse = np.linalg.inv(h)
        self.grid = np.rint(h / OFFSET_UNIT_ANGSTROM).astype(np.int64)

    def __getitem__(self, index) -> "Cells":
        out = object.__new__(Cells)
        for name in ("vectors", "half_width", "inverse", "grid"):
            setattr(out, name, getattr(self, name)[index])
        return out


def cell_vectors(cell: np.ndarray) -> np.ndarray:
    """Box vectors as rows [..., 3, 3] of cells [..., 6] (lengths Å, angles °), MDAnalysis's convention
    (``triclinic_vectors``); an angle of exactly 90° gives exact zeros. Unchecked: see
    :func:`.cells.check_periodic_cells`."""
    cell = np.asarray(cell, dtype=np.float64)
    lengths, angles = cell[..., :3], cell[..., 3:]
    cos = np.where(angles == 90.0, 0.0, np.cos(np.radians(angles)))
    sin_gamma = np.where(angles[..., 2] == 90.0, 1.0, np.sin(np.radians(angles[..., 2])))
    cx = cos[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat cell: refused by cells.check_periodic_cells
        cy = (cos[..., 0] - cos[..., 1] * cos[..., 2]) / sin_gamma
    h = np.zeros(cell.shape[:-1] + (3, 3))
    h[..., 0, 0] = lengths[..., 0]
    h[..., 1, 0] = lengths[..., 1] * cos[..., 2]
    h[..., 1, 1] = lengths[..., 1] * sin_gamma
    h[..., 2, 0] = lengths[..., 2] * cx
    h[..., 2, 1] = lengths[..., 2] * cy
    h[..., 2, 2] = lengths[..., 2] * np.sqrt(np.maximum(1.0 - cx ** 2 - cy ** 2, 0.0))
    return h


def image_counts(d: np.ndarray, cells: Cells) -> tuple[np.ndarray, np.ndarray]:
    """Integer images n [F, M, 3] (whole numbers, as float64) of vectors d [F, M, 3] (frame f in cell f)
    such that d - n·H is their minimum image, and the squared lengths of those images [F, M] (exact below
    half the smallest width)."""
    counts = np.rint(np.matmul(d, cells.inverse))
    image = d - np.matmul(counts, cells.vectors)
    return counts, np.einsum("fmk,fmk->fm", image, image)


def _refuse_long(length2: np.ndarray, cells: Cells, where, frames: np.ndarray, what, why: str) -> None:
    """One line for the first vector whose minimum image is at least half the cell's smallest width;
    ``what(m)`` names vector m, ``why`` says what it means."""
    too_long = length2 >= cells.half_width[:, None] ** 2
    if too_long.any():
        f, m = np.unravel_index(int(np.argmax(too_long)), too_long.shape)
        raise user_error(where, f"frame {int(frames[f])}: {what(int(m))} half the box's smallest width "
                                f"({cells.half_width[f]:.2f} Å) or more at every periodic image: {why}")


def _grid_shifts(counts: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """-(n·H) on the 2^-32 Å grid, int64 [F, M, 3], for whole-number counts [F, M, 3] and grid cells
    [F, 3, 3]: a float64 product (BLAS) where every term and sum is an integer below 2^53, hence exact."""
    if not counts.size:
        return np.zeros(counts.shape, np.int64)
    if np.abs(counts).max() * np.abs(grid).max() * 3 < 2.0 ** 53:
        return -np.matmul(counts, grid.astype(np.float64)).astype(np.int64)
    counts = counts.astype(np.int64)
    return -sum(counts[..., k, None] * grid[:, None, k, :] for k in range(3))


def spanning_parents(n_atoms: int, bonds: np.ndarray | None) -> np.ndarray:
    """Each atom's parent [N] in a breadth-first spanning forest of the bond graph (one tree per molecule,
    rooted at its lowest-numbered atom, which is its own parent); without bonds every atom is a root."""
    parents = np.arange(n_atoms)
    bonds = np.empty((0, 2), np.int64) if bonds is None else np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if not len(bonds):
        return parents
    if bonds.min() < 0 or bonds.max() >= n_atoms:
        raise ValueError(f"bond atom index outside 0..{n_atoms - 1}")
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    graph = coo_matrix((np.ones(len(bonds)), (bonds[:, 0], bonds[:, 1])), shape=(n_atoms, n_atoms))
    _, labels = connected_components(graph, directed=False)
    _, roots = np.unique(labels, return_index=True)
    # one search from a virtual atom bonded to every molecule's root reaches every molecule at once
    rows = np.concatenate([bonds[:, 0], np.full(len(roots), n_atoms)])
    cols = np.concatenate([bonds[:, 1], roots])
    forest = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_atoms + 1, n_atoms + 1)).tocsr()
    _, predecessors = breadth_first_order(forest, n_atoms, directed=False, return_predecessors=True)
    parents[:] = predecessors[:n_atoms]
    parents[roots] = roots
    return parents


def path_sums(parents: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For every atom, the sum of ``values`` [N, 3] (int64) over its path up to its root (the root's own
    value excluded) by pointer jumping: log2(tree depth) vectorised steps, no loop over atoms."""
    total, up = values.copy(), parents.copy()
    roots = parents == np.arange(len(parents))
    total[roots] = 0
    while not np.array_equal(up[up], up):
        total, up = total + total[up], up[up]
    return total


def selected_bonds(bonds: np.ndarray, atom_indices: Sequence[int], n_atoms: int) -> np.ndarray:
    """The bonds [B', 2] between selected atoms, numbered within the selection (``n_atoms``: the topology's);
    a molecule cut by the selection is made whole fragment by fragment."""
    position = np.full(n_atoms, -1, dtype=np.int64)
    position[np.asarray(atom_indices, dtype=np.int64)] = np.arange(len(atom_indices))
    mapped = position[np.asarray(bonds, dtype=np.int64).reshape(-1, 2)]
    return mapped[(mapped >= 0).all(axis=1)]


class Unwrapper:
    """Unwraps the chunks of one source, one after another, keeping only the last raw frame and its offset
    (the module docstring has the rule and how ranges of a source compose exactly)."""

    STEP_HINT = "frames too far apart (or a broken trajectory) to unwrap"

    def __init__(self, n_atoms: int, bonds: np.ndarray | None = None, where="trajectory",
                 step_hint: str = STEP_HINT) -> None:
        self.n_atoms = n_atoms
        self.where = where
        self.step_hint = step_hint  # the end of the one line refusing a step too long to unwrap
        self.bonds = np.empty((0, 2), np.int64) if bonds is None else np.asarray(bonds, np.int64).reshape(-1, 2)
        self.parents = spanning_parents(n_atoms, self.bonds)
        self.previous: np.ndarray | None = None  # [N, 3] float64: the last raw frame seen
        self.offset: np.ndarray | None = None  # [N, 3] int64, units of 2^-32 Å: unwrapped - raw of that frame
        self.frames_seen = 0

    @classmethod
    def after(cls, previous_frame: np.ndarray, offset: np.ndarray | None = None, where="trajectory",
              step_hint: str = STEP_HINT) -> "Unwrapper":
        """Continue a source after raw frame ``previous_frame`` [N, 3], whose offset is ``offset`` (int64
        [N, 3], 2^-32 Å; None: 0, for pass 1 of a range). No molecule is made whole again."""
        previous = np.asarray(previous_frame, dtype=np.float64)
        out = cls(len(previous), None, where, step_hint)
        out.previous = previous.copy()
        out.offset = np.zeros((len(previous), 3), np.int64) if offset is None else np.array(offset, np.int64)
        return out

    @property
    def offset_angstrom(self) -> np.ndarray:
        """Unwrapped minus raw coordinates of the last frame seen [N, 3] Å."""
        return self.offset * OFFSET_UNIT_ANGSTROM

    def __call__(self, coordinates: np.ndarray, cell: np.ndarray | None, frames=None) -> np.ndarray:
        """The unwrapped frames [F, N, 3] float64 of raw ``coordinates`` [F, N, 3] Å in cells ``cell``
        [F, 6]; ``frames``: their frame numbers, for error messages (default: counted from 0)."""
        x = np.asarray(coordinates, dtype=np.float64)
        out = np.empty_like(x)
        for block, offsets in self._offsets(x, cell, frames):
            np.add(x[block], offsets * OFFSET_UNIT_ANGSTROM, out=out[block])
        return out

    def advance(self, coordinates: np.ndarray, cell: np.ndarray | None, frames=None) -> None:
        """Move through the frames like ``__call__`` without producing them (pass 1: the range's shift)."""
        for _ in self._offsets(np.asarray(coordinates, dtype=np.float64), cell, frames):
            pass

    def _offsets(self, x: np.ndarray, cell, frames):
        """Yield (slice of frames, their offsets int64 [f, N, 3]) block by block, updating the state."""
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"coordinates of shape {x.shape}, expected [frames, {self.n_atoms}, 3]")
        frames = np.arange(self.frames_seen, self.frames_seen + len(x)) if frames is None else np.asarray(frames)
        cells = Cells(cell, self.where, frames)
        step = max(1, _BLOCK_ATOM_FRAMES // max(1, self.n_atoms))
        for a in range(0, len(x), step):
            block = slice(a, min(len(x), a + step))
            yield block, self._block_offsets(x[block], cells[block], frames[block])
        self.frames_seen += len(x)

    def _block_offsets(self, x: np.ndarray, cells: Cells, frames: np.ndarray) -> np.ndarray:
        if self.previous is None:  # the source's first frame: molecules made whole
            self.previous, self.offset = x[0].copy(), self._whole(x[0], cells[:1], frames[:1])
            if len(x) == 1:
                return self.offset[None].copy()
            return np.concatenate([self.offset[None], self._block_offsets(x[1:], cells[1:], frames[1:])])
        steps = np.diff(x, axis=0, prepend=self.previous[None])
        counts, length2 = image_counts(steps, cells)
        _refuse_long(length2, cells, self.where, frames, lambda m: f"atom {m} moved", self.step_hint)
        offsets = _grid_shifts(counts, cells.grid)
        offsets[0] += self.offset
        for f in range(1, len(offsets)):  # a running sum over frames, in place (faster than cumsum on axis 0)
            offsets[f] += offsets[f - 1]
        self.previous, self.offset = x[-1].copy(), offsets[-1]
        return offsets

    def _whole(self, x0: np.ndarray, cell: Cells, frames: np.ndarray) -> np.ndarray:
        """Offsets int64 [N, 3] that make every molecule of frame ``x0`` whole (each atom at the minimum
        image of its tree parent)."""
        bond_images, length2 = image_counts((x0 - x0[self.parents])[None], cell)
        _refuse_long(length2, cell, self.where, frames,
                     lambda m: f"the bond between atoms {int(self.parents[m])} and {m} is",
                     "the topology's bonds do not fit this box")
        placed = path_sums(self.parents, bond_images[0].astype(np.int64))  # each atom's images from its root
        if len(self.bonds):  # rings close by themselves; a bond still split joins a molecule to its own image
            i, j = self.bonds[:, 0], self.bonds[:, 1]
            bond_counts, _ = image_counts((x0[i] - x0[j])[None], cell)
            split = (placed[i] - placed[j] != bond_counts[0].astype(np.int64)).any(axis=1)
            if split.any():
                log.warning("%s: %d bond(s) still cross the box after making molecules whole: a molecule bonded "
                            "to its own periodic image (a crystal, an infinite polymer) cannot be whole",
                            self.where, int(split.sum()))
        return _grid_shifts(placed[None].astype(np.float64), cell.grid)[0]


def exclusive_prefix(shifts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Start offsets of consecutive ranges of one source from their shifts (int64, exact): [0, S_0,
    S_0 + S_1, ...]. Range 0 starts fresh (its molecules made whole), so its start is unused."""
    starts, total = [], np.zeros_like(shifts[0]) if len(shifts) else None
    for shift in shifts:
        starts.append(total.copy())
        total = total + shift
    return starts


def range_start_offsets(world, owners: Sequence[int], shifts: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Start offsets of this rank's ranges across MPI ranks: ranges 0..m-1 of one source in time order,
    range k on rank ``owners[k]``, ``shifts``: {k: S_k} for this rank's ranges (``world``: the
    :func:`~asteroid_hpc.runtime.mpi.world` interface). One broadcast per range, memory O(atoms); any
    assignment of ranges to ranks (round-robin shards included)."""
    starts: dict[int, np.ndarray] = {}
    total: np.ndarray | None = None
    for k, owner in enumerate(owners):
        if owner == world.rank:
            starts[k] = np.zeros_like(shifts[k]) if total is None else total.copy()
        if k == len(owners) - 1:
            break
        shift = world.bcast(shifts[k] if owner == world.rank else None, root=owner)
        total = shift.copy() if total is None else total + shift
    return starts
