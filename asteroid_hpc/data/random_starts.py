"""Protocol A's random start frames (GMN/EGNO/ATOM), one implementation for `preprocess`'s random_start
split and for `evaluate`'s protocols A and B.

The peers' recipe (GMN/EGNO code): ``x = R[:-1]`` (the last frame has no forward velocity), candidates
``x[margin:-margin]`` (n of them), ``numpy.random.seed(seed)``, then ``int(0.1·n)`` train, ``int(0.05·n)``
val and ``int(0.05·n)`` test starts drawn one after another without replacement, each from what the
earlier draws left, and only then the first 500 / 2000 / 2000 of each kept. A start ``s`` is the last
observed frame. A trajectory too short for the margin and sizes asked for (not the peers' setting) gets
the smallest margin that fits the history and the last target, and sizes scaled down in proportion,
drawn directly.

``data.random_start_draw=peers`` (:func:`peers_starts_on_phases`) draws once on each input file's own frames,
whatever the frame stride, and gives each start to the stride phase that holds it: the peers' starts exactly.
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


def peers_starts_on_phases(sources, data, history_frames: int, horizon_frames: int) -> dict[str, list[list[int]]]:
    """``data.random_start_draw=peers``: the peers' draw on each input file's own frames (not on a
    subsampling), every start given to the phase that holds it. ``sources`` are the plan's sources (the
    phases of one input share its ``path``; ``frame_offset`` is a phase's first raw frame), ``data`` the
    DataConfig (its frame stride, split seed, margin and counts, in the input's own frames); returns
    ``{split: [[source index, strided frame], ...]}`` in the draw's order, input after input, each input
    drawn with the same seed (as ``evaluate`` draws each file). A start ``s`` is a window's last history
    frame, so with history and targets ``frame_stride`` raw frames apart its forecast begins at raw frame
    ``s + frame_stride``, as protocol A's at that history stride. UserError when an input is too short for
    the unscaled recipe or a start lies on no phase (fewer phases than ``frame_stride``)."""
    frame_stride, margin_frames, sizes = data.frame_stride, data.random_start_margin_frames, \
        tuple(data.random_start_counts)
    starts: dict[str, list[list[int]]] = {name: [] for name in SPLITS}
    by_path: dict[str, list] = {}
    for source in sources:
        by_path.setdefault(source.path, []).append(source)
    before, after = (history_frames - 1) * frame_stride, horizon_frames * frame_stride
    for path, phases in by_path.items():
        n_raw = phases[0].n_frames_raw
        try:
            plan = random_start_plan(n_raw, before_frames=before, after_frames=after, margin_frames=margin_frames,
                                     sizes=sizes)
        except UserError:
            plan = None
        if plan is None or plan.scaled:
            raise UserError(f"{path}: {n_raw} frames are too few for the peers' draw (data.random_start_draw=peers): "
                            f"{'/'.join(map(str, sizes))} starts from frames [{margin_frames} : -{margin_frames}], a "
                            f"margin that must hold {before} history and {after} target frames; it is not scaled down")
        phase_at = {int(source.frame_offset): source for source in phases}
        for name, drawn in random_start_split(n_raw, plan, data.split_seed).items():
            for s in (int(s) for s in drawn):
                phase = phase_at.get(s % frame_stride)
                if phase is None:
                    raise UserError(f"{path}: the peers' {name} start {s} lies on none of the {len(phases)} phases of "
                                    f"data.frame_stride={frame_stride}: set data.stride_phases={frame_stride}")
                starts[name].append([phase.index, (s - int(phase.frame_offset)) // frame_stride])
    return starts
