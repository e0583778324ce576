"""Holding the distances MD held fixed: constraint projection of forecast frames (as SHAKE does for positions).

An MD engine with constraints (rigid water: SETTLE; bonds to hydrogen: SHAKE/LINCS) keeps those distances
exact; a forecast made of free displacements does not, and its errors in them grow over a rollout. With
:class:`Constraints`, every forecast step is projected back onto them before the next step sees it.

Which distances: :func:`find_constraints` takes candidate pairs (the topology's bonds and 1–3 pairs, e.g.
H–H of a water) and keeps those whose length is the same in every frame of every history window, to within
``CONSTANT_LENGTH_ANGSTROM``: what the engine held fixed (its constraint tolerance, ~1e-5 relative, and
float32 files leave ~1e-5 Å), never a flexible bond (thermal vibration moves a bond by ~0.01–0.05 Å within
a few frames). An unconstrained trajectory (e.g. xTB MD) gives none, and nothing changes.

Projection (:func:`project`): the mass-weighted correction along each pair's current vector, as SHAKE
iterates it (Gauss–Seidel), but vectorised: the pairs are coloured so that no two of one colour share an atom
(a water's triangle takes 3 colours, a CH3 group 3), each colour is corrected at once, colour after colour,
and sweeps repeat until every length is within ``tolerance`` of its target (about 20 sweeps from 0.03 Å
errors); a pair already within it is not corrected, so each constrained group's result depends on its own
atoms only (a spatial domain holding whole groups projects them as the whole system does). Each atom moves
in inverse proportion to its mass, so a molecule's centre of mass stays put.
Periodic pairs use the minimum image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from ..errors import UserError
from .periodic import minimum_image_shift

CONSTANT_LENGTH_ANGSTROM = 1e-3  # largest range of a pair's length over a window that counts as held fixed
PROJECTION_TOLERANCE_ANGSTROM = 1e-5
MAX_ITERATIONS = 200


@dataclass(frozen=True)
class Constraints:
    """Pairs ``pairs`` [C, 2] (atom indices) held at ``lengths`` [B, C] Å (or [1, C]: the same for every
    system of a batch); ``inverse_mass`` [N] 1/amu."""

    pairs: Tensor
    lengths: Tensor
    inverse_mass: Tensor
    colours: list[Tensor]  # indices into pairs, one tensor per colour: no two pairs of a colour share an atom

    def __len__(self) -> int:
        return len(self.pairs)

    def reordered(self, order: Tensor) -> "Constraints":
        """The same constraints on atoms permuted to ``order`` (new atom k = old atom order[k])."""
        new_index = torch.argsort(order)
        return replace(self, pairs=new_index[self.pairs], inverse_mass=self.inverse_mass[order])

    def restricted(self, atoms: Tensor) -> "Constraints":
        """The constraints among ``atoms`` [n] (global indices; new atom k = old atom atoms[k]), each pair
        keeping its colour: a group whose atoms are all among them is projected exactly as in the whole
        system (:func:`project` corrects a pair only while it is off its length)."""
        atoms = torch.as_tensor(atoms, dtype=torch.long, device=self.pairs.device)
        new_index = torch.full((len(self.inverse_mass),), -1, dtype=torch.long, device=self.pairs.device)
        new_index[atoms] = torch.arange(len(atoms), device=self.pairs.device)
        kept = (new_index[self.pairs] >= 0).all(dim=1)
        renumber = torch.cumsum(kept, dim=0) - 1  # old pair index -> new pair index (where kept)
        colours = [renumber[c[kept[c]]] for c in self.colours]
        return Constraints(new_index[self.pairs[kept]], self.lengths[:, kept], self.inverse_mass[atoms],
                           [c for c in colours if len(c)])

    def groups(self) -> Tensor:
        """[N] the connected group (molecule, or constrained part of one) of each atom, −1 when unconstrained."""
        n_atoms = len(self.inverse_mass)
        label = torch.arange(n_atoms, device=self.pairs.device)
        while True:  # propagate the smallest index along the pairs until nothing changes
            smallest = torch.minimum(label[self.pairs[:, 0]], label[self.pairs[:, 1]])
            new = label.scatter_reduce(0, self.pairs[:, 0], smallest, "amin").scatter_reduce(
                0, self.pairs[:, 1], smallest, "amin")
            if torch.equal(new, label):
                break
            label = new
        constrained = torch.zeros(n_atoms, dtype=torch.bool, device=label.device)
        constrained[self.pairs.flatten()] = True
        return torch.where(constrained, label, torch.full_like(label, -1))

    def to(self, device=None, dtype=None) -> "Constraints":
        return Constraints(self.pairs.to(device), self.lengths.to(device=device, dtype=dtype),
                           self.inverse_mass.to(device=device, dtype=dtype), [c.to(device) for c in self.colours])


def _colours(pairs: Tensor) -> list[Tensor]:
    """A greedy edge colouring of ``pairs`` [C, 2]: index tensors of the pairs of each colour."""
    taken: dict[int, set[int]] = {}  # atom -> colours of its pairs so far
    colour_of = []
    for i, j in pairs.tolist():
        used = taken.setdefault(i, set()) | taken.setdefault(j, set())
        colour = next(c for c in range(len(used) + 1) if c not in used)
        taken[i].add(colour)
        taken[j].add(colour)
        colour_of.append(colour)
    colour_of = torch.as_tensor(colour_of, dtype=torch.long, device=pairs.device)
    return [torch.nonzero(colour_of == c).flatten() for c in range(int(colour_of.max()) + 1)]


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
    return Constraints(pairs[held], lengths[:, -1, held].to(history.dtype), (1.0 / masses).to(history.dtype),
                       _colours(pairs[held]))


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
    batch, n_atoms, _ = positions.shape
    x = positions.to(torch.float64, copy=True)  # corrected in place below, as rows [B·N, 3]
    pairs, target = constraints.pairs, constraints.lengths.double()
    weights = constraints.inverse_mass.double()
    share_i = weights[pairs[:, 0]] / (weights[pairs[:, 0]] + weights[pairs[:, 1]])  # [C]
    image = _pair_vectors(x, pairs, _double(cell)) - _pair_vectors(x, pairs, None)  # lattice shifts, fixed
    rows = x.view(batch * n_atoms, 3)
    first_row = (torch.arange(batch, device=x.device) * n_atoms).view(-1, 1)
    # per colour, once: its pairs' rows (every system), lattice shifts, lengths and each end's share
    colours = [((first_row + pairs[c, 0]).flatten(), (first_row + pairs[c, 1]).flatten(), image[:, c].reshape(-1, 3),
                target[:, c].expand(batch, -1).flatten(), share_i[c].repeat(batch).unsqueeze(-1),
                (share_i[c] - 1.0).repeat(batch).unsqueeze(-1)) for c in constraints.colours]
    for _ in range(MAX_ITERATIONS):
        converged = True
        for i, j, shift, length_target, share_of_i, minus_share_of_j in colours:  # distinct atoms within a colour
            vectors = rows.index_select(0, j) - rows.index_select(0, i) + shift  # [B·c, 3]
            length = torch.linalg.vector_norm(vectors, dim=-1).clamp_min(1e-12)
            excess = length - length_target
            off = excess.abs() > tolerance  # only these move: a group's result never depends on other groups
            converged &= not bool(off.any())  # NaN rows (blown up) never hold it back
            step = torch.where(off, excess / length, 0.0).unsqueeze(-1) * vectors
            rows.index_add_(0, i, step * share_of_i)  # each pair takes its whole correction
            rows.index_add_(0, j, step * minus_share_of_j)
        if converged:
            break
    return x.to(positions.dtype)


def held_steps(displacements: Tensor, last: Tensor, constraints: Constraints, cell: Optional[Tensor]) -> Tensor:
    """Forecast steps given as displacements [B, K, N, 3] from the last frame ``last`` [B, 1, N, 3], each
    projected onto ``constraints``; returned as displacements again."""
    batch, steps, n_atoms, _ = displacements.shape
    frames = (displacements + last).reshape(batch * steps, n_atoms, 3)
    lengths = constraints.lengths
    lengths = lengths if len(lengths) == 1 else lengths.repeat_interleave(steps, dim=0)
    box = None if cell is None else cell.repeat_interleave(steps, dim=0)
    held = project(frames, replace(constraints, lengths=lengths), box)
    return held.view(batch, steps, n_atoms, 3) - last
