"""Rotation handling: invariant features and vector read-outs ("equivariant"), random rotations
("augment"), and the measured equivariance error.

In "equivariant" mode every scalar feature is an inner product of per-atom vectors (rotation invariant)
and every vector output is a learned combination Σ_k c_k v_k of per-atom basis vectors v_k (displacements,
centred positions, attention-weighted relative position vectors), EGNN style, so rotating the input
rotates every output exactly (up to float rounding). In "augment" mode the raw vector components are
features and outputs are plain linear maps; training rotates each window by a random rotation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from ..geometry import kabsch_rotation_torch

if TYPE_CHECKING:  # pragma: no cover
    from .asteroid import Asteroid


def random_rotations(count: int, *, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """``count`` rotation matrices [count, 3, 3] drawn uniformly (Haar) from SO(3)."""
    gauss = torch.randn(count, 3, 3, dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar-uniform on O(3)
    q[torch.linalg.det(q) < 0, :, 0] *= -1  # reflect into SO(3)
    return q.to(dtype=dtype, device=device)


def rotate_about(coords: Tensor, rotation: Tensor, centre: Tensor) -> Tensor:
    """Rotate [B, ..., 3] coordinates about ``centre`` [B, 1, ..., 3] by ``rotation`` [B, 3, 3]."""
    shape = coords.shape
    flat = (coords - centre).reshape(shape[0], -1, 3)
    return (flat @ rotation.transpose(1, 2)).reshape(shape) + centre


def rotation_step(window: Tensor) -> Tensor:
    """The displacement of every atom [B, N, 3] if the last frame of ``window`` [B, m, N, 3] turned on about
    its centroid by the mean rigid rotation of one frame spacing: the rigid rotation from the first to the
    last frame (Kabsch), applied once more, divided by the m − 1 spacings (small-angle). Rotating the window
    rotates it, translating it leaves it unchanged, permuting the atoms permutes it."""
    rotation = kabsch_rotation_torch(window[:, 0], window[:, -1])
    arm = window[:, -1].double() - window[:, -1].double().mean(dim=1, keepdim=True)
    return ((arm @ rotation - arm) / (window.shape[1] - 1)).to(window.dtype)


def vector_features(query: Tensor, basis: Tensor, equivariant: bool) -> Tensor:
    """Scalar features of per-token vectors ``query`` [..., q, 3] against per-atom vectors ``basis`` [..., k, 3].

    Equivariant: the inner products query·basis and query·query (invariant). Augment: raw components.
    Returns [..., q·(k+q)] or [..., 3·(q+k)].
    """
    if equivariant:
        return torch.cat([(query @ basis.transpose(-1, -2)).flatten(-2),
                          (query @ query.transpose(-1, -2)).flatten(-2)], dim=-1)
    return torch.cat([query.flatten(-2), basis.flatten(-2)], dim=-1)


def frame_vector_features(query: Tensor, atom_basis: Tensor, equivariant: bool) -> Tensor:
    """:func:`vector_features` of per-token vectors ``query`` [B, T, N, q, 3] against per-atom vectors
    ``atom_basis`` [B, N, k, 3] that every frame shares, without copying them out over the frames (the inner
    products as one product per atom instead of one per token: 2× faster on the aspirin C model's windows)."""
    if not equivariant:
        return vector_features(query, atom_basis.unsqueeze(1).expand(-1, query.shape[1], -1, -1, -1), False)
    return torch.cat([torch.einsum("btnqc,bnkc->btnqk", query, atom_basis).flatten(-2),
                      (query @ query.transpose(-1, -2)).flatten(-2)], dim=-1)


def vector_feature_size(num_query: int, num_basis: int, equivariant: bool) -> int:
    return num_query * (num_basis + num_query) if equivariant else 3 * (num_query + num_basis)


class VectorHead(nn.Module):
    """Features [..., D] -> ``num_out`` vectors [..., num_out, 3].

    Equivariant: combinations of the ``num_basis`` basis vectors [..., num_basis, 3] with coefficients
    from the (invariant) features. Augment: a linear map, the basis is ignored.
    """

    def __init__(self, hidden_size: int, num_out: int, num_basis: int, equivariant: bool):
        super().__init__()
        self.num_out, self.num_basis, self.equivariant = num_out, num_basis, equivariant
        self.linear = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                    nn.Linear(hidden_size, num_out * (num_basis if equivariant else 3)))

    def forward(self, h: Tensor, basis: Tensor) -> Tensor:
        if self.equivariant:
            coefficients = self.linear(h).view(*h.shape[:-1], self.num_out, self.num_basis)
            return coefficients @ basis
        return self.linear(h).view(*h.shape[:-1], self.num_out, 3)


@torch.no_grad()
def rotation_equivariance_error(model: "Asteroid", history: Tensor, atomic_numbers: Tensor, horizon: int, *,
                                num_rotations: int = 4, seed: int = 0, cell: Optional[Tensor] = None) -> float:
    """Relative rotation-equivariance error of the forecast, measured in eval mode.

    max over random rotations R of ‖f(R·x) − R·f(x)‖ / ‖f(x) − x_last‖ (Frobenius norms over the
    forecast displacements, rotations about the window centroid). 0 for an exactly equivariant model.
    A periodic ``cell`` [B, 3, 3] turns with the atoms. A stochastic model is measured on its means.
    """
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        centre = history.mean(dim=(1, 2), keepdim=True)
        reference = model(history, atomic_numbers, horizon, cell=cell, mean_only=True).forecast
        scale = (reference - history[:, -1:]).norm().clamp_min(1e-30)
        worst = 0.0
        for _ in range(num_rotations):
            rotation = random_rotations(history.shape[0], dtype=history.dtype, device=history.device,
                                        generator=generator)
            turned_cell = None if cell is None else cell @ rotation.transpose(1, 2)
            rotated = model(rotate_about(history, rotation, centre), atomic_numbers, horizon, cell=turned_cell,
                            mean_only=True).forecast
            expected = rotate_about(reference, rotation, centre)
            worst = max(worst, float((rotated - expected).norm() / scale))
        return worst
    finally:
        model.train(was_training)
