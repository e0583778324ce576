"""Optimal rigid superposition (Kabsch) of atom sets [..., N, 3] in Å: NumPy versions for the metrics and
torch versions for the model, side by side. Row-vector convention throughout: (x − centroid) @ R.
Also the box vectors of a periodic cell from its lengths and angles (:func:`cell_matrix`), and a molecule's
velocity split into its stiff, rigid-rotation and soft parts (:func:`motion_parts`).

NumPy results are float64; torch is imported only by the torch functions, so the metrics stay torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


# ----------------------------------------------------------------------------------- NumPy

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


def superposed_mean(frames, iterations: int = 4) -> np.ndarray:
    """Mean structure [N, 3] (centred at the origin) of ``frames`` [F, N, 3] in the molecule's own frame: the
    frames superposed (Kabsch) onto the running mean and averaged, ``iterations`` times, so that tumbling
    does not blur it."""
    frames = np.asarray(frames, dtype=np.float64)
    mean = frames[0] - frames[0].mean(axis=0)
    for _ in range(iterations):
        mean = kabsch_superpose(frames, mean).mean(axis=0)
    return mean - mean.mean(axis=0)


def kabsch_rmsd(coordinates, reference) -> np.ndarray:
    """RMSD in Å after optimal superposition (translation + rotation) of ``coordinates`` onto
    ``reference``: [..., N, 3] -> [...]."""
    return rmsd(kabsch_superpose(coordinates, reference), reference)


def cell_matrix(lengths_angles) -> np.ndarray:
    """Box vectors as rows [..., 3, 3] in Å from a cell [..., 6]: lengths a, b, c in Å and angles α (b, c),
    β (a, c), γ (a, b) in degrees, as AMBER NetCDF and MDAnalysis store them; a along x, b in the xy plane.
    A 90° angle gives an exact zero, so an orthorhombic cell is exactly diagonal. Float64."""
    cell = np.asarray(lengths_angles, dtype=np.float64)
    if cell.shape[-1:] != (6,):
        raise ValueError(f"a cell is [..., 6] (lengths Å, angles °), got shape {cell.shape}")
    a, b, c = cell[..., 0], cell[..., 1], cell[..., 2]
    cos_alpha, cos_beta, cos_gamma = (np.where(cell[..., k] == 90.0, 0.0, np.cos(np.radians(cell[..., k])))
                                      for k in (3, 4, 5))
    sin_gamma = np.where(cell[..., 5] == 90.0, 1.0, np.sin(np.radians(cell[..., 5])))
    cy = (cos_alpha - cos_beta * cos_gamma) / sin_gamma
    cz = np.sqrt(np.clip(1.0 - cos_beta ** 2 - cy ** 2, 0.0, None))
    zero = np.zeros_like(a)
    rows = [np.stack([a, zero, zero], -1), np.stack([b * cos_gamma, b * sin_gamma, zero], -1),
            np.stack([c * cos_beta, c * cy, c * cz], -1)]
    return np.stack(rows, axis=-2)


RANK_TOLERANCE = 1e-8  # singular values of the pairs' Jacobian below this fraction of the largest: redundant


def motion_parts(positions, velocity, pairs, masses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A molecule's velocity [..., N, 3] at ``positions`` [..., N, 3] split into (stiff, rotation, soft), each
    [..., N, 3], mutually orthogonal under the mass metric (Σ m v² of the three adds up to the velocity's own
    after its centre-of-mass motion is removed, which belongs to none):

    - stiff: what changes the distances of ``pairs`` [C, 2] (the least mass-weighted motion with the same
      rates of change of those distances: M⁻¹Jᵀ(JM⁻¹Jᵀ)⁺Jv, J their unit-vector Jacobian);
    - rotation: the rigid rotation about the centre of mass with the rest's angular momentum;
    - soft: everything else (torsions, out-of-plane and slow collective motion the pairs leave free)."""
    positions = np.asarray(positions, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    weights = masses / masses.sum()
    velocity = np.asarray(velocity, dtype=np.float64)
    velocity = velocity - np.einsum("n,...nk->...k", weights, velocity)[..., None, :]
    stiff = _stiff_part(positions, velocity, pairs, masses) if len(pairs) else np.zeros_like(velocity)
    rest = velocity - stiff
    arms = positions - np.einsum("n,...nk->...k", weights, positions)[..., None, :]
    momentum = np.einsum("n,...nk->...k", masses, np.cross(arms, rest))  # angular momentum
    second = np.einsum("n,...ni,...nj->...ij", masses, arms, arms)  # Σ m r rᵀ
    trace = np.trace(second, axis1=-2, axis2=-1)[..., None, None]
    inertia = (1 + 1e-12) * trace * np.eye(3) - second  # (+ε: a linear molecule turns about two axes only)
    spin = np.linalg.solve(inertia, momentum[..., None])[..., 0]  # angular velocity ω
    rotation = np.cross(spin[..., None, :], arms)
    return stiff, rotation, rest - rotation


def motion_chunk_frames(n_pairs: int, n_atoms: int) -> int:
    """Frames per call of :func:`motion_parts` that keep its [frames, C, 3N] Jacobians near 128 MB."""
    return max(1, (1 << 24) // max(1, n_pairs * 3 * n_atoms))


def _stiff_part(positions, velocity, pairs, masses) -> np.ndarray:
    """M⁻¹Jᵀ(JM⁻¹Jᵀ)⁺Jv of :func:`motion_parts`, as the projection of M^½v onto the row space of JM^-½ (an SVD:
    exact where the pairs are redundant, e.g. a ring's bonds and angles, where the normal equations are not)."""
    vectors = positions[..., pairs[:, 1], :] - positions[..., pairs[:, 0], :]
    units = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)  # [..., C, 3]
    root = np.sqrt(masses)
    incidence = np.zeros((len(pairs), len(masses)))
    incidence[np.arange(len(pairs)), pairs[:, 1]] = 1.0
    incidence[np.arange(len(pairs)), pairs[:, 0]] = -1.0
    jacobian = (incidence / root)[:, :, None] * units[..., :, None, :]  # J M^-½: [..., C, N, 3]
    jacobian = jacobian.reshape(*jacobian.shape[:-2], -1)
    _, singular, rows = np.linalg.svd(jacobian, full_matrices=False)
    kept = singular > RANK_TOLERANCE * singular[..., :1]
    weighted = (root[:, None] * velocity).reshape(*velocity.shape[:-2], -1, 1)  # M^½ v
    along = (rows @ weighted) * kept[..., None]
    return (np.swapaxes(rows, -1, -2) @ along).reshape(velocity.shape) / root[:, None]


# ----------------------------------------------------------------------------------- torch

def kabsch_rotation_torch(mobile: Tensor, target: Tensor) -> Tensor:
    """:func:`kabsch_rotation` in torch, without gradient: the proper rotation [B, 3, 3] (float64) that best
    turns ``mobile`` [B, N, 3] onto ``target`` [B, N, 3] about their centroids."""
    import torch

    with torch.no_grad():
        mobile = mobile.double() - mobile.double().mean(dim=1, keepdim=True)
        target = target.double() - target.double().mean(dim=1, keepdim=True)
        u, _, vt = torch.linalg.svd(mobile.transpose(1, 2) @ target)  # of the 3 x 3 covariance
        sign = torch.where(torch.linalg.det(u @ vt) < 0, -1.0, 1.0).to(u.dtype)
        correction = torch.ones(u.shape[0], 3, dtype=u.dtype, device=u.device)
        correction[:, -1] = sign  # a proper rotation: flip the weakest axis instead of reflecting
        return (u * correction[:, None, :]) @ vt


def superpose_onto(reference: Tensor, target: Tensor) -> Tensor:
    """``reference`` [N, 3] moved onto each ``target`` [B, N, 3] by the proper rotation and translation that
    minimise the RMSD (Kabsch, float64): [B, N, 3]. Rotating a target rotates its result (equivariant)."""
    body = reference.double() - reference.double().mean(dim=0)
    rotation = kabsch_rotation_torch(body.expand(target.shape[0], -1, -1), target)
    return (body @ rotation + target.double().mean(dim=1, keepdim=True)).to(target.dtype)
