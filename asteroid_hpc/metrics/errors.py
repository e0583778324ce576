"""Deterministic forecast errors per lead time.

Shapes: a forecast and its reference are ``[S, H, N, 3]`` (S samples, H lead times, N atoms, Å).
Every function returns NumPy float64 arrays; torch tensors are accepted (converted with ``np.asarray``).
"""

from __future__ import annotations

import numpy as np

from ..geometry import kabsch_superpose

SUPERPOSE_SAMPLES = 64  # samples superposed at a time


def _pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if prediction.shape != reference.shape or prediction.ndim != 4 or prediction.shape[-1] != 3:
        raise ValueError(f"prediction and reference must both be [S, H, N, 3], got "
                         f"{list(prediction.shape)} and {list(reference.shape)}")
    return prediction, reference


def mse_per_lead_time(prediction, reference) -> np.ndarray:
    """Per-coordinate squared error in Å², averaged over samples, atoms and x, y, z: shape [H]."""
    prediction, reference = _pair(prediction, reference)
    return ((prediction - reference) ** 2).mean(axis=(0, 2, 3))


def superposed_mse_per_lead_time(prediction, reference) -> np.ndarray:
    """Per-coordinate squared error in Å² after each predicted frame is superposed onto its true frame
    (Kabsch: the best translation and rotation), averaged like :func:`mse_per_lead_time`: shape [H].
    The error of the shape alone; the raw MSE minus this is the part a rigid-body motion would remove."""
    prediction, reference = _pair(prediction, reference)
    total = np.zeros(prediction.shape[1])
    for first in range(0, len(prediction), SUPERPOSE_SAMPLES):  # bounded temporaries for large systems
        block = slice(first, first + SUPERPOSE_SAMPLES)
        squared = (kabsch_superpose(prediction[block], reference[block]) - reference[block]) ** 2
        total += squared.sum(axis=(0, 2, 3))
    return total / (len(prediction) * prediction.shape[2] * 3)


def mse_per_sample(prediction, reference) -> np.ndarray:
    """Per-coordinate squared error in Å² of each sample and lead time: shape [S, H]."""
    prediction, reference = _pair(prediction, reference)
    return ((prediction - reference) ** 2).mean(axis=(2, 3))


def displacement_per_lead_time(prediction, reference) -> np.ndarray:
    """Euclidean distance between predicted and true atom positions in Å, mean over samples and atoms: [H]."""
    prediction, reference = _pair(prediction, reference)
    return np.linalg.norm(prediction - reference, axis=-1).mean(axis=(0, 2))


def ade_fde(prediction, reference) -> tuple[float, float]:
    """Average and final displacement error in Å (GeoTDM): ADE is the mean atom distance over all lead
    times, FDE the mean atom distance at the last lead time."""
    per_lead = displacement_per_lead_time(prediction, reference)
    return float(per_lead.mean()), float(per_lead[-1])
