"""Load an exported model and run it over protocol samples in batches (CPU or the chosen device)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import user_error
from .protocols import ProtocolSamples

WEIGHTS_SUFFIX = ".safetensors"


def resolve_weights(path: str | os.PathLike) -> Path:
    """The weights file itself, or the single ``*.safetensors`` inside an export directory
    (``model.safetensors`` when there are several)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise user_error(path, "model not found (expected exported weights: a .safetensors file or its directory)")
    candidates = sorted(path.glob(f"*{WEIGHTS_SUFFIX}"))
    preferred = path / f"model{WEIGHTS_SUFFIX}"
    if preferred in candidates:
        return preferred
    if len(candidates) != 1:
        raise user_error(path, f"expected one {WEIGHTS_SUFFIX} file in the model directory, found {len(candidates)}")
    return candidates[0]


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """The ASTEROID model stored at ``path`` (see :func:`resolve_weights`), in eval mode."""
    from ..model import load_weights

    model = load_weights(resolve_weights(path), device=device)
    model.eval()
    return model


def model_forecast(model, samples: ProtocolSamples, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """The model's forecast at the samples' lead times: [S, H, N, 3] float64 Å."""
    import torch

    atomic_numbers = torch.as_tensor(np.asarray(samples.atomic_numbers), dtype=torch.long, device=device)
    pick = samples.lead_steps - 1
    outputs = []
    for first in range(0, len(samples.history), batch_size):
        history = torch.as_tensor(samples.history[first:first + batch_size], dtype=torch.float32, device=device)
        frames = model.forecast(history, atomic_numbers, samples.forecast_frames)
        outputs.append(frames[:, pick].double().cpu().numpy())
    return np.concatenate(outputs)
