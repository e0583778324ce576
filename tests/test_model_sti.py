"""STI tensor algebra: read-off, anti-diagonal consistency, masked primary loss, loss dictionary."""

import pytest
import torch

from asteroid_hpc.config.schema import LossWeights
from asteroid_hpc.model import AsteroidOutput, antidiagonal_means, consistency_loss, primary_loss, readoff, sti_losses


def true_hankel(frames: torch.Tensor, m: int, length: int) -> torch.Tensor:
    """hankel[:, t, i] = frames[:, t + i] for a trajectory of m + L − 1 frames [B, m+L-1, N, 3]."""
    return torch.stack([frames[:, t:t + length] for t in range(m)], dim=1)


@pytest.fixture
def frames() -> torch.Tensor:
    return torch.randn(2, 5 + 4 - 1, 3, 3, generator=torch.Generator().manual_seed(0))


def test_readoff_of_true_hankel_returns_future_frames_exactly(frames):
    hankel = true_hankel(frames, m=5, length=4)
    assert hankel.shape == (2, 5, 4, 3, 3)
    assert torch.equal(readoff(hankel), frames[:, 5:])
    assert torch.allclose(antidiagonal_means(hankel), frames, atol=0, rtol=0)


def test_readoff_is_mean_of_each_antidiagonal(frames):
    m, length = 5, 4
    hankel = torch.randn(2, m, length, 3, 3, generator=torch.Generator().manual_seed(1))
    out = readoff(hankel)
    for j in range(1, length):  # frame m-1+j: entries hankel[:, m-1+j-i, i] for i = j … L-1
        entries = [hankel[:, m - 1 + j - i, i] for i in range(j, length)]
        assert torch.allclose(out[:, j - 1], torch.stack(entries).mean(0), atol=1e-6)


def test_consistency_zero_on_hankel_positive_otherwise(frames):
    hankel = true_hankel(frames, m=5, length=4)
    assert consistency_loss(hankel).item() == 0.0
    perturbed = hankel.clone()
    perturbed[0, 2, 1, 0, 0] += 0.1  # one entry off its anti-diagonal
    assert consistency_loss(perturbed).item() > 0.0


def test_primary_loss_masks_unknown_entries(frames):
    m, length = 5, 4
    hankel = true_hankel(frames, m, length)
    garbage = hankel.clone()
    garbage[:, m - 1, 1:] += 100.0  # entries for frames after the history: unknown without a target
    assert primary_loss(garbage, frames[:, :m]).item() == 0.0
    assert primary_loss(garbage, frames).item() > 1.0  # known once the future frames are given


def test_sti_losses_keys_and_weights(frames):
    m, length = 5, 4
    hankel = true_hankel(frames, m, length)
    history, target = frames[:, :m], frames[:, m:]
    output = AsteroidOutput(forecast=target + 0.5, hankel=hankel, reconstruction=history.clone(),
                            readoff=readoff(hankel))
    total, parts = sti_losses(output, history, target, LossWeights(forecast=2.0))
    assert set(parts) == {"primary", "conjugate", "consistency", "forecast"}
    assert parts["primary"].item() == 0 and parts["conjugate"].item() == 0 and parts["consistency"].item() == 0
    assert parts["forecast"].item() == pytest.approx(0.25)
    assert total.item() == pytest.approx(0.5)
    _, no_target = sti_losses(output, history, None, LossWeights())
    assert no_target["forecast"].item() == 0.0
