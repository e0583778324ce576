"""The mean structure of a dataset's training frames: the reference a forecast of an isolated molecule
can fall back to once its motion has lost its phase (``model.reference_structure``).

The mean is taken in the molecule's own frame: frames are superposed (Kabsch) onto the running mean and
averaged, a few times over, so that the molecule's tumbling does not blur it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import user_error
from ..geometry import kabsch_superpose
from .amber import AmberReader
from .manifest import inside, read_manifest
from .shards import STATS_SPLITS

READ_FRAMES = 64  # sampled frames read per call
MAX_COORDINATES = 2 ** 24  # sampled coordinates held at once (134 MB as float64)
SUPERPOSE_ITERATIONS = 4  # the mean stops changing (to float32 precision) after 2-3 on xTB-MD17 molecules


def training_mean_structure(dataset_dir: str | os.PathLike, max_frames: int = 4096) -> np.ndarray:
    """Mean structure [N, 3] (Å, centred at the origin) of at most about ``max_frames`` frames spread evenly
    over the training shards (all shards of a random-start dataset, as for the normalisation statistics)."""
    directory = Path(dataset_dir)
    manifest = read_manifest(directory)
    shards = [s for s in manifest["shards"] if s["split"] in STATS_SPLITS]
    total = sum(s["frame_stop"] - s["frame_start"] for s in shards)
    if total == 0:
        raise user_error(directory, "no training frames to take a reference structure from")
    max_frames = max(1, min(max_frames, MAX_COORDINATES // (3 * int(manifest["n_atoms"]))))  # large systems
    every = max(1, -(-total // max_frames))
    frames = []
    for shard in shards:
        with AmberReader(inside(directory, shard["file"], directory)) as reader:
            for first in range(0, reader.n_frames, every * READ_FRAMES):  # bounded memory for large systems
                chunk = reader.read(first, min(reader.n_frames, first + every * READ_FRAMES)).coordinates
                frames.append(np.asarray(chunk[::every], dtype=np.float64))
    frames = np.concatenate(frames)
    finite = np.isfinite(frames).all(axis=(1, 2))
    frames = frames[finite]
    if len(frames) == 0:
        raise user_error(directory, "no finite training frames to take a reference structure from")
    mean = frames[0] - frames[0].mean(axis=0)
    for _ in range(SUPERPOSE_ITERATIONS):
        mean = kabsch_superpose(frames, mean).mean(axis=0)
    return mean - mean.mean(axis=0)
