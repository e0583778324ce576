"""Protocol A's random start frames (GMN/EGNO/ATOM), one implementation for `preprocess`'s random_start
split and for `evaluate`'s protocols A and B.

The peers' recipe: ``x = R[:-1]`` (the last frame has no forward velocity), candidates ``x[margin:-margin]``,
``numpy.random.seed(seed)``, then train, val and test drawn one after another without replacement. A
start ``s`` is the last observed frame. A trajectory too short for the margin and sizes asked for gets
the smallest margin that fits the history and the last target, and sizes scaled down in proportion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

SPLITS = ("train", "val", "test")
PEERS_MARGIN_FRAMES = 10000  # MD17 frames of 0.5 fs
PEERS_SIZES = (500, 2000, 2000)
PEERS_SEED = 100


@dataclass(frozen=True)
class RandomStartPlan:
    """Where the starts may lie and how many are drawn; ``scaled`` when smaller than asked for."""

    margin_frames: int
    sizes: tuple[int, int, int]
    scaled: bool

    def describe(self) -> str:
        return (f"random starts from frames [{self.margin_frames} : -{self.margin_frames}], "
                f"{self.sizes[0]}/{self.sizes[1]}/{self.sizes[2]} train/val/test")


def random_start_plan(n_frames: int, *, before_frames: int, after_frames: int,
                      margin_frames: int = PEERS_MARGIN_FRAMES,
                      sizes: tuple[int, int, int] = PEERS_SIZES) -> RandomStartPlan:
    """The requested margin and sizes when the trajectory is long enough; otherwise the smallest margin
    that still fits ``before_frames`` of history and a target ``after_frames`` ahead, and sizes scaled
    down to the candidates available. UserError when not even one start per split fits."""
    def candidates(margin: int) -> int:
        return n_frames - 1 - 2 * margin

    sizes = tuple(int(s) for s in sizes)
    if margin_frames >= max(before_frames, after_frames) and candidates(margin_frames) >= sum(sizes):
        return RandomStartPlan(margin_frames, sizes, False)
    margin = max(before_frames, after_frames)
    available = candidates(margin)
    if available >= sum(sizes):
        return RandomStartPlan(margin, sizes, True)
    scaled = tuple(int(math.floor(size * available / sum(sizes))) for size in sizes)
    if available < 1 or min(s for s, want in zip(scaled, sizes) if want) < 1:
        raise UserError(f"{n_frames} frames are too few for random starts with {before_frames} frames of history "
                        f"and a target {after_frames} frames ahead")
    return RandomStartPlan(margin, scaled, True)


def random_start_split(n_frames: int, plan: RandomStartPlan, seed: int = PEERS_SEED) -> dict[str, np.ndarray]:
    """Start frames per split (absolute frame indices), drawn as the peers do."""
    rng = np.random.RandomState(seed)  # the legacy global generator's stream, without touching global state
    taken = np.zeros(n_frames - 1 - 2 * plan.margin_frames, dtype=bool)
    starts = {}
    for name, size in zip(SPLITS, plan.sizes):
        chosen = rng.choice(np.flatnonzero(~taken), size=size, replace=False)
        taken[chosen] = True
        starts[name] = chosen + plan.margin_frames
    return starts
