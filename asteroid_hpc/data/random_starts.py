"""Protocol A's random start frames (GMN/EGNO/ATOM), one implementation for `preprocess`'s random_start
split and for `evaluate`'s protocols A and B.

The peers' recipe (GMN/EGNO code): ``x = R[:-1]`` (the last frame has no forward velocity), candidates
``x[margin:-margin]`` (n of them), ``numpy.random.seed(seed)``, then ``int(0.1·n)`` train, ``int(0.05·n)``
val and ``int(0.05·n)`` test starts drawn one after another without replacement, each from what the
earlier draws left, and only then the first 500 / 2000 / 2000 of each kept. A start ``s`` is the last
observed frame. A trajectory too short for the margin and sizes asked for (not the peers' setting) gets
the smallest margin that fits the history and the last target, and sizes scaled down in proportion,
drawn directly.
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
PEERS_DRAW_FRACTIONS = (0.1, 0.05, 0.05)  # of the candidates, drawn before the first PEERS_SIZES are kept


@dataclass(frozen=True)
class RandomStartPlan:
    """Where the starts may lie and how many are drawn; ``scaled`` when smaller than asked for."""

    margin_frames: int
    sizes: tuple[int, int, int]
    scaled: bool
    draw_sizes: tuple[int, int, int] = ()  # drawn per split before the first ``sizes`` are kept; () = sizes

    @property
    def kept_sizes(self) -> tuple[int, int, int]:
        return tuple(min(s, d) for s, d in zip(self.sizes, self.draw_sizes or self.sizes))

    def describe(self) -> str:
        kept = self.kept_sizes
        drawn = f" (first of {'/'.join(map(str, self.draw_sizes))} drawn)" if self.draw_sizes else ""
        return (f"random starts from frames [{self.margin_frames} : -{self.margin_frames}], "
                f"{kept[0]}/{kept[1]}/{kept[2]} train/val/test{drawn}")


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
        n = candidates(margin_frames)
        draws = tuple(int(fraction * n) for fraction in PEERS_DRAW_FRACTIONS)
        if sum(draws) <= n and all(d >= 1 for d, want in zip(draws, sizes) if want):
            return RandomStartPlan(margin_frames, sizes, False, draws)
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
    """Start frames per split (absolute frame indices), drawn as the peers do: each split's draw removes
    all it drew from the pool, then its first ``kept_sizes`` are kept."""
    rng = np.random.RandomState(seed)  # the legacy global generator's stream, without touching global state
    taken = np.zeros(n_frames - 1 - 2 * plan.margin_frames, dtype=bool)
    starts = {}
    for name, drawn, kept in zip(SPLITS, plan.draw_sizes or plan.sizes, plan.kept_sizes):
        chosen = rng.choice(np.flatnonzero(~taken), size=drawn, replace=False)
        taken[chosen] = True
        starts[name] = chosen[:kept] + plan.margin_frames
    return starts
