"""Validation: per-lead-time MSE (Å², mean over windows, atoms and x, y, z) of the free-running forecast
(of a stochastic model: the path of its means).

Every rank evaluates the same number of batches (ZeRO-3 gathers parameters collectively in every
forward), on its share of a fixed, evenly spread subset of the validation split; squared errors and
counts are summed over ranks, so the result does not depend on the world size.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .batches import box_keywords


def validation_indices(n_windows: int, per_rank: int, rank: int, world_size: int) -> list[int]:
    """This rank's windows: ``per_rank × world_size`` windows spread evenly over the split, dealt in rank order."""
    total = min(per_rank * world_size, n_windows - n_windows % world_size)
    if total <= 0:
        return []
    chosen = np.linspace(0, n_windows - 1, total).round().astype(int)
    return chosen[rank::world_size].tolist()


def per_lead_mse(engine, dataset, indices: list[int], micro_batch_size: int, horizon: int, device: str,
                 dtype) -> np.ndarray:
    """MSE per lead time [horizon] over all ranks' ``indices`` (collective: every rank must call it)."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    if not indices:
        raise UserError("validation split has fewer windows than ranks; lower the world size or add data")
    squared = torch.zeros(horizon, dtype=torch.float64, device=device)
    count = torch.zeros(1, dtype=torch.float64, device=device)
    from .step import samples

    mean_only = {"mean_only": True} if samples(engine) else {}  # MSE scores the means of a model that samples
    was_training = engine.training
    engine.eval()
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=micro_batch_size, sampler=indices):
                history = batch["history"].to(device=device, dtype=dtype)
                target = batch["target"].to(device=device, dtype=torch.float64)
                box = box_keywords(batch, history.shape[1], device, dtype)
                forecast = engine(history, batch["atomic_numbers"].to(device), horizon, **box, **mean_only,
                                  forecast_only=True).forecast
                error = (forecast.to(torch.float64) - target[:, :horizon]).pow(2)
                squared += error.sum(dim=(0, 2, 3))
                count += error[:, 0].numel()
    finally:
        engine.train(was_training)
    if dist.is_initialized():
        dist.all_reduce(squared)
        dist.all_reduce(count)
    return (squared / count).cpu().numpy()
