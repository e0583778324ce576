"""Streaming per-coordinate mean and variance (Chan et al.'s parallel update), mergeable across shards."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations of vectors of ``width`` components (x, y, z)."""

    width: int = 3
    count: int = 0
    mean: np.ndarray = field(default=None)
    m2: np.ndarray = field(default=None)

    def __post_init__(self) -> None:
        self.mean = np.zeros(self.width) if self.mean is None else np.asarray(self.mean, dtype=np.float64)
        self.m2 = np.zeros(self.width) if self.m2 is None else np.asarray(self.m2, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        """Add samples ``values`` [..., width]."""
        flat = np.asarray(values).reshape(-1, self.width)
        if len(flat) == 0:
            return
        batch_mean = flat.mean(axis=0, dtype=np.float64)
        batch_m2 = ((flat - batch_mean) ** 2).sum(axis=0, dtype=np.float64)
        self.merge(RunningMoments(self.width, len(flat), batch_mean, batch_m2))

    def merge(self, other: "RunningMoments") -> None:
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count) if self.count else np.zeros(self.width)

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "RunningMoments":
        return cls(len(data["mean"]), int(data["count"]), np.asarray(data["mean"]), np.asarray(data["m2"]))
