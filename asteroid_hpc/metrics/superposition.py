"""Optimal rigid superposition (Kabsch) and RMSD of atom sets ``[..., N, 3]`` in Å, batched over the leading
axes; results are NumPy float64."""

from __future__ import annotations

import numpy as np


def rmsd(coordinates, reference) -> np.ndarray:
    """Root-mean-square deviation over atoms without superposition, in Å: [..., N, 3] -> [...]."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return np.sqrt(((coordinates - reference) ** 2).sum(axis=-1).mean(axis=-1))


def kabsch_superpose(coordinates, reference) -> np.ndarray:
    """``coordinates`` [..., N, 3] moved onto ``reference`` [..., N, 3] by the translation and proper
    rotation (det +1) that minimise the RMSD (Kabsch algorithm, batched over the leading axes)."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), coordinates.shape)
    mobile_centre = coordinates.mean(axis=-2, keepdims=True)
    target_centre = reference.mean(axis=-2, keepdims=True)
    p, q = coordinates - mobile_centre, reference - target_centre
    covariance = np.swapaxes(p, -1, -2) @ q  # [..., 3, 3]
    u, _, vt = np.linalg.svd(covariance)
    sign = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    correction = np.ones(u.shape[:-2] + (3,))
    correction[..., -1] = sign  # flip the weakest axis when the best orthogonal map is a reflection
    rotation = (u * correction[..., None, :]) @ vt  # row-vector convention: p @ rotation ≈ q
    return p @ rotation + target_centre


def kabsch_rmsd(coordinates, reference) -> np.ndarray:
    """RMSD in Å after optimal superposition (translation + rotation) of ``coordinates`` onto
    ``reference``: [..., N, 3] -> [...]."""
    return rmsd(kabsch_superpose(coordinates, reference), reference)
