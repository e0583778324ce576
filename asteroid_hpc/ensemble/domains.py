"""Spatial domain decomposition of one member over the ranks of its group.

Every rank of the group holds the member's whole window (m × N × 3 coordinates, small next to the model's
activations) and runs the model on its *local* atoms only: the atoms it owns plus a halo. Per pass:

- Ownership: slabs along the window's longest axis (last frame), with equal atom counts.
- Halo: every atom within the model's cutoff (along that axis, a superset of the cutoff sphere) of the
  slab. So each owned atom sees all of its neighbours, and its neighbour list (the ``max_neighbors``
  nearest within the cutoff, built by the model from the local atoms) equals the one of the whole system.
- After every spatial block (the model calls ``after_spatial_block``) the halo atoms' features (and
  attention vectors) are replaced by those their owners computed (``halo_exchange``, an all-to-all in the
  group). So every local atom is exact at every layer however many spatial layers and decoder steps the
  model has: the halo needs one cutoff only.
- The global tokens gather from owned atoms only (``owned_mask``) and the softmax statistics of all
  domains are merged (``global_reduce``); the window centroid is a sum over owned atoms, reduced in float64.
- Constraint groups (molecules whose distances are held: rigid waters, X–H bonds) are completed in the
  halo, so each rank projects every group it holds as the whole system does (the halo atoms' steps equal
  their owners' before the projection, since their features are).
- After the pass the owners' forecasts are all-gathered, so every rank again holds the whole window.

:class:`DomainContext` is the model's :class:`~asteroid_hpc.model.domain.Domain` for one of several domains;
:class:`SingleDomain` the one for a group of one rank. In a periodic box (the model is then given the cell)
the slabs are cut across the box's widest pair of faces in wrapped coordinates and the halos reach across
the faces (:func:`periodic_slab_coordinates`); the local atoms keep their own (unwrapped) coordinates, since
the model takes the minimum image of every relative vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..model.domain import WholeSystem
from ..model.spatial import SoftmaxStats, merge_softmax_partials

CUTOFF_MARGIN = 1.0 + 1e-6  # the halo errs on the side of including an atom at the cutoff


@dataclass
class Decomposition:
    """Local atoms of every domain (global indices: owned first, then halo) and the halo routing."""

    local: list[np.ndarray]
    n_owned: list[int]
    send: list[list[np.ndarray]]  # send[s][d]: positions in s's local arrays of the atoms s sends to d
    recv: list[list[np.ndarray]]  # recv[d][s]: positions in d's local arrays where they go

    @property
    def domains(self) -> int:
        return len(self.local)

    def owned(self, domain: int) -> np.ndarray:
        return self.local[domain][:self.n_owned[domain]]


def decompose(positions: np.ndarray, domains: int, cutoff_angstrom: float, cell: Optional[np.ndarray] = None,
              groups: Optional[np.ndarray] = None) -> Decomposition:
    """Slabs of equal atom count along the longest axis of ``positions`` [N, 3], with cutoff halos.

    ``positions`` [B, N, 3] (a batch of members, the same atoms): the slabs are the first member's, and each
    domain's halo is the union of every member's, so each member's owned atoms find all their neighbours
    among the local atoms (a halo atom more than needed is harmless: its rows are the owners' after every
    spatial block). With one member this is exactly the [N, 3] decomposition. In a periodic box (``cell``
    [3, 3], vectors as rows) the slabs and halos are periodic (:func:`periodic_slab_coordinates`). ``groups``
    [N] (constraint groups, −1 for none: :meth:`~asteroid_hpc.model.constraints.Constraints.groups`): every
    group with an atom among a domain's local atoms is completed in its halo."""
    batch = positions[None] if positions.ndim == 2 else positions
    n_atoms = batch.shape[1]
    if n_atoms < domains:
        raise ValueError(f"{n_atoms} atoms cannot be split into {domains} domains")
    if cell is None:
        axis = int(np.argmax(np.ptp(batch[0], axis=0)))
        coordinates, width = batch[:, :, axis].astype(np.float64), None  # [B, N]
    else:
        coordinates, width = periodic_slab_coordinates(batch, cell)
    order = np.argsort(coordinates[0], kind="stable")
    bounds = np.linspace(0, n_atoms, domains + 1).round().astype(np.int64)
    owner = np.empty(n_atoms, dtype=np.int64)
    reach = cutoff_angstrom * CUTOFF_MARGIN
    owned, halos = [], []
    for d in range(domains):
        members = order[bounds[d]:bounds[d + 1]]
        owner[members] = d
        owned.append(np.sort(members))
    for d in range(domains):
        near = np.zeros(n_atoms, dtype=bool)
        for member in coordinates:  # the owned slab's extent in each member's coordinates
            near |= _near_slab(member, owned[d], reach, width)
        halo = np.flatnonzero(near & (owner != d))
        halos.append(halo if groups is None else _complete_groups(owned[d], halo, groups))
    send = [[np.empty(0, dtype=np.int64) for _ in range(domains)] for _ in range(domains)]
    recv = [[np.empty(0, dtype=np.int64) for _ in range(domains)] for _ in range(domains)]
    for d in range(domains):
        halo_owner = owner[halos[d]]
        for s in range(domains):
            if s != d:
                from_s = np.flatnonzero(halo_owner == s)
                recv[d][s] = len(owned[d]) + from_s
                send[s][d] = np.searchsorted(owned[s], halos[d][from_s])
    local = [np.concatenate([owned[d], halos[d]]) for d in range(domains)]
    return Decomposition(local, [len(o) for o in owned], send, recv)


def _complete_groups(owned: np.ndarray, halo: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``halo`` plus the atoms of every constraint group one of the domain's atoms belongs to (sorted)."""
    touched = np.unique(groups[np.concatenate([owned, halo])])
    members = np.flatnonzero(np.isin(groups, touched[touched >= 0]))
    return np.union1d(halo, np.setdiff1d(members, owned))


def periodic_slab_coordinates(batch: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, float]:
    """Each atom's position [B, N] (Å, in [0, width)) across the box's widest pair of faces, and that width.

    Slabs are cut between planes parallel to those faces, in the wrapped (fractional) coordinate. The
    perpendicular distance between two atoms' planes, taken around the box, never exceeds their
    minimum-image distance, so a halo of every atom within the cutoff of a slab in this coordinate holds all
    the owned atoms' minimum-image neighbours, across the faces too."""
    from ..model.periodic import perpendicular_widths

    cell = np.asarray(cell, dtype=np.float64)
    widths = perpendicular_widths(cell)
    axis = int(np.argmax(widths))
    fraction = batch.astype(np.float64) @ np.linalg.inv(cell)[:, axis]
    width = float(widths[axis])
    return (fraction - np.floor(fraction)) * width, width


def _near_slab(coordinate: np.ndarray, owned: np.ndarray, reach: float, width: Optional[float]) -> np.ndarray:
    """[N] True for the atoms within ``reach`` of the extent of the ``owned`` atoms' ``coordinate`` [N]; around
    a box of ``width`` (periodic: the owned atoms' shortest covering arc) when it is not None."""
    values = coordinate[owned]
    if width is None:
        return (coordinate >= values.min() - reach) & (coordinate <= values.max() + reach)
    ordered = np.sort(values)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + width]))  # the gap after each owned atom, around
    k = int(np.argmax(gaps))
    start = ordered[(k + 1) % len(ordered)]  # the arc runs from after the largest gap ...
    length = width - gaps[k]  # ... to just before it
    after = np.mod(coordinate - start, width)  # each atom's distance along the box from the arc's start
    outside = np.minimum(after - length, width - after)
    return (after <= length) | (outside <= reach)


class SingleDomain(WholeSystem):
    """The whole system on one rank, its centroid summed in float64 as :class:`DomainContext` sums it, so
    that 1 and many domains agree to the last bit of the centroid rather than to float32 summation error."""

    def centroid(self, window: Tensor) -> Tensor:
        return window.double().mean(dim=(1, 2), keepdim=True).to(window.dtype)


class DomainContext:
    """This rank's domain: the model's pass over its local atoms is exact (see the module doc).
    ``whole_groups``: the decomposition completed the constraint groups in the halos (projection allowed)."""

    def __init__(self, group, decomposition: Decomposition, n_atoms_total: int, device: str | torch.device = "cpu",
                 whole_groups: bool = False):
        self.group = group
        self.whole_groups = whole_groups
        self.parts = decomposition
        self.domain = group.rank
        self.n_atoms_total = n_atoms_total
        n_local = len(decomposition.local[self.domain])
        self.owned_mask = torch.zeros(n_local, dtype=torch.bool, device=device)
        self.owned_mask[:decomposition.n_owned[self.domain]] = True

    def halo_exchange(self, x: Tensor) -> Tensor:
        """Replace the halo rows of ``x`` [S, N_local, ...] by the owners' rows."""
        me = self.domain
        array = x.detach().cpu().numpy()
        outgoing = [np.ascontiguousarray(array[:, rows]) if d != me else None
                    for d, rows in enumerate(self.parts.send[me])]
        incoming = self.group.comm.alltoall(outgoing)
        out = x.clone()
        for s, rows in enumerate(self.parts.recv[me]):
            if s != me and len(rows):
                out[:, torch.from_numpy(rows)] = torch.from_numpy(incoming[s]).to(out.device)
        return out

    def global_reduce(self, max_logit: Tensor, sum_exp: Tensor, weighted_sum: Tensor) -> SoftmaxStats:
        return merge_softmax_partials(self.group.allgather((max_logit, sum_exp, weighted_sum)))

    def centroid(self, window: Tensor) -> Tensor:
        """Centroid of the whole system over the window: owned-atom sums reduced across the group."""
        owned = window[:, :, :self.parts.n_owned[self.domain]].double()
        total = self.group.allreduce(owned.sum(dim=(1, 2)).cpu().numpy())
        frames = window.shape[1]
        centre = torch.from_numpy(total / (frames * self.n_atoms_total)).to(window.dtype).to(window.device)
        return centre.view(window.shape[0], 1, 1, 3)

    def after_spatial_block(self, features: Tensor, vectors: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """The halo rows of a spatial block's outputs, replaced by their owners' rows."""
        return self.halo_exchange(features), None if vectors is None else self.halo_exchange(vectors)
