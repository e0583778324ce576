"""One member's iterative rollout, pass by pass (each pass forecasts the model's L−1 frames).

The loop is the model's own iterative forecast (``Asteroid.forward`` with a long horizon rolls the window
the same way), cut at pass boundaries so that frames can be streamed to disk and a killed run can continue
from any flushed pass exactly. With a group of several ranks each pass is domain-decomposed
(:mod:`asteroid_hpc.ensemble.domains`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import UserError
from .domains import DomainContext, SingleDomain, decompose


class MemberForecaster:
    """Runs members of one group: ``group`` is its communicator (size = domains)."""

    def __init__(self, model, atomic_numbers: np.ndarray, group, device: str = "cpu"):
        self.model = model.eval()
        self.group = group
        self.device = device
        self.history_frames = model.cfg.history_frames
        self.steps_per_pass = model.cfg.delay_length - 1
        self.atomic_numbers = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
        if group.size > 1 and model.cfg.attention == "full":
            raise UserError("ensemble.domains > 1 needs a model with local attention (model.attention=local_global); "
                            "this model uses full attention")

    def rollout(self, window: np.ndarray, n_frames: int) -> Iterator[np.ndarray]:
        """Yield the forecast frames of successive passes ([steps, N, 3] float32) after ``window`` [m, N, 3],
        ``n_frames`` in all."""
        if window.shape[0] != self.history_frames:
            raise ValueError(f"window has {window.shape[0]} frames, the model needs {self.history_frames}")
        window = np.ascontiguousarray(window, dtype=np.float32)
        produced = 0
        while produced < n_frames:
            steps = min(self.steps_per_pass, n_frames - produced)
            frames = self.one_pass(window, steps)
            window = np.concatenate([window, frames])[-self.history_frames:]
            produced += steps
            yield frames

    @torch.no_grad()
    def one_pass(self, window: np.ndarray, steps: int) -> np.ndarray:
        if self.group.size == 1:
            history = torch.from_numpy(window).unsqueeze(0).to(self.device)
            out = self.model(history, self.atomic_numbers.to(self.device), steps, domain=SingleDomain()).forecast[0]
            return out.cpu().numpy()
        parts = decompose(window[-1], self.group.size, self.model.cfg.cutoff_angstrom)
        domain = DomainContext(self.group, parts, window.shape[1], self.device)
        local = parts.local[self.group.rank]
        history = torch.from_numpy(np.ascontiguousarray(window[:, local])).unsqueeze(0).to(self.device)
        out = self.model(history, self.atomic_numbers[local].to(self.device), steps, domain=domain).forecast[0]
        owned_frames = out[:, :parts.n_owned[self.group.rank]].cpu().numpy()
        frames = np.empty((steps, window.shape[1], 3), dtype=np.float32)
        for rank, piece in enumerate(self.group.allgather(owned_frames)):
            frames[:, parts.owned(rank)] = piece
        return frames
