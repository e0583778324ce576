"""A tiny ASTEROID overfits a tiny real trajectory: GFN2-xTB ethanol (tblite), 40 frames at 2.5 fs."""

import numpy as np
import pytest
import torch

from asteroid_hpc.config.schema import LossWeights, ModelConfig
from asteroid_hpc.datagen import xtb_trajectory
from asteroid_hpc.model import build_model, sti_losses

M, L, H = 4, 4, 3  # history frames, delay length, forecast frames per window



@pytest.fixture(scope="module")
def ethanol_windows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    positions, numbers = xtb_trajectory("ethanol", 40, seed=0, stride=5, thermalize_steps=100)
    coords = torch.tensor(positions, dtype=torch.float32)
    starts = (0, 20)  # two windows, 14 frames apart after the first one ends
    history = torch.stack([coords[s:s + M] for s in starts])
    target = torch.stack([coords[s + M:s + M + H] for s in starts])
    return history, target, torch.tensor(numbers)


@pytest.mark.slow
def test_tiny_model_overfits_xtb_ethanol(ethanol_windows):
    history, target, numbers = ethanol_windows
    torch.manual_seed(0)
    cfg = ModelConfig(history_frames=M, delay_length=L, hidden_size=32, num_heads=4, encoder_layers=1,
                      decoder_layers=1, num_global_tokens=2, num_rbf=8, symmetry="equivariant")
    model = build_model(cfg)
    steps = 400
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    weights = LossWeights()
    losses = []
    for _ in range(steps):
        loss, _ = sti_losses(model(history, numbers, H, target), history, target, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final, parts = sti_losses(model(history, numbers, H, target), history, target, weights)
    persistence = float(((target - history[:, -1:]) ** 2).mean())
    print(f"\nloss {losses[0]:.3e} -> {final.item():.3e} ({losses[0] / final.item():.0f}x); forecast MSE "
          f"{parts['forecast'].item():.2e} Å² vs persistence {persistence:.2e} Å²")
    assert np.isfinite(losses).all()
    assert losses[0] / final.item() >= 100
    assert parts["forecast"].item() < 0.25 * persistence
