"""Thermal (stochastic) forecasts: a per-atom scale σ beside the decoder's mean, its Gaussian likelihood, the
sampled step and the fair energy score of sampled rollouts (docs/method.md §2, "Thermal (stochastic)
forecasts").

With ``model.stochastic`` each decoder step k predicts, per atom, the mean μ_k of the next frame and a scale
σ_k > 0 (Å, one scalar per atom: rotation invariant), so that a step is x_k = μ_k + σ_k ε, ε ~ N(0, I₃).
Both model frame k given the frames before it (the teacher-forced, one-step conditional): exactly what an
autoregressive sampler needs. A deterministic forecast trained on MSE converges to the conditional mean and
freezes beyond the predictability horizon; sampling each step and feeding the sample forward keeps the
thermal motion over any horizon.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# σ never falls below this (Å): log σ stays finite and the float32 rounding of absolute coordinates
# (≈ 5e-7 Å at 5 Å) stays far below the scale it is measured against.
SCALE_FLOOR_ANGSTROM = 1e-4
INITIAL_SCALE_ANGSTROM = 0.01  # σ of an untrained head: the size of one MD step's unpredictable part
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class ScaleHead(nn.Module):
    """Decoder features [..., D] -> σ [...] in Å: softplus of a small MLP, plus the floor. The features are
    rotation invariant in "equivariant" mode, so σ is too."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))
        nn.init.zeros_(self.net[-1].weight)  # starts at INITIAL_SCALE_ANGSTROM for every atom
        with torch.no_grad():
            initial = INITIAL_SCALE_ANGSTROM - SCALE_FLOOR_ANGSTROM
            self.net[-1].bias.fill_(math.log(math.expm1(initial)))  # inverse softplus

    def forward(self, h: Tensor) -> Tensor:
        return F.softplus(self.net(h).squeeze(-1)) + SCALE_FLOOR_ANGSTROM


# What a sampled forecast draws from: one generator for the whole batch, one per batch row (each row's draws
# then depend on its own seed only, never on the batch it shares), or None (torch's global generator).
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def row_generators(seeds: Sequence[Sequence[int]], device="cpu") -> list[torch.Generator]:
    """One generator per batch row, row i seeded from the integers ``seeds[i]`` (e.g. (seed, member, pass))
    through NumPy's SeedSequence: independent streams for distinct tuples."""
    generators = []
    for parts in seeds:
        state = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])
        generators.append(torch.Generator(device=device).manual_seed(state))
    return generators


def standard_normal(row_shape: Sequence[int], rows: int, generator: Generators, dtype, device) -> Tensor:
    """Standard normal noise [rows, *row_shape] from ``generator`` (:data:`Generators`: per row, row b's from
    ``generator[b]``)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn((rows, *row_shape), generator=generator, dtype=dtype, device=device)
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for a batch of {rows} rows")
    return torch.stack([torch.randn(tuple(row_shape), generator=row, dtype=dtype, device=device) for row in generator])


def sample_step(mean: Tensor, scale: Tensor, generator: Generators = None) -> Tensor:
    """One sampled step: ``mean`` [B, ..., N, 3] + ``scale`` [B, ..., N] · ε, ε ~ N(0, I₃) drawn from
    ``generator`` (:data:`Generators`: per row, row b's ε from ``generator[b]``)."""
    noise = standard_normal(mean.shape[1:], mean.shape[0], generator, mean.dtype, mean.device)
    return mean + scale.unsqueeze(-1) * noise


def gaussian_nll(mean: Tensor, scale: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood per coordinate (mean over frames, atoms and x, y, z; nats) of ``target``
    [B, ≥H, N, 3] under N(``mean``, ``scale``² I₃), ``mean`` [B, H, N, 3] and ``scale`` [B, H, N] Å.

    ``mean`` and ``target`` must come from a teacher-forced pass, so each frame is scored given the true
    previous frame: the residual target_k − μ_k is the residual of the one-step increment x_k − x_{k−1}.
    The mean is detached: σ learns from the residuals, the mean from the forecast MSE alone (the NLL's 1/σ²
    weights would otherwise re-weight the mean's training atom by atom). Computed in float32 at least; σ is
    floored at :data:`SCALE_FLOOR_ANGSTROM`, so log σ is finite.
    """
    dtype = torch.promote_types(mean.dtype, torch.float32)
    horizon = mean.shape[1]
    residual = target[:, :horizon].to(dtype) - mean.detach().to(dtype)
    sigma = scale.to(dtype).unsqueeze(-1)
    nll = 0.5 * (residual / sigma).pow(2) + torch.log(sigma) + HALF_LOG_2PI
    return nll.mean()


_DISTANCE_FLOOR_ANGSTROM = 1e-9  # inside the square root: the gradient of a distance is 0, not NaN, at 0


def fair_energy_score(first: Tensor, second: Tensor, target: Tensor, per: str = "atom") -> Tensor:
    """Fair energy score (Å; lower is better) of two sampled forecasts ``first``, ``second`` [B, H, N, 3]
    against ``target`` [B, ≥H, N, 3]: ½(‖X₁ − y‖ + ‖X₂ − y‖) − ½‖X₁ − X₂‖, averaged over windows and lead
    frames. A proper scoring rule of the forecast distribution, unbiased with two samples: minimised in
    expectation only when the samples are drawn from the target's distribution, so it calibrates the
    spread as well as the centre.

    ``per="atom"``: the score of each atom's 3-vector at each lead frame, averaged over atoms too;
    ``per="frame"``: the score of the whole frame about its centroid, flattened to 3N numbers, divided by √N
    (Å per atom, root mean square). Computed in float32 at least; differentiable in the samples.
    """
    if per not in ("atom", "frame"):
        raise ValueError(f"per must be 'atom' or 'frame', got {per!r}")
    dtype = torch.promote_types(first.dtype, torch.float32)
    horizon = first.shape[1]
    a, b, y = (t.to(dtype) for t in (first, second, target[:, :horizon]))
    if per == "frame":
        scale = 1.0 / math.sqrt(first.shape[2])
        a, b, y = ((t - t.mean(dim=2, keepdim=True)).flatten(2) * scale for t in (a, b, y))

    def distance(u: Tensor, v: Tensor) -> Tensor:
        return torch.sqrt((u - v).pow(2).sum(-1) + _DISTANCE_FLOOR_ANGSTROM ** 2)

    return (0.5 * (distance(a, y) + distance(b, y)) - 0.5 * distance(a, b)).mean()


def rollout_energy_score(first: Tensor, second: Tensor, target: Tensor, last: Tensor, kind: str) -> Tensor:
    """The score ``train.stochastic_loss`` names (``kind``) of two sampled rollouts ``first``, ``second``
    [B, H, N, 3] against ``target`` [B, ≥H, N, 3], ``last`` [B, 1, N, 3] the last observed frame:
    "energy_score" per atom, "energy_score_frame" per frame (:func:`fair_energy_score`), "energy_score_steps"
    per atom of the positions plus per atom of the steps x_k − x_{k−1} (x_0 = ``last``): the steps' spread is
    the motion from frame to frame, the temperature, which the positions' spread at each lead time leaves free."""
    if kind == "energy_score":
        return fair_energy_score(first, second, target)
    if kind == "energy_score_frame":
        return fair_energy_score(first, second, target, per="frame")
    if kind != "energy_score_steps":
        raise ValueError(f"unknown rollout score {kind!r}")
    horizon = first.shape[1]
    steps = [torch.diff(torch.cat([last.to(x.dtype), x[:, :horizon]], dim=1), dim=1) for x in (first, second, target)]
    return fair_energy_score(first, second, target) + fair_energy_score(*steps)
