"""Which frames of its input files a model was trained on, and how far a test start lies from them.

``train`` records a compact description of its training windows beside the weights
(:func:`describe_training_windows`); ``evaluate`` compares the starts it scores with it when the file it
reads is one of those inputs (same blake3 fingerprint, :func:`distance_to_training`).

Frames are the input file's own frame numbers (``frame_stride`` and ``stride_phases`` applied). A window's
*start* is its last history frame ``s`` (as for the evaluation protocols); it spans the input frames
``s − (m−1)·k … s + H·k`` (k = frame_stride, m history and H target frames). The distance of a test
start ``t`` to a training window is the number of input frames between ``t`` and that span, 0 when ``t``
lies inside it (the test start is one of the frames a training window covers, or between two of them).
"""

from __future__ import annotations

import numpy as np

COVERAGE_FORMAT = 1


def _runs(starts: np.ndarray) -> list[list[int]]:
    """Sorted frame numbers as runs ``[first, last, step]`` (an arithmetic progression each, last included)."""
    runs: list[list[int]] = []
    if len(starts) and (len(starts) < 3 or np.all(np.diff(starts) == starts[1] - starts[0])):
        step = int(starts[1] - starts[0]) if len(starts) > 1 else 1
        return [[int(starts[0]), int(starts[-1]), step]]
    for frame in (int(s) for s in starts):
        if runs:
            first, last, step = runs[-1]
            if first == last:
                runs[-1] = [first, frame, frame - first]
                continue
            if frame - last == step:
                runs[-1][1] = frame
                continue
        runs.append([frame, frame, 1])
    return runs


def describe_training_windows(dataset) -> dict:
    """The training windows of ``dataset`` (a :class:`~.windows.WindowDataset` of the train split) per input
    file: its path, blake3 and the window starts in its own frame numbers, as runs."""
    manifest = dataset.manifest
    stride = int(manifest["frame_stride"])
    window_sources, first_frames = dataset.window_locations()
    inputs: dict[str, dict] = {}
    for source in manifest["sources"]:  # the phases of one input file share its path
        strided = first_frames[window_sources == int(source["index"])] + dataset.history_frames - 1
        entry = inputs.setdefault(source["path"], {"path": source["path"], "blake3": source.get("blake3"),
                                                   "starts": []})
        entry["starts"].append(int(source.get("frame_offset", 0)) + strided * stride)
    for entry in inputs.values():
        starts = np.unique(np.concatenate(entry.pop("starts")))
        entry.update(n_windows=int(len(starts)), start_runs=_runs(starts))
    inputs = [entry for entry in inputs.values() if entry["n_windows"]]
    return {"format": COVERAGE_FORMAT, "dataset": str(dataset.dataset_dir),
            "split_method": manifest["split"]["method"], "frame_stride": stride,
            "history_frames": dataset.history_frames, "horizon_frames": dataset.horizon_frames,
            "n_windows": len(dataset), "inputs": inputs}


def _nearest_in_run(t: np.ndarray, first: int, last: int, step: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per t: the distance max(0, s − hi, lo − s) from the nearest s = first, first+step, …, last to [lo, hi]
    (with lo = t − H·k and hi = t + (m−1)·k: the distance from t to the span of the window starting at s)."""
    n = (last - first) // step + 1
    best = np.full(t.shape, np.inf)
    for edge in (lo, hi):
        base = np.floor((edge - first) / step)
        for i in (base, base + 1):
            s = first + np.clip(i, 0, n - 1) * step
            best = np.minimum(best, np.maximum(0, np.maximum(s - hi, lo - s)))
    return best


def distance_to_training(description: dict | None, fingerprint: str | None, start_frames) -> dict:
    """How close the test starts ``start_frames`` (frames of the file with blake3 ``fingerprint``) lie to the
    training windows of ``description``: status "unknown" (no description: a model exported before models
    recorded their training data), "independent" (the file is no training input) or "shared" with the min
    and median distance in frames to the nearest training window (0 = inside one) and to the nearest
    training start."""
    if not description:
        return {"status": "unknown"}
    match = [entry for entry in description.get("inputs", []) if fingerprint and entry.get("blake3") == fingerprint]
    if not match:
        return {"status": "independent"}
    t = np.asarray(start_frames, dtype=np.float64)
    stride = description["frame_stride"]
    before = (description["history_frames"] - 1) * stride
    after = description["horizon_frames"] * stride
    to_window, to_start = np.full(t.shape, np.inf), np.full(t.shape, np.inf)
    for entry in match:
        for first, last, step in entry["start_runs"]:
            step = max(int(step), 1)
            to_window = np.minimum(to_window, _nearest_in_run(t, first, last, step, t - after, t + before))
            to_start = np.minimum(to_start, _nearest_in_run(t, first, last, step, t, t))
    return {"status": "shared", "training_input": match[0]["path"],
            "training_windows": sum(entry["n_windows"] for entry in match), "test_starts": int(len(t)),
            "to_window_frames": {"min": float(to_window.min()), "median": float(np.median(to_window))},
            "to_start_frames": {"min": float(to_start.min()), "median": float(np.median(to_start))},
            "inside_training_window": int((to_window == 0).sum())}
