"""Neighbour lists reused across passes with a Verlet skin, as MD engines keep theirs.

A *candidate* list holds every atom within ``cutoff + skin`` of each atom, built with cKDTree on the
host. While no atom has moved more than ``skin / 2`` since that build, every pair now within the cutoff
is among the candidates (two atoms close in by at most ``skin`` together), so the model's list - the
``max_neighbors`` nearest within the cutoff, nearest first - is selected from the candidates on the
device from the current positions, without a tree. Distances are compared in float64 as
:func:`~asteroid_hpc.model.graph.radius_graph` compares them, so the selected sets are the same; only
the order of exact ties may differ (the attention's sum over neighbours then differs in the last bits).

In a periodic cell each candidate pair keeps the lattice vector of its minimum image found at the build
(:mod:`asteroid_hpc.model.periodic`): with continuous (unwrapped) coordinates it stays the pair's minimum
image while the list is valid, and the selection adds it to x_j − x_i. A new cell rebuilds the list.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from .graph import NeighborGraph, finite_stand_in, isolate_rows
from .periodic import PeriodicImages, as_cells

FIRST_CANDIDATE_WIDTH = 32  # candidates per atom tried first; doubled until every atom's fit


def candidate_lists(positions: Tensor, radius_angstrom: float, cell: Optional[Tensor] = None) -> NeighborGraph:
    """Every atom within ``radius_angstrom`` of each atom (self included) of ``positions`` [B, N, 3], padded
    to the largest count (padding masked, pointing at the atom itself); minimum images with their shifts in a
    periodic ``cell`` ([3, 3] or [B, 3, 3] Å)."""
    coords, broken = finite_stand_in(positions.detach().cpu().double().numpy())
    batch, n_atoms, _ = coords.shape
    if cell is not None:
        return isolate_rows(_periodic_candidates(coords, as_cells(cell, batch, dtype=torch.float64).cpu().numpy(),
                                                 radius_angstrom), broken).to(positions.device, positions.dtype)
    trees = [cKDTree(coords[b]) for b in range(batch)]
    width = min(FIRST_CANDIDATE_WIDTH, n_atoms)
    while True:
        found = [tree.query(coords[b], k=width, distance_upper_bound=radius_angstrom)
                 for b, tree in enumerate(trees)]
        dist = np.stack([d.reshape(n_atoms, width) for d, _ in found])
        if width == n_atoms or not np.isfinite(dist[..., -1]).any():
            break
        width = min(2 * width, n_atoms)
    idx = np.stack([i.reshape(n_atoms, width) for _, i in found])
    valid = np.isfinite(dist)
    index = np.where(valid, idx, np.arange(n_atoms)[None, :, None])
    return isolate_rows(NeighborGraph(torch.from_numpy(index).to(positions.device),
                                      torch.from_numpy(valid).to(positions.device)), broken)


def _periodic_candidates(coords: np.ndarray, cells: np.ndarray, radius_angstrom: float) -> NeighborGraph:
    """:func:`candidate_lists` of ``coords`` [B, N, 3] in ``cells`` [B, 3, 3] (float64, on the host)."""
    batch, n_atoms, _ = coords.shape
    images = [PeriodicImages(coords[b], cells[b], radius_angstrom) for b in range(batch)]
    width = min(FIRST_CANDIDATE_WIDTH, n_atoms)
    while True:
        found = [image.query(width, radius_angstrom) for image in images]
        if width == n_atoms or not any(np.isfinite(dist[:, -1]).any() for dist, _, _ in found):
            break
        width = min(2 * width, n_atoms)
    index = np.stack([idx for _, idx, _ in found])
    valid = np.stack([np.isfinite(dist) for dist, _, _ in found])
    shift = np.stack([lattice @ cells[b] for b, (_, _, lattice) in enumerate(found)])
    return NeighborGraph(torch.from_numpy(index), torch.from_numpy(valid), torch.from_numpy(shift))


def select_within(positions: Tensor, candidates: NeighborGraph, cutoff_angstrom: float,
                  max_neighbors: int) -> NeighborGraph:
    """The ``max_neighbors`` nearest candidates within ``cutoff_angstrom`` of each atom (nearest first), as
    :func:`~asteroid_hpc.model.graph.radius_graph` would list them for ``positions`` [B, N, 3] (with the
    candidates' shifts in a periodic cell)."""
    batch, n_atoms, _ = positions.shape
    width = min(max_neighbors, n_atoms)
    coords = positions.detach().double()
    flat = (candidates.index + torch.arange(batch, device=positions.device).view(-1, 1, 1) * n_atoms).reshape(-1)
    neighbours = coords.reshape(-1, 3)[flat].view(*candidates.index.shape, 3)
    if candidates.shift is not None:
        neighbours = neighbours + candidates.shift.double()
    distance = torch.linalg.vector_norm(neighbours - coords.unsqueeze(2), dim=-1)
    distance = distance.masked_fill(~candidates.mask | (distance >= cutoff_angstrom), float("inf"))  # strict, as cKDTree
    if distance.shape[-1] < width:  # fewer candidates than list slots: pad with masked slots
        pad = width - distance.shape[-1]
        distance = torch.nn.functional.pad(distance, (0, pad), value=float("inf"))
        index = torch.nn.functional.pad(candidates.index, (0, pad))
        shift = None if candidates.shift is None else torch.nn.functional.pad(candidates.shift, (0, 0, 0, pad))
    else:
        index, shift = candidates.index, candidates.shift
    nearest, order = torch.sort(distance, dim=-1, stable=True)
    nearest, order = nearest[..., :width], order[..., :width]
    mask = torch.isfinite(nearest)
    self_index = torch.arange(n_atoms, device=positions.device).view(1, -1, 1)
    if shift is not None:
        shift = torch.gather(shift, 2, order.unsqueeze(-1).expand(-1, -1, -1, 3)).masked_fill(~mask.unsqueeze(-1), 0.0)
    return NeighborGraph(torch.where(mask, torch.gather(index, -1, order), self_index), mask, shift)


class VerletNeighbors:
    """The neighbour list of successive positions of the same atoms, rebuilt only when needed (module doc);
    ``rebuilds`` counts the candidate builds."""

    def __init__(self, cutoff_angstrom: float, max_neighbors: int, skin_angstrom: float):
        if skin_angstrom <= 0:
            raise ValueError("a Verlet list needs a skin > 0")
        self.cutoff, self.max_neighbors, self.skin = cutoff_angstrom, max_neighbors, skin_angstrom
        self.rebuilds = 0
        self._built_at: Optional[Tensor] = None
        self._cell: Optional[Tensor] = None
        self._candidates: Optional[NeighborGraph] = None

    def graph(self, positions: Tensor, cell: Optional[Tensor] = None) -> NeighborGraph:
        """The neighbour list of ``positions`` [B, N, 3] (the same B systems as the previous call, or a
        subset given by :meth:`keep`), in a periodic ``cell`` ([3, 3] or [B, 3, 3] Å) if given."""
        cell = None if cell is None else as_cells(cell, positions.shape[0], dtype=torch.float64).detach().cpu().clone()
        if self._needs_build(positions, cell):
            self._built_at, self._cell = positions.detach().clone(), cell
            self._candidates = candidate_lists(positions, self.cutoff + self.skin, cell)
            self.rebuilds += 1
        return select_within(positions, self._candidates, self.cutoff, self.max_neighbors)

    def keep(self, rows: Tensor) -> None:
        """Keep the lists of systems ``rows`` (indices into the batch) only: the others left the batch."""
        if self._built_at is not None:
            self._built_at = self._built_at[rows]
            self._cell = None if self._cell is None else self._cell[rows.cpu() if isinstance(rows, Tensor) else rows]
            self._candidates = self._candidates.rows(rows)

    def _needs_build(self, positions: Tensor, cell: Optional[Tensor] = None) -> bool:
        if self._built_at is None or self._built_at.shape != positions.shape:
            return True
        if (cell is None) != (self._cell is None) or (cell is not None and not torch.equal(cell, self._cell)):
            return True
        moved = torch.linalg.vector_norm((positions.detach() - self._built_at).double(), dim=-1)
        return not bool(moved.max() <= self.skin / 2)  # a NaN (a member that came apart) rebuilds too
