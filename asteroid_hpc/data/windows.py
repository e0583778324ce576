"""Training windows over a preprocessed dataset: ``m`` history frames followed by ``H`` target frames.

A *segment* is a run of consecutive frames of one source in one split (a dropped non-finite frame
ends a segment). Windows may span shard boundaries inside a segment, never segments, sources or splits.
Chronological and by-file splits: every window start in the split's segments, ``window_stride`` apart.
Random-start splits (protocol A): one window per drawn start ``s`` (the last history frame), history
``s-m+1..s`` and targets ``s+1..s+H``; starts whose window meets a dropped frame are skipped. With
``data.random_start_draw=peers`` the starts are the peers' own, drawn on the input's frames and each kept by
the stride phase that holds it (:func:`~.random_starts.peers_starts_on_phases`), in the draw's order.

The window sizes default to the ones the manifest records (:class:`~.manifest.WindowContract`); training
takes exactly those, evaluation may ask for its model's history and its own horizon.

Periodic datasets (manifest ``periodic``): each window also holds its frames' unit cells, ``"cell"`` float64
[m + H, 6] (a, b, c Å, alpha, beta, gamma degrees); open datasets' windows are unchanged. Any stretch of a
source with its cells and velocities: :func:`read_source_frames`.

NetCDF files are opened lazily, per process: no open handle is pickled into DataLoader workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..logs import get_logger
from ..errors import user_error
from .manifest import read_manifest, window_contract
from .random_starts import SPLITS

log = get_logger(__name__)


@dataclass
class Piece:
    """Consecutive frames stored in one shard."""

    file: str
    offset: int  # first frame's index inside the shard file
    frame_start: int  # first frame's (strided) index in its source
    length: int


@dataclass
class Segment:
    source: int
    split: str
    frame_start: int
    pieces: list[Piece] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(p.length for p in self.pieces)


def build_segments(manifest: dict) -> list[Segment]:
    """Cut the manifest's shards into runs of consecutive kept frames and join them across shards."""
    pieces: dict[tuple[int, str], list[Piece]] = {}
    for shard in manifest["shards"]:
        dropped = set(shard.get("dropped_frames", ()))
        if not dropped:
            pieces.setdefault((shard["source"], shard["split"]), []).append(
                Piece(shard["file"], 0, shard["frame_start"], shard["frame_stop"] - shard["frame_start"]))
            continue
        offset, run_start = 0, None
        for frame in range(shard["frame_start"], shard["frame_stop"] + 1):
            kept = frame < shard["frame_stop"] and frame not in dropped
            if kept and run_start is None:
                run_start, run_offset = frame, offset
            if not kept and run_start is not None:
                pieces.setdefault((shard["source"], shard["split"]), []).append(
                    Piece(shard["file"], run_offset, run_start, frame - run_start))
                run_start = None
            offset += kept
    segments: list[Segment] = []
    for (source, split), runs in sorted(pieces.items()):
        runs.sort(key=lambda p: p.frame_start)
        current = None
        for piece in runs:
            if current is None or current.frame_start + current.length != piece.frame_start:
                current = Segment(source, split, piece.frame_start)
                segments.append(current)
            current.pieces.append(piece)
    return segments


class WindowDataset(Dataset):
    """``dataset[i]`` → ``{"history": float32 [m, N, 3], "target": float32 [H, N, 3],
    "atomic_numbers": int64 [N], "index": i}`` (torch tensors) for the windows of one split."""

    def __init__(self, dataset_dir: str | os.PathLike, split: str, history_frames: int | None = None,
                 horizon_frames: int | None = None, window_stride: int = 1) -> None:
        self.dataset_dir = Path(dataset_dir)
        if split not in SPLITS:
            raise user_error(self.dataset_dir, f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        self.manifest = read_manifest(self.dataset_dir)
        contract = window_contract(self.manifest, self.dataset_dir)
        history_frames = contract.history_frames if history_frames is None else history_frames
        horizon_frames = contract.horizon_frames if horizon_frames is None else horizon_frames
        if history_frames is None or horizon_frames is None:
            raise user_error(contract.path, "records no window sizes: give history_frames and horizon_frames")
        if history_frames < 1 or horizon_frames < 1 or window_stride < 1:
            raise ValueError("history_frames, horizon_frames and window_stride must be >= 1")
        self.split = split
        self.history_frames, self.horizon_frames, self.window_stride = history_frames, horizon_frames, window_stride
        self.atomic_numbers_np = np.asarray(self.manifest["atomic_numbers"], dtype=np.int64)
        self.n_atoms = int(self.manifest["n_atoms"])
        self.timestep_fs = float(self.manifest["timestep_fs"])
        self.statistics = self.manifest["statistics"]
        self.periodic = bool(self.manifest.get("periodic"))  # datasets made before cells were stored: False
        self.segments = build_segments(self.manifest)
        span = history_frames + horizon_frames
        method = self.manifest["split"]["method"]
        seg_ids, offsets = [], []
        if method in ("chronological", "by_file"):  # every window inside the split's segments
            gap = self.manifest["split"].get("gap_frames", 0)
            if method == "chronological" and span > gap:
                log.warning("%s: windows of %d frames exceed the %d-frame gap between splits (set at preprocess "
                            "time from history + horizon): neighbouring splits may correlate", self.dataset_dir,
                            span, gap)
            for k, seg in enumerate(self.segments):
                if seg.split == split and seg.length >= span:
                    starts = np.arange(0, seg.length - span + 1, window_stride)
                    seg_ids.append(np.full(len(starts), k))
                    offsets.append(starts)
        else:
            by_source: dict[int, list[int]] = {}
            for k, seg in enumerate(self.segments):
                by_source.setdefault(seg.source, []).append(k)
            skipped = 0
            for source, last_history in self.manifest["split"]["starts"][split]:
                first = last_history - history_frames + 1
                for k in by_source.get(source, []):
                    seg = self.segments[k]
                    if seg.frame_start <= first and first + span <= seg.frame_start + seg.length:
                        seg_ids.append([k])
                        offsets.append([first - seg.frame_start])
                        break
                else:
                    skipped += 1
            if skipped:
                log.warning("%s: %d %s start(s) skipped: their window leaves the trajectory or meets a dropped "
                            "frame", self.dataset_dir, skipped, split)
        self._segment_of = np.concatenate(seg_ids).astype(np.int64) if seg_ids else np.zeros(0, np.int64)
        self._offset_of = np.concatenate(offsets).astype(np.int64) if offsets else np.zeros(0, np.int64)
        self._handles: dict[str, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._segment_of)

    def window_location(self, index: int) -> tuple[int, int]:
        """(source index, strided source frame of the first history frame) of window ``index``."""
        seg = self.segments[int(self._segment_of[index])]
        return seg.source, seg.frame_start + int(self._offset_of[index])

    def window_locations(self) -> tuple[np.ndarray, np.ndarray]:
        """(source index, strided source frame of the first history frame) of every window, as arrays."""
        sources = np.array([seg.source for seg in self.segments], dtype=np.int64)
        frame_starts = np.array([seg.frame_start for seg in self.segments], dtype=np.int64)
        return sources[self._segment_of], frame_starts[self._segment_of] + self._offset_of

    def read_segment(self, segment: int, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` (counted from the segment's first frame) of a segment, float32 [F, N, 3]."""
        return _read_pieces(self.segments[segment], start, stop,
                            lambda file, a, b: np.asarray(self._open(file)["coordinates"][a:b], dtype=np.float32))

    def read_segment_cells(self, segment: int, start: int, stop: int) -> np.ndarray:
        """The unit cells of the same frames, float64 [F, 6] (periodic datasets only)."""
        def cells(file, a, b):
            shard = self._open(file)
            return np.concatenate([shard["cell_lengths"][a:b], shard["cell_angles"][a:b]], axis=1).astype(np.float64)

        return _read_pieces(self.segments[segment], start, stop, cells)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        m = self.history_frames
        frames = self.read_segment(int(self._segment_of[index]), int(self._offset_of[index]),
                                   int(self._offset_of[index]) + m + self.horizon_frames)
        frames = torch.from_numpy(np.ascontiguousarray(frames))
        item = {"history": frames[:m], "target": frames[m:],
                "atomic_numbers": torch.from_numpy(self.atomic_numbers_np), "index": int(index)}
        if self.periodic:  # the frames' cells: a few bytes more per window
            item["cell"] = torch.from_numpy(self.read_segment_cells(
                int(self._segment_of[index]), int(self._offset_of[index]),
                int(self._offset_of[index]) + m + self.horizon_frames))
        return item

    def _open(self, file: str):
        if self._pid != os.getpid():  # forked into a worker: never share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(file)
        if handle is None:
            import netCDF4

            try:
                handle = netCDF4.Dataset(self.dataset_dir / file, "r")
            except OSError as exc:
                raise user_error(self.dataset_dir / file, f"damaged shard, not readable as NetCDF "
                                                          f"({exc.strerror or exc}); re-run preprocess") from None
            handle.set_auto_mask(False)
            self._handles[file] = handle
        return handle

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __del__(self) -> None:
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:
            pass


def _piece_ranges(segment: Segment, start: int, stop: int) -> list[tuple[str, int, int]]:
    """(shard file, first, stop) frame ranges inside the shards that hold frames ``start:stop`` of ``segment``
    (counted from its first frame), in order."""
    ranges = []
    position = 0
    for piece in segment.pieces:
        lo, hi = max(start, position), min(stop, position + piece.length)
        if lo < hi:
            ranges.append((piece.file, piece.offset + lo - position, piece.offset + hi - position))
        position += piece.length
        if position >= stop:
            break
    if start < 0 or sum(b - a for _, a, b in ranges) != stop - start:
        raise IndexError(f"frames {start}:{stop} outside a segment of length {segment.length}")
    return ranges


def _read_pieces(segment: Segment, start: int, stop: int, read) -> np.ndarray:
    """Frames ``start:stop`` of ``segment`` joined across its shards; ``read(file, a, b)`` reads one shard's."""
    out = [read(*r) for r in _piece_ranges(segment, start, stop)]
    return np.concatenate(out) if len(out) != 1 else out[0]


def read_source_frames(dataset_dir: str | os.PathLike, source: int, start: int, stop: int):
    """Strided frames ``start:stop`` of input ``source`` as the dataset stores them, as a
    :class:`~.frames.FrameChunk`: coordinates float32 [F, N, 3] Å (centred if the dataset is), time_ps [F],
    velocities float32 [F, N, 3] Å/ps and cell float64 [F, 6] (None where the dataset has none). The frames
    must be stored consecutively (one split, no dropped frame between them): else a UserError."""
    from .amber_reader import AmberReader
    from .frames import FrameChunk, concatenate_chunks

    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    for segment in build_segments(manifest):
        if segment.source == source and segment.frame_start <= start and stop <= segment.frame_start + segment.length:
            chunks = []
            for file, a, b in _piece_ranges(segment, start - segment.frame_start, stop - segment.frame_start):
                with AmberReader(dataset_dir / file, read_velocities=True) as reader:
                    chunks.append(reader.read(a, b))
            chunk = concatenate_chunks(chunks)
            return FrameChunk(start, chunk.coordinates, chunk.time_ps, chunk.velocities, chunk.cell)
    raise user_error(dataset_dir, f"frames {start}..{stop - 1} of input {source} are not stored consecutively in "
                                  "the dataset (another split, a dropped frame, or past its end)")
