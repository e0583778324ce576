"""Optimal rigid superposition (Kabsch) and RMSD of atom sets ``[..., N, 3]`` in Å, batched over the leading
axes; results are NumPy float64."""

from __future__ import annotations

import numpy as np


def rmsd(coordinates, reference) -> np.ndarray:
    """Root-mean-square deviation over atoms without superposition, in Å: [..., N, 3] -> [...]."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return np.sqrt(((coordinates - reference) ** 2).sum(axis=-1).mean(axis=-1))


def kabsch_rotation(coordinates, reference) -> np.ndarray:
    """The proper rotation (det +1) [..., 3, 3] that best turns ``coordinates`` [..., N, 3] onto ``reference``
    [..., N, 3] about their centroids (Kabsch algorithm, batched), in the row-vector convention:
    (coordinates − centroid) @ rotation ≈ reference − its centroid."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), coordinates.shape)
    p = coordinates - coordinates.mean(axis=-2, keepdims=True)
    q = reference - reference.mean(axis=-2, keepdims=True)
    u, _, vt = np.linalg.svd(np.swapaxes(p, -1, -2) @ q)  # of the 3 x 3 covariance
    sign = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
    correction = np.ones(u.shape[:-2] + (3,))
    correction[..., -1] = sign  # flip the weakest axis when the best orthogonal map is a reflection
    return (u * correction[..., None, :]) @ vt


def kabsch_superpose(coordinates, reference) -> np.ndarray:
    """``coordinates`` [..., N, 3] moved onto ``reference`` [..., N, 3] by the translation and proper
    rotation (det +1) that minimise the RMSD (Kabsch algorithm, batched over the leading axes)."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    reference = np.broadcast_to(np.asarray(reference, dtype=np.float64), coordinates.shape)
    rotation = kabsch_rotation(coordinates, reference)
    centred = coordinates - coordinates.mean(axis=-2, keepdims=True)
    return centred @ rotation + reference.mean(axis=-2, keepdims=True)


def kabsch_rmsd(coordinates, reference) -> np.ndarray:
    """RMSD in Å after optimal superposition (translation + rotation) of ``coordinates`` onto
    ``reference``: [..., N, 3] -> [...]."""
    return rmsd(kabsch_superpose(coordinates, reference), reference)
