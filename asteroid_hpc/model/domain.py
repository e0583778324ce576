"""The model's domain seam: which part of the system a forward pass holds, and how it meets the rest.

A :class:`Domain` answers the four questions on which a pass over *part* of a system differs from a pass
over the whole of it:

- ``owned_mask``: which of the local atoms this domain owns (the others are a halo copied from other
  domains); None when it owns them all. Only owned atoms feed the global tokens.
- ``global_reduce``: combines the global-token gather's softmax statistics (float64 partial sums, see
  :mod:`asteroid_hpc.model.spatial`) over all domains.
- ``centroid``: the window's centroid of the whole system.
- ``after_spatial_block``: what happens to the features (and attention vectors) after each spatial block,
  e.g. the halo exchange that keeps halo atoms exact at every layer.

:class:`WholeSystem` is the default: the pass holds every atom and nothing crosses a boundary. The
ensemble's spatial decomposition (:class:`asteroid_hpc.ensemble.domains.DomainContext`) implements the
same interface. In a periodic box the model is given the cell and its local atoms (owned + halo) in their
own coordinates: every relative vector is then a minimum image, so a halo only has to hold the atoms within
the cutoff of the domain by minimum-image distance (across the faces too); the centroid is then only the
numerical origin of the positions.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from torch import Tensor

from .spatial import SoftmaxStats, local_reduce


@runtime_checkable
class Domain(Protocol):
    """The part of a system that a forward pass holds (all shapes are of the local atoms, N of them)."""

    owned_mask: Optional[Tensor]  # [N] bool, True for owned atoms; None: every local atom is owned
    n_atoms_total: Optional[int]  # atoms of the whole system; None: the pass holds them all

    def global_reduce(self, max_logit: Tensor, sum_exp: Tensor, weighted_sum: Tensor) -> SoftmaxStats:
        """The global-token gather's softmax statistics of this domain -> those of the whole system."""
        ...

    def centroid(self, window: Tensor) -> Tensor:
        """Window [B, m, N, 3] -> centroid of the whole system over the window [B, 1, 1, 3]."""
        ...

    def after_spatial_block(self, features: Tensor, vectors: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """A spatial block's outputs [S, N, D] and [S, N, H, 3] (or None) -> those the model continues with."""
        ...


class WholeSystem:
    """The default domain: the pass holds the whole system (every atom owned, nothing to exchange)."""

    owned_mask: Optional[Tensor] = None
    n_atoms_total: Optional[int] = None
    global_reduce = staticmethod(local_reduce)  # the statistics already cover the whole system

    def centroid(self, window: Tensor) -> Tensor:
        return window.mean(dim=(1, 2), keepdim=True)

    def after_spatial_block(self, features: Tensor, vectors: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        return features, vectors


WHOLE_SYSTEM = WholeSystem()
