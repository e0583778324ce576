"""Periodic boxes in the model: the minimum image of relative vectors and neighbour search across the faces.

A cell is [B, 3, 3] (or [3, 3] for every system of the batch): the box vectors as rows, in Å, any
orientation (a box that rotates with its atoms stays a valid cell) and any shape, orthorhombic or
triclinic (truncated octahedron, rhombic dodecahedron, ...). ``asteroid_hpc.geometry.cell_matrix`` turns
the lengths and angles of a trajectory file into one. Coordinates may lie anywhere (unwrapped,
continuous in time): only relative vectors are used, each as its minimum image.

Neighbour search (:class:`PeriodicImages`): the atoms are wrapped into the cell (fractional coordinates in
[0, 1)) and the images of those within the search radius of a face (of the 26 neighbouring cells) are
added, all in one k-d tree in Cartesian space; each atom queries it. For a radius below half the cell's
shortest perpendicular width every pair has at most one image within the radius, so the search is exact
(the same pairs and vectors as a brute-force minimum image) and linear in N, for any cell shape. Each
pair comes back with the integer lattice vector n such that x_j − x_i + n·cell is its minimum image.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from ..errors import UserError

# The 27 lattice offsets of a cell and its neighbours, (0, 0, 0) first.
OFFSETS = np.array(sorted(itertools.product((-1, 0, 1), repeat=3), key=lambda o: np.abs(o).sum()), dtype=np.int64)
FACE_MARGIN = 1e-9  # fractional slack at the faces against rounding in the wrap (only adds a few images)


def as_cells(cell, batch: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """A cell [3, 3] or [B, 3, 3] (tensor or array, Å) -> [B, 3, 3]; one-line UserError for what is no box."""
    cell = torch.as_tensor(cell, dtype=dtype, device=device)
    if cell.shape == (3, 3):
        cell = cell.unsqueeze(0).expand(batch, 3, 3)
    if cell.shape != (batch, 3, 3):
        raise UserError(f"cell must be [3, 3] or [{batch}, 3, 3] box vectors as rows in Å, got {list(cell.shape)}")
    if not bool(torch.isfinite(cell).all()):
        raise UserError("the cell holds NaN or infinite box vectors")
    volume = torch.linalg.det(cell.double()).abs()
    if bool((volume <= 1e-6 * cell.double().norm(dim=-1).prod(-1)).any()):
        raise UserError("the cell is degenerate (zero volume): its three box vectors must span space")
    return cell


def perpendicular_widths(cell: Tensor | np.ndarray):
    """The distances between opposite faces [..., 3] of cells [..., 3, 3] (tensor or array, same kind)."""
    if isinstance(cell, Tensor):
        return 1.0 / torch.linalg.vector_norm(torch.linalg.inv(cell.double()), dim=-2)
    return 1.0 / np.linalg.norm(np.linalg.inv(np.asarray(cell, dtype=np.float64)), axis=-2)


def check_radius(cell: Tensor | np.ndarray, radius_angstrom: float) -> None:
    """Refuse a neighbour radius not below half of every cell's shortest perpendicular width."""
    widths = perpendicular_widths(cell)
    shortest = float(widths.min())
    if not radius_angstrom < shortest / 2:
        raise UserError(f"the neighbour radius {radius_angstrom:g} Å must be below half the box's shortest "
                        f"perpendicular width ({shortest:g} Å): the box is too small for model.cutoff_angstrom")


def minimum_image_shift(vectors: Tensor, cell: Tensor) -> Tensor:
    """The lattice vectors [B, ..., 3] that turn ``vectors`` [B, ..., 3] into their minimum images in cells
    [B, 3, 3]: exactly zero for a vector shorter than half the shortest perpendicular width (already the
    minimum image), so continuous input passes through bit for bit. Longer vectors: rounded in fractional
    coordinates, then the shortest of the 27 neighbouring images."""
    batch = vectors.shape[0]
    flat = vectors.detach().reshape(batch, -1, 3).double()
    cell64 = cell.detach().double()
    half = perpendicular_widths(cell64).amin(-1).view(batch, 1) / 2
    long = torch.linalg.vector_norm(flat, dim=-1) >= half
    if not bool(long.any()):
        return torch.zeros_like(vectors)
    lattice = -torch.round(flat @ torch.linalg.inv(cell64))  # [B, M, 3] integers
    best = flat + lattice @ cell64
    best_norm = best.pow(2).sum(-1)
    offsets = torch.from_numpy(OFFSETS[1:]).to(device=flat.device, dtype=torch.float64)
    for offset in offsets:
        candidate = best + (offset @ cell64).unsqueeze(1)
        shorter = candidate.pow(2).sum(-1) < best_norm
        lattice = torch.where(shorter.unsqueeze(-1), lattice + offset, lattice)
        best = torch.where(shorter.unsqueeze(-1), candidate, best)
        best_norm = torch.where(shorter, best.pow(2).sum(-1), best_norm)
    lattice = torch.where(long.unsqueeze(-1), lattice, torch.zeros_like(lattice))
    return (lattice @ cell64).to(vectors.dtype).view(vectors.shape)


def minimum_image(vectors: Tensor, cell: Optional[Tensor]) -> Tensor:
    """``vectors`` [B, ..., 3] as their minimum images in cells [B, 3, 3]; unchanged when ``cell`` is None."""
    return vectors if cell is None else vectors + minimum_image_shift(vectors, cell)


def wrap_into_cell(coords: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates [N, 3] moved into the cell [3, 3] by whole lattice vectors: (fractional coordinates in
    [0, 1], the integer lattice vector added to each atom [N, 3])."""
    frac = coords @ np.linalg.inv(cell)
    lattice = -np.floor(frac)
    return frac + lattice, lattice


class PeriodicImages:
    """One frame's atoms [N, 3] wrapped into ``cell`` [3, 3] plus their images within ``radius_angstrom`` of a
    face, in one k-d tree (module doc). :meth:`query` answers as ``cKDTree.query`` does, per atom."""

    def __init__(self, coords: np.ndarray, cell: np.ndarray, radius_angstrom: float):
        coords, cell = np.asarray(coords, dtype=np.float64), np.asarray(cell, dtype=np.float64)
        check_radius(cell, radius_angstrom)
        self.n_atoms = len(coords)
        frac, self.wrap = wrap_into_cell(coords, cell)
        margin = radius_angstrom / perpendicular_widths(cell) + FACE_MARGIN
        atoms, lattices = [], []
        for offset in OFFSETS:  # 27 neighbouring cells, not atoms: the work per cell is vectorised
            moved = frac + offset
            keep = (np.flatnonzero(((moved >= -margin) & (moved < 1 + margin)).all(axis=1)) if offset.any()
                    else np.arange(self.n_atoms))
            atoms.append(keep)
            lattices.append(self.wrap[keep] + offset)
        self.atom = np.concatenate(atoms)  # the atom of each point (the first N points: the atoms themselves)
        self.lattice = np.concatenate(lattices)  # its lattice vector from the atom's own coordinates
        self.points = coords[self.atom] + self.lattice @ cell
        self.tree = cKDTree(self.points)

    def query(self, k: int, radius_angstrom: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` nearest (atom, image) pairs within ``radius_angstrom`` of each atom, nearest first:
        distances [N, k] (inf when missing), atom indices [N, k] (the atom itself when missing) and the lattice
        vectors n [N, k, 3] (zero when missing) such that x_j − x_i + n·cell is the pair's minimum image."""
        n = self.n_atoms
        order = self.tree.indices[self.tree.indices < n]  # query in the tree's order: cache-friendly
        found_dist, found_idx = self.tree.query(self.points[order], k=k, distance_upper_bound=radius_angstrom)
        dist, idx = np.empty((n, k)), np.empty((n, k), dtype=np.int64)
        dist[order], idx[order] = found_dist.reshape(n, k), found_idx.reshape(n, k)
        valid = np.isfinite(dist)
        point = np.where(valid, idx, np.arange(n)[:, None])  # a missing one points at the atom itself
        lattice = np.where(valid[..., None], self.lattice[point] - self.wrap[:, None], 0)
        return dist, self.atom[point], lattice
