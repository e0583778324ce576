"""Neighbour lists for local attention: a radius graph from scipy's cKDTree, padded to a fixed width.

Open boundaries (molecules in vacuum, open boxes) or a periodic cell: then each pair carries the lattice
vector of its minimum image (:mod:`asteroid_hpc.model.periodic`), so gathers stay index-based.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from .periodic import PeriodicImages, as_cells, wrap_into_cell


@dataclass
class NeighborGraph:
    """Padded neighbour lists of a batch of frames.

    ``index`` [B, N, K] long: neighbour atom indices, nearest first (each atom lists itself, at distance 0);
    ``mask`` [B, N, K] bool: True for real neighbours, False for padding (padding indices point at
    the atom itself so gathers stay in range). ``shift`` [B, N, K, 3] Å (periodic cells only, else None):
    the lattice vector that makes x_j − x_i + shift the pair's minimum image (zero for padding).
    """

    index: Tensor
    mask: Tensor
    shift: Optional[Tensor] = None

    def to(self, device: torch.device, shift_dtype: Optional[torch.dtype] = None) -> "NeighborGraph":
        return NeighborGraph(self.index.to(device), self.mask.to(device),
                             None if self.shift is None else self.shift.to(device, shift_dtype))

    def rows(self, rows) -> "NeighborGraph":
        """The lists of the systems ``rows`` (any index of the batch dimension: a tensor, a slice)."""
        return NeighborGraph(self.index[rows], self.mask[rows], None if self.shift is None else self.shift[rows])

    def repeat_frames(self, frames: int) -> "NeighborGraph":
        """Each system's lists repeated for its ``frames`` frames: [B, ...] -> [B·frames, ...]."""
        return NeighborGraph(*(None if t is None else t.repeat_interleave(frames, dim=0)
                               for t in (self.index, self.mask, self.shift)))

    @property
    def max_neighbors(self) -> int:
        return int(self.index.shape[-1])


def finite_stand_in(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``coords`` [B, N, 3] with every system that holds a non-finite coordinate replaced by a finite one,
    the indices of those systems). A rollout that came apart must not stop the search for the others: its
    stand-in's lists are then replaced by :func:`isolate_rows`."""
    broken = np.flatnonzero(~np.isfinite(coords).all(axis=(1, 2)))
    if not len(broken):
        return coords, broken
    finite = np.flatnonzero(np.isfinite(coords).all(axis=(1, 2)))
    stand_in = coords.copy()
    stand_in[broken] = coords[finite[0]] if len(finite) else np.arange(coords.shape[1])[:, None] * [1e6, 0.0, 0.0]
    return stand_in, broken


def isolate_rows(graph: NeighborGraph, rows: np.ndarray) -> NeighborGraph:
    """``graph`` with systems ``rows`` given no neighbour but each atom itself (their forecast is lost anyway)."""
    if not len(rows):
        return graph
    index, mask = graph.index.clone(), graph.mask.clone()
    rows = torch.as_tensor(rows, device=index.device)
    index[rows] = torch.arange(index.shape[1], device=index.device).view(1, -1, 1)
    mask[rows] = False
    mask[rows, :, 0] = True
    shift = None if graph.shift is None else graph.shift.clone()
    if shift is not None:
        shift[rows] = 0
    return NeighborGraph(index, mask, shift)


def spatial_order(positions: Tensor, cell: Optional[Tensor] = None) -> Tensor:
    """A permutation [N] that puts atoms close in space close in memory (the k-d tree's leaf order) of
    ``positions`` [N, 3], anywhere in space; with a ``cell`` [3, 3], of the positions wrapped into it (the
    identity for positions that are not all finite)."""
    coords = positions.detach().cpu().double().numpy()
    if not np.isfinite(coords).all():
        return torch.arange(len(coords), device=positions.device)
    if cell is not None:
        coords = wrap_into_cell(coords, cell.detach().cpu().double().numpy())[0]
    tree = cKDTree(coords)
    return torch.from_numpy(tree.indices.astype(np.int64)).to(positions.device)


def radius_graph(positions: Tensor | np.ndarray, cutoff_angstrom: float, max_neighbors: int,
                 cell: Optional[Tensor | np.ndarray] = None) -> NeighborGraph:
    """Neighbours within ``cutoff_angstrom`` (self included), at most ``max_neighbors`` nearest per atom.

    ``positions`` is [N, 3] or [B, N, 3] in Å (any device; the search runs on CPU with cKDTree,
    querying in tree order, measured linear in N up to 4·10^5 atoms). Returns a :class:`NeighborGraph` on the device of ``positions`` with a
    leading batch dimension. A caller holding halo atoms passes owned + halo positions here. With a
    periodic ``cell`` ([3, 3] or [B, 3, 3] Å) the neighbours are minimum images, with their shifts.
    """
    device = positions.device if isinstance(positions, Tensor) else torch.device("cpu")
    coords = positions.detach().cpu().double().numpy() if isinstance(positions, Tensor) else np.asarray(positions, float)
    if coords.ndim == 2:
        coords = coords[None]
    coords, broken = finite_stand_in(coords)
    batch, n_atoms, _ = coords.shape
    width = min(max_neighbors, n_atoms)
    if cell is not None:
        dtype = positions.dtype if isinstance(positions, Tensor) else torch.float64
        return isolate_rows(_periodic_radius_graph(coords, as_cells(cell, batch, dtype=torch.float64).cpu().numpy(),
                                                   cutoff_angstrom, width), broken).to(device, dtype)
    index = np.empty((batch, n_atoms, width), dtype=np.int64)
    mask = np.empty((batch, n_atoms, width), dtype=bool)
    for b in range(batch):
        tree = cKDTree(coords[b])
        order = tree.indices  # query in the tree's own order: cache-friendly, linear time in N
        dist, idx = np.empty((n_atoms, width)), np.empty((n_atoms, width), dtype=np.int64)
        found_dist, found_idx = tree.query(coords[b][order], k=width, distance_upper_bound=cutoff_angstrom)
        dist[order], idx[order] = found_dist.reshape(n_atoms, width), found_idx.reshape(n_atoms, width)
        valid = np.isfinite(dist)
        self_index = np.arange(n_atoms)[:, None]
        index[b] = np.where(valid, idx, self_index)
        mask[b] = valid
    return isolate_rows(NeighborGraph(torch.from_numpy(index).to(device), torch.from_numpy(mask).to(device)), broken)


def _periodic_radius_graph(coords: np.ndarray, cells: np.ndarray, cutoff_angstrom: float, width: int) -> NeighborGraph:
    """:func:`radius_graph` of ``coords`` [B, N, 3] in ``cells`` [B, 3, 3] (float64, on the host)."""
    index = np.empty(coords.shape[:2] + (width,), dtype=np.int64)
    mask = np.empty(index.shape, dtype=bool)
    shift = np.empty(index.shape + (3,))
    for b in range(len(coords)):
        dist, index[b], lattice = PeriodicImages(coords[b], cells[b], cutoff_angstrom).query(width, cutoff_angstrom)
        mask[b], shift[b] = np.isfinite(dist), lattice @ cells[b]
    return NeighborGraph(torch.from_numpy(index), torch.from_numpy(mask), torch.from_numpy(shift))
