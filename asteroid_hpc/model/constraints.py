"""Holding the distances MD held fixed: constraint projection of forecast frames (as SHAKE does for positions).

An MD engine with constraints (rigid water: SETTLE; bonds to hydrogen: SHAKE/LINCS) keeps those distances
exact; a forecast made of free displacements does not, and its errors in them grow over a rollout. With
:class:`Constraints`, every forecast step is projected back onto them before the next step sees it.

Which distances: :func:`find_constraints` takes candidate pairs (the topology's bonds and 1–3 pairs, e.g.
H–H of a water) and keeps those whose length is the same in every frame of every history window, to within
``CONSTANT_LENGTH_ANGSTROM``: what the engine held fixed (its constraint tolerance, ~1e-5 relative, and
float32 files leave ~1e-5 Å), never a flexible bond (thermal vibration moves a bond by ~0.01–0.05 Å within
a few frames). An unconstrained trajectory (e.g. xTB MD) gives none, and nothing changes.

Projection (:func:`project`): the mass-weighted correction along each pair's current vector, all pairs at
once (Jacobi), repeated until every length is within ``tolerance`` of its target; each atom moves in inverse
proportion to its mass, so the molecule's centre of mass stays put. Periodic pairs use the minimum image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import UserError
from .periodic import minimum_image_shift

CONSTANT_LENGTH_ANGSTROM = 1e-3  # largest range of a pair's length over a window that counts as held fixed
PROJECTION_TOLERANCE_ANGSTROM = 1e-5
MAX_ITERATIONS = 200
# Jacobi steps over pairs that share atoms (a water's triangle, a CH3 group) overshoot at full length; this
# fraction of each pair's correction converges for every such group (the largest share of one atom is 3 pairs).
RELAXATION = 0.5


@dataclass(frozen=True)
class Constraints:
    """Pairs ``pairs`` [C, 2] (atom indices) held at ``lengths`` [B, C] Å (or [1, C]: the same for every
    system of a batch); ``inverse_mass`` [N] 1/amu."""

    pairs: Tensor
    lengths: Tensor
    inverse_mass: Tensor

    def __len__(self) -> int:
        return len(self.pairs)

    def reordered(self, order: Tensor) -> "Constraints":
        """The same constraints on atoms permuted to ``order`` (new atom k = old atom order[k])."""
        new_index = torch.argsort(order)
        return Constraints(new_index[self.pairs], self.lengths, self.inverse_mass[order])

    def to(self, device=None, dtype=None) -> "Constraints":
        return Constraints(self.pairs.to(device), self.lengths.to(device=device, dtype=dtype),
                           self.inverse_mass.to(device=device, dtype=dtype))


def _pair_vectors(positions: Tensor, pairs: Tensor, cell: Optional[Tensor]) -> Tensor:
    """x_j − x_i [B, ..., C, 3] of positions [B, ..., N, 3] (minimum image with a cell [B, 3, 3])."""
    vectors = positions[..., pairs[:, 1], :] - positions[..., pairs[:, 0], :]
    return vectors if cell is None else vectors + minimum_image_shift(vectors, cell)


def find_constraints(history: Tensor, candidates, masses, cell: Optional[Tensor] = None) -> Optional[Constraints]:
    """The ``candidates`` [P, 2] whose length stays within ``CONSTANT_LENGTH_ANGSTROM`` over every frame of
    every window of ``history`` [B, m, N, 3] Å, held at each window's last-frame length; None when there are
    none. ``masses`` [N] amu; ``cell`` [B, 3, 3] for a periodic box."""
    pairs = torch.as_tensor(candidates, dtype=torch.long, device=history.device).reshape(-1, 2)
    n_atoms = history.shape[2]
    if len(pairs) == 0:
        return None
    if int(pairs.min()) < 0 or int(pairs.max()) >= n_atoms:
        raise UserError(f"constraint candidates name atoms outside the system's {n_atoms}")
    lengths = torch.linalg.vector_norm(_pair_vectors(history.double(), pairs, _double(cell)), dim=-1)  # [B, m, C]
    held = ((lengths.amax(dim=1) - lengths.amin(dim=1)) <= CONSTANT_LENGTH_ANGSTROM).all(dim=0)
    if not bool(held.any()):
        return None
    masses = torch.as_tensor(masses, dtype=torch.float64, device=history.device)
    if masses.shape != (n_atoms,) or not bool((masses > 0).all()):
        raise UserError(f"constraints need a positive mass for each of the {n_atoms} atoms")
    return Constraints(pairs[held], lengths[:, -1, held].to(history.dtype), (1.0 / masses).to(history.dtype))


def held_distances(bonds, atomic_numbers):
    """A function of (history [B, m, N, 3], cell [B, 3, 3] or None) giving the :class:`Constraints` among the
    ``bonds`` [B, 2] and their 1–3 pairs that the history holds fixed (:func:`find_constraints`), or None;
    always None without bonds."""
    if bonds is None or len(bonds) == 0:
        return lambda history, cell: None
    import numpy as np

    from ..metrics.liquid import excluded_pairs
    from ..metrics.physics import masses_amu

    candidates = np.array(sorted(excluded_pairs(bonds)), dtype=np.int64)
    masses = masses_amu(atomic_numbers)
    return lambda history, cell: find_constraints(history, candidates, masses, cell)


def _double(cell: Optional[Tensor]) -> Optional[Tensor]:
    return None if cell is None else cell.double()


def project(positions: Tensor, constraints: Constraints, cell: Optional[Tensor] = None,
            tolerance: float = PROJECTION_TOLERANCE_ANGSTROM) -> Tensor:
    """``positions`` [B, N, 3] Å moved onto the constrained lengths (module doc), in float64 internally."""
    x = positions.double()
    pairs, target = constraints.pairs, constraints.lengths.double()
    weights = constraints.inverse_mass.double()
    share_i = weights[pairs[:, 0]] / (weights[pairs[:, 0]] + weights[pairs[:, 1]])  # [C]
    image = _pair_vectors(x, pairs, _double(cell)) - _pair_vectors(x, pairs, None)  # lattice shifts, fixed
    for _ in range(MAX_ITERATIONS):
        vectors = _pair_vectors(x, pairs, None) + image  # [B, C, 3]
        length = torch.linalg.vector_norm(vectors, dim=-1).clamp_min(1e-12)
        excess = length - target
        if not bool((excess.abs() > tolerance).any()):  # NaN rows (a blown-up forecast) leave the loop at once
            break
        step = RELAXATION * (excess / length).unsqueeze(-1) * vectors  # the pair's correction, split by mass
        x = x.index_add(1, pairs[:, 0], step * share_i.view(1, -1, 1))
        x = x.index_add(1, pairs[:, 1], -step * (1.0 - share_i).view(1, -1, 1))
    return x.to(positions.dtype)


def held_steps(displacements: Tensor, last: Tensor, constraints: Constraints, cell: Optional[Tensor]) -> Tensor:
    """Forecast steps given as displacements [B, K, N, 3] from the last frame ``last`` [B, 1, N, 3], each
    projected onto ``constraints``; returned as displacements again."""
    batch, steps, n_atoms, _ = displacements.shape
    frames = (displacements + last).reshape(batch * steps, n_atoms, 3)
    lengths = constraints.lengths
    lengths = lengths if len(lengths) == 1 else lengths.repeat_interleave(steps, dim=0)
    box = None if cell is None else cell.repeat_interleave(steps, dim=0)
    held = project(frames, Constraints(constraints.pairs, lengths, constraints.inverse_mass), box)
    return held.view(batch, steps, n_atoms, 3) - last
