"""Streaming per-coordinate mean and variance (Chan et al.'s parallel update), mergeable across shards, and
the test of which frames they may see (the training ranges of the plan)."""

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

    def update_rows(self, rows: np.ndarray) -> None:
        """Add samples stored component-major: ``rows`` [B, width, M] holds M samples of each component
        per row. Sums run along contiguous rows (pairwise) on values shifted by a first sample, so a
        mean far from zero costs no precision."""
        rows = np.asarray(rows)
        if rows.size == 0:
            return
        shift = rows[0, :, 0].astype(np.float64)
        deviations = rows - shift.astype(rows.dtype)[None, :, None]
        s1 = deviations.sum(axis=2).sum(axis=0, dtype=np.float64)
        deviations *= deviations
        s2 = deviations.sum(axis=2).sum(axis=0, dtype=np.float64)
        n = rows.shape[0] * rows.shape[2]
        mean = s1 / n
        self.merge(RunningMoments(self.width, n, shift + mean, np.maximum(s2 - s1 * mean, 0.0)))

    def update_vectors(self, vectors: np.ndarray) -> None:
        """Add samples stored as [..., width] (e.g. frames [F, n, 3])."""
        vectors = np.asarray(vectors)
        if vectors.size:
            self.update_rows(np.ascontiguousarray(vectors.reshape(-1, self.width).T)[None])

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


def in_ranges(ranges: list[list[int]], frames: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``frames`` lie in one of ``ranges`` (sorted, disjoint [start, stop))."""
    frames = np.asarray(frames)
    if not ranges:
        return np.zeros(frames.shape, dtype=bool)
    bounds = np.asarray(ranges, dtype=np.int64)
    k = np.searchsorted(bounds[:, 0], frames, side="right") - 1
    return (k >= 0) & (frames < bounds[np.maximum(k, 0), 1])
