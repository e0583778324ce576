"""A chunk of consecutive frames, as every trajectory reader returns them, and strided reading in chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np


@dataclass
class FrameChunk:
    """Consecutive frames of one trajectory. ``start`` is the index (in the file) of the first frame;
    with a stride, frame ``i`` of the chunk is file frame ``start + i * stride``."""

    start: int
    coordinates: np.ndarray  # [F, N, 3] angstrom, float32 or float64 as stored
    time_ps: Optional[np.ndarray]  # [F] or None when the file has no usable time
    velocities: Optional[np.ndarray] = None  # [F, N, 3] angstrom/ps, where the reader carries them
    cell: Optional[np.ndarray] = None  # [F, 6] lengths (angstrom) and angles (degrees), where present

    def every(self, stride: int) -> "FrameChunk":
        """Every ``stride``-th frame of this chunk."""
        if stride == 1:
            return self
        pick = slice(None, None, stride)
        return FrameChunk(self.start, self.coordinates[pick], _sliced(self.time_ps, pick),
                          _sliced(self.velocities, pick), _sliced(self.cell, pick))


def _sliced(array: Optional[np.ndarray], index) -> Optional[np.ndarray]:
    return None if array is None else array[index]


def concatenate_chunks(chunks: list[FrameChunk]) -> FrameChunk:
    """Consecutive chunks as one (the first one's ``start``)."""
    def joined(name: str) -> Optional[np.ndarray]:
        parts = [getattr(c, name) for c in chunks]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return FrameChunk(chunks[0].start, joined("coordinates"), joined("time_ps"), joined("velocities"),
                      joined("cell"))


def iter_strided_chunks(reader, chunk_frames: int, start: int = 0, stop: int | None = None,
                        stride: int = 1) -> Iterator[FrameChunk]:
    """Yield frames ``start:stop:stride`` in chunks of at most ``chunk_frames`` frames.

    Small strides read contiguous blocks and subsample them (at most ``chunk_frames * stride`` frames in
    memory); large strides read the wanted frames one by one.
    """
    stop = reader.n_frames if stop is None else min(stop, reader.n_frames)
    wanted = range(start, stop, stride)
    for k in range(0, len(wanted), chunk_frames):
        block = wanted[k:k + chunk_frames]
        if stride == 1:
            yield reader.read(block.start, block.stop)
        elif stride <= 8:
            yield reader.read(block.start, block[-1] + 1).every(stride)
        else:
            yield concatenate_chunks([reader.read(i, i + 1) for i in block])


COLLAPSED = "coordinates all zero (never written?)"


def first_collapsed_frame(coords: np.ndarray) -> int | None:
    """The first frame of ``coords`` [F, N, 3] that was never written, or None: frame 0 when every frame is
    all zero, else the first all-zero frame after a written one (a trajectory may start from zeros, as
    synthetic ones do, but never returns to them). Atoms 0 and 1 first, so one cheap pass."""
    if not coords.size:
        return None
    candidates = np.flatnonzero((coords[:, :2] == 0).all(axis=(1, 2)))
    zero = np.zeros(len(coords), dtype=bool)
    zero[candidates] = (coords[candidates] == 0).all(axis=(1, 2))
    if zero.all():
        return 0
    later = zero & (np.cumsum(~zero) > 0)
    return int(np.argmax(later)) if later.any() else None
