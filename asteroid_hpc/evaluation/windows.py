"""The ``window`` protocol: the windows of one split of a preprocessed dataset, as training sees them."""

from __future__ import annotations

import os

import numpy as np

from ..errors import user_error
from .protocols import ProtocolSamples, subsample


def window_samples(dataset_dir: str | os.PathLike, *, split: str, history_frames: int, horizon_frames: int,
                   max_samples: int | None = None, seed: int = 0) -> ProtocolSamples:
    """Every window (or a seeded subset of ``max_samples``) of ``split``: ``history_frames`` dataset frames,
    then ``horizon_frames`` target frames. Lead times count dataset frames (``manifest["timestep_fs"]`` apart)."""
    from ..data import WindowDataset

    dataset = WindowDataset(dataset_dir, split, history_frames, horizon_frames)
    try:
        if len(dataset) == 0:
            raise user_error(dataset_dir, f"no {split} windows of {history_frames}+{horizon_frames} frames")
        indices = subsample(np.arange(len(dataset)), max_samples, seed)
        items = [dataset[int(i)] for i in indices]
        starts = np.array([dataset.window_location(int(i))[1] + history_frames - 1 for i in indices])
    finally:
        dataset.close()
    notes = [] if len(indices) == len(dataset) else [
        f"--max-samples: {len(indices)} of {len(dataset)} windows (random subset, seed {seed})"]
    stride = dataset.manifest["frame_stride"]
    notes.append("constant velocity (1-frame) is not scored: the peers' input velocity needs the input file's "
                 "frame just after each start, which a dataset's windows hold only as their first target "
                 f"(data.frame_stride={stride})")
    manifest = dataset.manifest
    return ProtocolSamples(
        "window", split, np.stack([item["history"].numpy() for item in items]),
        np.stack([item["target"].numpy() for item in items]), dataset.atomic_numbers_np,
        np.arange(dataset.n_atoms), np.arange(1, horizon_frames + 1), 1, dataset.timestep_fs, starts,
        settings={"dataset_split": manifest["split"].get("method"), "frame_stride": manifest["frame_stride"],
                  "history_frames": history_frames, "horizon_frames": horizon_frames},
        notes=notes, cell=np.stack([item["cell"][history_frames - 1].numpy() for item in items])
        if "cell" in items[0] else None)
