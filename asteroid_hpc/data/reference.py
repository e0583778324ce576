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
from ..geometry import superposed_mean
from .amber import AmberReader
from .manifest import inside, read_manifest, training_ranges
from .stats import in_ranges

READ_FRAMES = 64  # sampled frames read per call
MAX_COORDINATES = 2 ** 24  # sampled coordinates held at once (134 MB as float64)
SUPERPOSE_ITERATIONS = 4  # the mean stops changing (to float32 precision) after 2-3 on xTB-MD17 molecules


def _sampled_rows(shard: dict, ranges: list[list[int]], every: int) -> np.ndarray:
    """Rows of the shard file holding training frames, every ``every``-th of them (the file keeps only the
    frames not dropped)."""
    dropped = set(shard.get("dropped_frames", ()))
    kept = np.arange(shard["frame_start"], shard["frame_stop"])
    if dropped:
        kept = kept[~np.isin(kept, list(dropped))]
    return np.flatnonzero(in_ranges(ranges, kept))[::every]


def training_mean_structure(dataset_dir: str | os.PathLike, max_frames: int = 4096) -> np.ndarray:
    """Mean structure [N, 3] (Å, centred at the origin) of at most about ``max_frames`` (0: all) frames spread
    evenly over the training frames (the manifest's ``statistics.ranges``, as for the normalisation statistics:
    never a validation or test frame)."""
    directory = Path(dataset_dir)
    manifest = read_manifest(directory)
    ranges = training_ranges(manifest, directory)
    total = sum(b - a for source in ranges.values() for a, b in source)
    if total == 0:
        raise user_error(directory, "no training frames to take a reference structure from")
    max_frames = max(1, min(max_frames or total, MAX_COORDINATES // (3 * int(manifest["n_atoms"]))))  # large systems
    every = max(1, -(-total // max_frames))
    frames = []
    for shard in manifest["shards"]:
        rows = _sampled_rows(shard, ranges.get(str(shard["source"]), []), every)
        if not len(rows):
            continue
        with AmberReader(inside(directory, shard["file"], directory)) as reader:
            first = 0
            while first < len(rows):  # bounded memory for large systems: spans of every × READ_FRAMES rows
                stop = int(np.searchsorted(rows, rows[first] + every * READ_FRAMES))
                group = rows[first:stop]
                chunk = reader.read(int(group[0]), int(group[-1]) + 1).coordinates
                frames.append(np.asarray(chunk[group - group[0]], dtype=np.float64))
                first = stop
    frames = np.concatenate(frames)
    finite = np.isfinite(frames).all(axis=(1, 2))
    frames = frames[finite]
    if len(frames) == 0:
        raise user_error(directory, "no finite training frames to take a reference structure from")
    return superposed_mean(frames, SUPERPOSE_ITERATIONS)


def training_runs(dataset_dir: str | os.PathLike, max_frames: int = 65536) -> list[np.ndarray]:
    """The training frames of a dataset as runs of consecutive frames [T, N, 3] Å (float64; a run ends where a
    shard, a training range or a dropped frame does), at most about ``max_frames`` of them in all: the motion
    from one frame to the next at the dataset's spacing, for what is fitted on it
    (:func:`asteroid_hpc.model.local_geometry.fit_local_geometry`). Never a validation or test frame."""
    directory = Path(dataset_dir)
    manifest = read_manifest(directory)
    ranges = training_ranges(manifest, directory)
    runs, total = [], 0
    for shard in manifest["shards"]:
        rows = _sampled_rows(shard, ranges.get(str(shard["source"]), []), 1)
        if not len(rows) or total >= max_frames:
            continue
        dropped = set(shard.get("dropped_frames", ()))
        frame_numbers = np.array([f for f in range(shard["frame_start"], shard["frame_stop"]) if f not in dropped])
        breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(frame_numbers[rows]) != 1)) + 1
        with AmberReader(inside(directory, shard["file"], directory)) as reader:
            for run in np.split(rows, breaks):
                run = run[:max_frames - total]
                if len(run):
                    frames = np.asarray(reader.read(int(run[0]), int(run[-1]) + 1).coordinates, dtype=np.float64)
                    runs.append(frames)
                    total += len(frames)
    runs = [run for run in runs if np.isfinite(run).all()]
    if not runs:
        raise user_error(directory, "no finite training frames")
    return runs


def dataset_bonds(manifest: dict) -> np.ndarray | None:
    """The bonds [B, 2] among a dataset's atoms (its indices) from the topology it was preprocessed with, when that
    file still exists and holds bonds; None otherwise (callers then find them from covalent radii)."""
    from .topology import read_topology

    path = manifest.get("topology")
    if not path or not Path(path).is_file():
        return None
    index = {int(atom): k for k, atom in enumerate(manifest["atom_indices"])}
    bonds = [(index[i], index[j]) for i, j in read_topology(path).bonds.tolist() if i in index and j in index]
    return np.array(bonds, dtype=np.int64).reshape(-1, 2) if bonds else None
