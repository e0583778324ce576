"""The three ways a plan splits its sources into train, val and test (``data.split``), each giving the split's
record (manifest), its parts (source, split, strided frame range) and the training frames by source (module
doc of :mod:`asteroid_hpc.data.plan`): chronological ranges with gaps, whole files held out, random starts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UserError, user_error
from ..logs import get_logger
from .random_starts import SPLITS, peers_starts_on_phases, random_start_plan, random_start_split

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Source

log = get_logger(__name__)


def chronological_ranges(n_frames: int, fractions: list[float], gap: int, where: str,
                         gap_of: str = "history + horizon") -> dict[str, list[int]]:
    """Consecutive train/val/test ranges with ``gap`` unused frames between neighbouring non-empty splits."""
    used = [name for name, f in zip(SPLITS, fractions) if f > 0]
    usable = n_frames - gap * (len(used) - 1)
    if usable < len(used):
        raise user_error(where, f"{n_frames} frames are too few for a chronological split with {gap}-frame gaps "
                                f"({gap_of}) between splits")
    total = sum(f for f in fractions if f > 0)
    sizes = {name: int(np.floor(usable * f / total)) for name, f in zip(SPLITS, fractions) if f > 0}
    sizes[used[-1]] += usable - sum(sizes.values())
    ranges, start = {}, 0
    for name in used:
        ranges[name] = [start, start + sizes[name]]
        start += sizes[name] + gap
    return ranges


def _matching_sources(patterns: list[str], sources: list[Source], option: str) -> set[str]:
    """Absolute paths of the inputs that ``patterns`` (paths or globs) name; each pattern must name one."""
    from .plan import expand_inputs

    paths = {s.path for s in sources}
    named = set()
    for pattern in patterns:
        matches = {os.path.realpath(m) for m in expand_inputs([pattern])}
        if not matches & paths:
            raise user_error(pattern, f"{option}: not one of the preprocess inputs")
        named |= matches & paths
    return named


Part = tuple["Source", str, int, int]  # (source, split name, first frame, stop frame), strided frames
Split = tuple[dict, list[Part], dict[str, list[list[int]]]]  # the split, its parts, training ranges by source


def _merged(intervals: list[tuple[int, int]]) -> list[list[int]]:
    """Sorted, disjoint [start, stop) ranges covering ``intervals`` (touching ones joined)."""
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _check_validation(parts: list[Part], window: int, stride: int, hint: str) -> None:
    """A validation split that was asked for (it has parts) must hold at least one window somewhere:
    otherwise training would silently run without validation. One line, naming the longest part."""
    val = [(b - a, source) for source, name, a, b in parts if name == "val"]
    if val and all(n < window for n, _ in val):
        n, source = max(val, key=lambda v: v[0])
        raise user_error(source.path, f"the validation split holds {n} frames (after data.frame_stride={stride}), "
                                      f"fewer than one window of history + horizon = {window} frames: {hint}")


def chronological_split(sources: list[Source], data, history: int, horizon: int) -> Split:
    gap = history + horizon
    split = {"method": "chronological", "fractions": list(data.split_fractions), "gap_frames": gap,
             "history_frames": history, "horizon_frames": horizon, "ranges": {}}
    parts, training = [], {}
    for source in sources:
        ranges = chronological_ranges(source.n_frames, data.split_fractions, gap, source.path,
                                      f"model.history_frames={history} + data.horizon_frames={horizon}")
        split["ranges"][str(source.index)] = ranges
        parts.extend((source, name, a, b) for name, (a, b) in ranges.items())
        if "train" in ranges:
            training[str(source.index)] = [list(ranges["train"])]
    _check_validation(parts, gap, data.frame_stride, "raise its fraction (data.split_fractions) or give more "
                                                      "frames, or set its fraction to 0 for no validation")
    return split, parts, training


def by_file_split(sources: list[Source], data, history: int, horizon: int) -> Split:
    held_out = {name: _matching_sources(patterns, sources, f"data.{name}_inputs")
                for name, patterns in (("val", data.val_inputs), ("test", data.test_inputs))}
    if held_out["val"] & held_out["test"]:
        raise UserError("data.val_inputs and data.test_inputs name the same input file")
    split = {"method": "by_file", "history_frames": history, "horizon_frames": horizon,
             "inputs": {name: [] for name in SPLITS}}
    parts, training = [], {}
    for source in sources:
        name = next((n for n, paths in held_out.items() if source.path in paths), "train")
        if source.path not in split["inputs"][name]:
            split["inputs"][name].append(source.path)
        parts.append((source, name, 0, source.n_frames))
        if name == "train":
            training[str(source.index)] = [[0, source.n_frames]]
    if not split["inputs"]["train"]:
        raise UserError("data.split=by_file: every input is held out (val/test); none is left to train on")
    _check_validation(parts, history + horizon, data.frame_stride, "name a longer input in data.val_inputs")
    return split, parts, training


def random_start_split_plan(sources: list[Source], data, history: int, horizon: int) -> Split:
    split = {"method": "random_start", "seed": data.split_seed, "counts": list(data.random_start_counts),
             "margin_frames": data.random_start_margin_frames, "history_frames": history,
             "horizon_frames": horizon, "starts": {name: [] for name in SPLITS}}
    parts, training = [], {}
    scaled: dict[tuple[str, str], list[str]] = {}  # (input, what is used) -> its phases: said once
    peers = data.random_start_draw == "peers"
    if peers:  # one draw on each input's own frames, each start given to the phase that holds it
        split.update(draw="peers", starts=peers_starts_on_phases(sources, data, history, horizon))
    for source in sources:
        if peers:
            draws = {"train": [s for k, s in split["starts"]["train"] if k == source.index]}
        else:
            try:
                starts = random_start_plan(source.n_frames, before_frames=history - 1, after_frames=horizon,
                                           margin_frames=data.random_start_margin_frames,
                                           sizes=tuple(data.random_start_counts))
            except UserError as exc:
                raise user_error(source.path, str(exc)) from None
            if starts.scaled:
                split.setdefault("scaled", {})[str(source.index)] = starts.describe()
                phase = (source.frame_offset - source.frames_raw[0]) * data.stride_phases // data.frame_stride
                scaled.setdefault((source.path, starts.describe()), []).append(str(phase))
            # source k draws with seed + k, so a single input reproduces numpy.random.seed(seed) exactly
            draws = random_start_split(source.n_frames, starts, data.split_seed + source.index)
            for name in SPLITS:
                split["starts"][name].extend([source.index, int(s)] for s in draws[name])
        # a window holds history frames up to its start s (the last observed frame) and horizon frames after
        windows = _merged([(int(s) - history + 1, int(s) + horizon + 1) for s in draws["train"]])
        if windows:
            training[str(source.index)] = windows
        parts.append((source, "all", 0, source.n_frames))
    for (path, used), phases in scaled.items():
        which = f" (data.stride_phases: phase{'s' * (len(phases) > 1)} {', '.join(phases)})" \
            if data.stride_phases > 1 else ""
        log.warning("%s%s: too short for the requested random starts; using %s", path, which, used)
    return split, parts, training
