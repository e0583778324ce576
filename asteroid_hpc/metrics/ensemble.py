"""Scores of an ensemble forecast against one reference trajectory.

Shapes: ``members`` is ``[M, H, N, 3]`` (M members, H lead times, N atoms, Å), ``reference`` is
``[H, N, 3]``. Torch tensors are accepted. All results are NumPy float64.
"""

from __future__ import annotations

import numpy as np

from ..geometry import kabsch_rmsd, rmsd


def _members(members, reference=None) -> tuple[np.ndarray, np.ndarray | None]:
    members = np.asarray(members, dtype=np.float64)
    if members.ndim != 4 or members.shape[-1] != 3 or members.shape[0] < 1:
        raise ValueError(f"members must be [M, H, N, 3] with M >= 1, got {list(members.shape)}")
    if reference is None:
        return members, None
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != members.shape[1:]:
        raise ValueError(f"reference must be [H, N, 3] = {list(members.shape[1:])}, got {list(reference.shape)}")
    return members, reference


def ensemble_mean(members) -> np.ndarray:
    """Mean position of every atom over the members: [H, N, 3] in Å."""
    return _members(members)[0].mean(axis=0)


def ensemble_spread_per_atom(members) -> np.ndarray:
    """Spread of each atom per lead time: the root-mean-square distance of the members from the ensemble
    mean, sqrt(1/M Σ_m |x_m − x̄|²), in Å: shape [H, N]."""
    members = _members(members)[0]
    deviation = members - members.mean(axis=0, keepdims=True)
    return np.sqrt((deviation ** 2).sum(axis=-1).mean(axis=0))


def rmsd_per_lead_time(members, reference, *, superpose: bool) -> np.ndarray:
    """RMSD of every member against the reference at each lead time, in Å: [M, H]. With
    ``superpose=True`` each member frame is first superposed onto the reference frame (Kabsch)."""
    members, reference = _members(members, reference)
    return kabsch_rmsd(members, reference) if superpose else rmsd(members, reference)


def crps_per_lead_time(members, reference) -> np.ndarray:
    """Continuous ranked probability score per lead time in Å, averaged over atoms and x, y, z: [H].

    For each scalar coordinate, CRPS = E|X − y| − ½ E|X − X'| with X, X' drawn from the ensemble's
    empirical distribution (the standard ensemble estimator, pairs over all M² member combinations).
    For one member it reduces to the absolute error; lower is better.
    """
    members, reference = _members(members, reference)
    return coordinate_crps(members, reference).mean(axis=(1, 2))


def coordinate_crps(members, observed) -> np.ndarray:
    """The ensemble CRPS of every scalar: ``members`` [M, ...] (the first axis the members), ``observed`` [...]
    (any shape, the members' shape without the first axis); the estimator of :func:`crps_per_lead_time`
    (E|X − y| − ½ E|X − X'| over the M² member pairs, the M zero self-pairs included), float64, same units."""
    members = np.asarray(members, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if members.ndim < 1 or members.shape[0] < 1 or observed.shape != members.shape[1:]:
        raise ValueError(f"members must be [M, ...] with M >= 1 and observed their shape without M, got "
                         f"{list(members.shape)} and {list(observed.shape)}")
    n_members = members.shape[0]
    skill = np.abs(members - observed).mean(axis=0)
    # Σ_ij |x_i − x_j| = 2 Σ_k (2k − M + 1) x_(k) for sorted x (0-based k): O(M log M) instead of O(M²)
    ordered = np.sort(members, axis=0)
    weights = (2 * np.arange(n_members) - n_members + 1).reshape(-1, *([1] * observed.ndim))
    mean_pair_distance = 2.0 * (weights * ordered).sum(axis=0) / n_members ** 2
    return skill - 0.5 * mean_pair_distance
