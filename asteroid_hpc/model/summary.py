"""Parameter count and FLOPs per forecast frame, for the start-up summary."""

from __future__ import annotations

import torch

from .asteroid import Asteroid
from .spatial_reference import count_flops

LIQUID_DENSITY_PER_A3 = 0.021  # atoms/Å^3 (liquid argon): the probe system's density


def probe_system(n_atoms: int, frames: int, *, density_per_A3: float = LIQUID_DENSITY_PER_A3,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random open box of ``n_atoms`` at ``density_per_A3`` with small thermal-like jitter over
    ``frames`` frames: (positions [1, frames, N, 3] float32 Å, atomic numbers [N] long)."""
    generator = torch.Generator().manual_seed(seed)
    edge = (n_atoms / density_per_A3) ** (1.0 / 3.0)
    base = torch.rand(n_atoms, 3, generator=generator, dtype=torch.float64) * edge
    steps = torch.randn(frames, n_atoms, 3, generator=generator, dtype=torch.float64) * 0.02
    positions = (base + steps.cumsum(dim=0)).float().unsqueeze(0)
    return positions, torch.full((n_atoms,), 18, dtype=torch.long)


def model_summary(model: Asteroid, n_atoms: int = 64) -> dict[str, float]:
    """Parameters and forward FLOPs per forecast frame (inference, one pass of L−1 frames, batch 1).

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and attention, as
    :func:`~asteroid_hpc.model.spatial_reference.count_flops` counts them; element-wise work and gathers are
    not counted) on a random liquid-density box of ``n_atoms``;
    at fixed neighbour density they scale linearly with N.
    """
    cfg = model.cfg
    if model.uses_reference:  # a reference model takes its own molecule's atom count
        n_atoms = len(model.reference)
    history, elements = probe_system(n_atoms, cfg.history_frames)
    history = history.to(next(model.parameters()).device)
    elements = elements.to(history.device)
    steps = cfg.delay_length - 1
    was_training = model.training
    model.eval()
    try:
        flops = count_flops(lambda: model(history, elements, steps, mean_only=True)) / steps  # every contraction
    finally:
        model.train(was_training)
    return {
        "parameters": float(sum(p.numel() for p in model.parameters())),
        "flops_per_forecast_frame": float(flops),
        "flops_per_forecast_frame_per_atom": float(flops / n_atoms),
        "n_atoms_probed": float(n_atoms),
    }
