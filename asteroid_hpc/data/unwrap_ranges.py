"""Unwrapping in preprocess: every periodic source (``data.unwrap``) unwrapped as one time series, in ranges
that two passes compose exactly (:mod:`.unwrap`), whichever rank writes which shard.

Range k of a source ends where its k-th shard (in time order) ends and starts where the shard before ends
(frame 0 for the first), so the ranges cover the source without holes: a range also holds the gap frames a
chronological split leaves before its shard (read and unwrapped, never written). Pass 1 moves through each
of this rank's ranges (shard i on rank i mod K) from the frame before it with offset 0 and keeps its shift
S_k; :func:`.unwrap.range_start_offsets` (one broadcast per range) chains the shifts into start offsets;
pass 2, writing the shard, moves through the range again from its start offset. Frames with non-finite
coordinates are dropped by both passes alike (a shard's by ``data.drop_nonfinite``, else refused; a gap's
always: no window reads them); "the frame before a range" is the last kept one.

Resume: a finished shard's shift is recorded in its sidecar (int64, zlib, base64), so a resumed run takes
it from there instead of reading the shard's frames again; a gap is short (history + horizon frames) and is
read again. Offsets are held zlib-compressed between the passes (mostly zeros: a few kB per range).
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError
from ..logs import get_logger
from .plan import Plan, Shard
from .unwrap import Unwrapper, range_start_offsets, selected_bonds

log = get_logger(__name__)

NO_BONDS = "no bonds: atoms unwrapped one by one, molecules may stay split across the box"


@dataclass
class Start:
    """Where the unwrapping of one shard's range begins: its first frame (strided), the offset of the frame
    before it (None: the source's first range, molecules made whole there) and the selected atoms' bonds."""

    range_start: int
    offset: np.ndarray | None
    bonds: np.ndarray | None


def encode_offset(offset: np.ndarray) -> str:
    """An int64 offset [N, 3] as text (zlib, base64): exact, small (mostly zeros)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(offset, dtype="<i8").tobytes(), 1)).decode()


def decode_offset(text: str, n_atoms: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i8").reshape(n_atoms, 3).astype(np.int64)


def step_hint(stride: int) -> str:
    """How a user gets past a refused step (the end of its one line)."""
    if stride > 1:
        return (f"frames too far apart to unwrap at data.frame_stride={stride}: use a smaller data.frame_stride "
                "(or data.unwrap=false if the input needs no unwrapping)")
    return ("the input's frames are too far apart to unwrap: select atoms that move less between frames (e.g. "
            "no water), save frames more often, or set data.unwrap=false to keep the file's coordinates")


def chains(plan: Plan) -> dict[int, list[tuple[Shard, int]]]:
    """Per source, its shards in time order with the first frame of each one's range."""
    out: dict[int, list[tuple[Shard, int]]] = {}
    for shard in sorted(plan.shards, key=lambda s: (s.source, s.frame_start)):
        chain = out.setdefault(shard.source, [])
        chain.append((shard, chain[-1][0].frame_stop if chain else 0))
    return out


def selected_topology_bonds(plan: Plan) -> np.ndarray | None:
    """The bonds [B, 2] between the selected atoms (numbered within the selection), from ``--topology``;
    None when it gives none (atoms are then unwrapped one by one)."""
    if plan.topology is None:
        return None
    from .topology import read_topology

    topology = read_topology(plan.topology)
    bonds = selected_bonds(topology.bonds, plan.atom_indices, topology.n_atoms)
    return bonds if len(bonds) else None


def last_kept_frame(reader, frames, before: int) -> np.ndarray | None:
    """The selected coordinates (float32 [n, 3]) of the last frame before strided frame ``before`` that has
    finite ones (the frame before a range), or None when there is none."""
    for frame in range(before - 1, -1, -1):
        raw = frames.raw_frame(frame)
        x, _, _ = frames.select(reader.read(raw, raw + 1).coordinates, frame, gap=True)
        if len(x):
            return x[0]
    return None


def unwrapper_at(reader, frames, start: Start, hint: str) -> Unwrapper:
    """An Unwrapper positioned just before frame ``start.range_start`` (offset ``start.offset``; 0: pass 1)."""
    if start.range_start > 0:
        before = last_kept_frame(reader, frames, start.range_start)
        if before is not None:
            return Unwrapper.after(before, start.offset, frames.path, hint)
    # the source's first range, or every frame before this one dropped: the offsets before are all 0
    return Unwrapper(frames.n_selected, start.bonds, frames.path, hint)


def advance(reader, frames, unwrapper: Unwrapper, start: int, stop: int, chunk_frames: int, gap: bool) -> None:
    """Move ``unwrapper`` through strided frames [start, stop) without producing them."""
    if stop <= start:
        return
    stride = frames.stride
    for chunk in reader.iter_chunks(chunk_frames, frames.raw_frame(start), frames.raw_frame(stop - 1) + 1, stride):
        first = (chunk.start - frames.frame_offset) // stride
        x, _, index = frames.select(chunk.coordinates, first, gap=gap)
        if len(x):
            cell = None if chunk.cell is None else chunk.cell[index - first]
            frames.cells(cell, index)  # the shard checks first (a cell that changes shape: that line)
            unwrapper.advance(x, cell, frames.raw_frames(index))


def range_shift(reader, frames, shard: Shard, range_start: int, bonds, chunk_frames: int, hint: str) -> np.ndarray:
    """Pass 1 of one range: its shift S_k, int64 [n, 3] (the offset at its end, from 0 at its start)."""
    unwrapper = unwrapper_at(reader, frames, Start(range_start, None, bonds), hint)
    advance(reader, frames, unwrapper, range_start, shard.frame_start, chunk_frames, gap=True)
    advance(reader, frames, unwrapper, shard.frame_start, shard.frame_stop, chunk_frames, gap=False)
    return np.zeros((frames.n_selected, 3), np.int64) if unwrapper.offset is None else unwrapper.offset


def unwrap_starts(plan: Plan, world, mine: set[int], shift_of: Callable[[Shard, int], np.ndarray | None]
                  ) -> tuple[dict[int, str | None], tuple[int, str] | None]:
    """Pass 1 on every rank and the chaining: {shard index: its start offset (encoded; None: the source's
    first range)} for this rank's shards ``mine``, and the first error of any rank ((shard index, message),
    the same on every rank) or None. ``shift_of(shard, range_start)`` gives a range's shift (pass 1, or
    recorded; raises UserError for bad input). Collective: every rank calls it."""
    starts: dict[int, str | None] = {}
    for chain in chains(plan).values():  # one source at a time: its offsets only in memory
        shifts: dict[int, np.ndarray] = {}
        error: tuple[int, str] | None = None
        for k, (shard, range_start) in enumerate(chain):
            if shard.index in mine and error is None:
                try:
                    shifts[k] = shift_of(shard, range_start) if k < len(chain) - 1 \
                        else np.zeros((len(plan.atom_indices), 3), np.int64)  # the last range's is never used
                except UserError as exc:
                    error = (shard.index, str(exc))
        errors = [e for e in world.allgather(error) if e is not None]
        if errors:
            return {}, min(errors)
        owners = [shard.index % world.size for shard, _ in chain]
        for k, offset in range_start_offsets(world, owners, shifts).items():
            starts[chain[k][0].index] = None if k == 0 else encode_offset(offset)
    return starts, None
