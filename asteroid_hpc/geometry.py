"""Optimal rigid superposition (Kabsch) of atom sets [..., N, 3] in Å: NumPy versions for the metrics and
torch versions for the model, side by side. Row-vector convention throughout: (x − centroid) @ R.
Also the box vectors of a periodic cell from its lengths and angles (:func:`cell_matrix`), and a molecule's
velocity split into its stiff, rigid-rotation and soft parts (:func:`motion_parts`, NumPy or torch alike).

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


# ----------------------------------------------------------------------------------- NumPy or torch

def motion_parts(positions, velocity, pairs, masses):
    """A molecule's velocity [..., N, 3] at ``positions`` [..., N, 3] split into (stiff, rotation, soft), each
    [..., N, 3], mutually orthogonal under the mass metric (Σ m v² of the three adds up to the velocity's own
    after its centre-of-mass motion is removed, which belongs to none):

    - stiff: what changes the distances of ``pairs`` [C, 2] (the least mass-weighted motion with the same
      rates of change of those distances: M⁻¹Jᵀ(JM⁻¹Jᵀ)⁺Jv, J their unit-vector Jacobian);
    - rotation: the rigid rotation about the centre of mass with the rest's angular momentum;
    - soft: everything else (torsions, out-of-plane and slow collective motion the pairs leave free).

    Arrays of either library (``masses`` [N] and integer ``pairs`` of the same one); float64 advised."""
    torch_arrays = not isinstance(positions, np.ndarray)
    if torch_arrays:
        import torch
        eye = lambda n: torch.eye(n, dtype=positions.dtype, device=positions.device)  # noqa: E731
    else:
        eye = lambda n: np.eye(n, dtype=positions.dtype)  # noqa: E731
    weights = masses / masses.sum()
    velocity = velocity - (weights[:, None] * velocity).sum(-2)[..., None, :]
    stiff = _stiff_part(positions, velocity, pairs, masses, eye, torch_arrays) if len(pairs) else 0 * velocity
    rest = velocity - stiff
    arms = positions - (weights[:, None] * positions).sum(-2)[..., None, :]
    momentum = (masses[:, None] * _cross(arms, rest)).sum(-2)  # angular momentum [..., 3]
    second = (masses[:, None, None] * arms[..., :, None] * arms[..., None, :]).sum(-3)  # Σ m r rᵀ
    trace = second.diagonal(0, -2, -1).sum(-1)[..., None, None]
    inertia = trace * eye(3) - second + 1e-12 * trace * eye(3)  # (a linear molecule spins about two axes)
    spin = _solve(inertia, momentum[..., None], torch_arrays)[..., 0]  # angular velocity ω
    rotation = _cross(spin[..., None, :], arms)
    return stiff, rotation, rest - rotation


def motion_chunk_frames(n_pairs: int) -> int:
    """Frames per call of :func:`motion_parts` that keep its [frames, C, C] matrices near 128 MB (float64)."""
    return max(1, (1 << 24) // max(1, n_pairs * n_pairs))


def _stiff_part(positions, velocity, pairs, masses, eye, torch_arrays: bool):
    """M⁻¹Jᵀ(JM⁻¹Jᵀ)⁺Jv of :func:`motion_parts` (a tiny ridge for redundant pairs, e.g. a ring's)."""
    incidence = eye(len(masses))[pairs[:, 1]] - eye(len(masses))[pairs[:, 0]]  # [C, N]: +1 at j, −1 at i
    vectors = positions[..., pairs[:, 1], :] - positions[..., pairs[:, 0], :]
    units = vectors / ((vectors * vectors).sum(-1)[..., None] ** 0.5)  # [..., C, 3]
    rates = (units * (incidence @ velocity)).sum(-1)  # J v: [..., C]
    gram = ((incidence / masses) @ incidence.T) * (units @ units.swapaxes(-1, -2))  # J M⁻¹ Jᵀ
    ridge = 1e-10 * gram.diagonal(0, -2, -1).mean(-1)[..., None, None] * eye(len(pairs))
    multipliers = _solve(gram + ridge, rates[..., None], torch_arrays)
    return (incidence.T @ (multipliers * units)) / masses[:, None]


def _cross(a, b):
    parts = [a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
             a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]]
    if isinstance(a, np.ndarray):
        return np.stack(parts, -1)
    import torch
    return torch.stack(parts, -1)


def _solve(matrix, rhs, torch_arrays: bool):
    if torch_arrays:
        import torch
        return torch.linalg.solve(matrix, rhs)
    return np.linalg.solve(matrix, rhs)
