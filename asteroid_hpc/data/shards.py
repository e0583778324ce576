"""One shard of a dataset: the frames of one (source, split, block) streamed from the input trajectory into
an AMBER NetCDF file (selected, checked, unwrapped, centred), with their statistics, and the sidecar that lets
a re-run keep a finished shard (plan key, size and sha256; the shard's unwrapping shift).

Periodic inputs with ``data.unwrap`` are unwrapped before centring (:mod:`.unwrap_ranges`: pass 1 in
:class:`UnwrapPassOne`, pass 2 in :func:`write_shard`): whole molecules, no jump across the box.

Velocities (of the selected atoms) and unit cells are stored with the frames when the inputs have them
(:attr:`Plan.velocities`, :attr:`Plan.periodic`); every chunk's cells are checked (:class:`.cells.CellCheck`).
Centring (``data.center``) subtracts each frame's centroid from its coordinates: a translation of the whole
frame, which leaves every minimum-image vector and the cell unchanged (the AMBER cell has no origin), so a
periodic system stays the same system; the coordinates then no longer lie in [0, L) (with data.unwrap=false,
a wrapped trajectory's centroid jumps when atoms cross a face).
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from ..atomic import write_json_atomic
from ..checksum import file_digest
from ..errors import user_error
from ..logs import get_logger
from .amber import AmberWriter
from .cells import CellCheck
from .frames import COLLAPSED, FrameChunk, first_collapsed_frame
from .plan import Plan, Shard, Source
from .readers import TrajectoryReader
from .stats import RunningMoments, in_ranges
from .unwrap import OFFSET_UNIT_ANGSTROM, Unwrapper
from .unwrap_ranges import (NO_BONDS, Start, advance, chains, decode_offset, encode_offset, range_shift,
                            selected_topology_bonds, step_hint, unwrap_starts, unwrapper_at)

log = get_logger(__name__)

MAX_CHUNK_BYTES = 32 << 20


class _Frames:
    """Selection, checks, unwrapping (periodic inputs, data.unwrap: :attr:`unwrapper`, set per shard) and
    centring applied to every chunk of input frames, in that order (centring wrapped coordinates would be
    meaningless)."""

    def __init__(self, plan: Plan, center: bool, drop_nonfinite: bool, source: Source) -> None:
        self.atom_indices = None if plan.atom_indices == list(range(plan.sources[0].n_atoms)) \
            else np.asarray(plan.atom_indices)
        self.n_selected = len(plan.atom_indices)
        self.center = center
        self.drop_nonfinite = drop_nonfinite
        self.path = source.path
        self.stride, self.frame_offset = plan.frame_stride, source.frame_offset
        self.raw_frame = partial(plan.raw_frame, source.index)  # strided frame -> the input file's frame
        self.cells = CellCheck(source.cell, source.path, self.raw_frame)
        self.periodic, self.velocities = plan.periodic, plan.velocities
        self.unwrapper: Unwrapper | None = None

    def raw_frames(self, index: np.ndarray) -> np.ndarray:
        """The input file's frame numbers of strided frames ``index``."""
        return self.frame_offset + np.asarray(index) * self.stride

    def select(self, coords: np.ndarray, first_frame: int, gap: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kept frames float32 [F', n, 3] of the selected atoms, their coordinate sums [F', 3], their strided
        frame indices), in one pass for the checks and the sums (a matrix product with ones). Non-finite
        frames are refused, or dropped with data.drop_nonfinite; ``gap``: frames no shard holds (read only
        to unwrap through them): non-finite ones dropped, no further checks."""
        x = coords if self.atom_indices is None else coords[:, self.atom_indices]
        x = np.ascontiguousarray(x, dtype=np.float32)  # readers return fresh arrays: no copy when float32
        if not x.flags.writeable:  # e.g. np.frombuffer over the bytes of an .npz member
            x = x.copy()
        index = first_frame + np.arange(len(x))
        sums = np.matmul(np.ones(x.shape[1], dtype=np.float32), x)  # [F, 3]; NaN/Inf in a frame spreads to its sum
        finite = np.isfinite(sums).all(axis=1)
        if not finite.all():
            if not (self.drop_nonfinite or gap):
                bad = self.raw_frame(int(index[np.argmin(finite)]))
                raise user_error(self.path, f"non-finite coordinates (NaN or Inf) in frame {bad}; pass "
                                            "--drop-nonfinite to skip such frames")
            x, sums, index = x[finite], sums[finite], index[finite]
        collapsed = None if gap else first_collapsed_frame(x)
        if collapsed is not None:
            raise user_error(self.path, f"frame {self.raw_frame(int(index[collapsed]))}: {COLLAPSED}")
        return x, sums, index

    def __call__(self, coords: np.ndarray, first_frame: int, cell: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(kept frames float32 [F', n, 3], their strided frame indices): selected and checked, unwrapped
        (``cell``: the chunk's cells [F, 6]), centred in place."""
        x, sums, index = self.select(coords, first_frame)
        kept = None if cell is None else cell[index - first_frame]
        self.cells(kept, index)
        if self.unwrapper is not None and len(x):
            x = self.unwrapper(x, kept, self.raw_frames(index)).astype(np.float32)
            sums = np.matmul(np.ones(x.shape[1], dtype=np.float32), x)
        return self.centred(x, sums), index

    def centred(self, x: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """``x`` [F, n, 3] float32 minus each frame's centroid (``sums`` / n), in place (data.center)."""
        if self.center and len(x):
            centroid = sums / np.float32(x.shape[1])
            for k in range(3):  # per component: a strided pass, faster than broadcasting over [F, n, 3]
                x[:, :, k] -= centroid[:, k, None]
        return x

    def extras(self, chunk: FrameChunk, index: np.ndarray, first: int) -> dict:
        """The kept frames' velocities (selected atoms) and cells (checked by :meth:`__call__`), as
        AmberWriter.append takes them."""
        kept = index - first
        out = {}
        if self.periodic:
            out = {"cell_lengths": chunk.cell[kept, :3], "cell_angles": chunk.cell[kept, 3:]}
        if self.velocities:
            v = None if chunk.velocities is None else chunk.velocities[kept]
            v = v if v is None or self.atom_indices is None else v[:, self.atom_indices]
            finite = np.zeros(len(kept), dtype=bool) if v is None else np.isfinite(v).all(axis=(1, 2))
            if not finite.all():
                raise user_error(self.path, f"frame {self.raw_frame(int(index[np.argmin(finite)]))} has no "
                                            "(finite) velocities, but the file has velocities")
            out["velocities"] = v
        return out


class _ShardStatistics:
    """Coordinate and displacement moments of every ``every``-th training frame (displacement: from the
    frame before it, when that is a training frame too), accumulated chunk by chunk; ``training``: the
    source's training ranges; ``last`` is the frame before the current chunk."""

    def __init__(self, every: int, training: list[list[int]], last: tuple[np.ndarray, int] | None) -> None:
        self.every = every
        self.training = training
        self.last = last
        self.coordinates, self.displacements = RunningMoments(), RunningMoments()

    def update(self, x: np.ndarray, index: np.ndarray) -> None:
        training = in_ranges(self.training, index)
        picked = np.flatnonzero((index % self.every == 0) & training)
        if len(picked):
            self.coordinates.update_vectors(x[picked])
            inner = picked[picked > 0]
            inner = inner[(index[inner - 1] == index[inner] - 1) & training[inner - 1]]
            self.displacements.update_vectors(x[inner] - x[inner - 1])
            if picked[0] == 0 and self.last is not None and self.last[1] == index[0] - 1 \
                    and in_ranges(self.training, [self.last[1]])[0]:
                self.displacements.update_vectors((x[0] - self.last[0])[None])
        self.last = (x[-1].copy(), int(index[-1]))


def stats_every(plan: Plan, max_frames: int) -> int:
    """q: the statistics use training frames whose (strided) index is a multiple of q, so that at most
    about ``max_frames`` training frames are read for them (0: every frame)."""
    n_frames = plan.training["count"]
    return max(1, -(-n_frames // max_frames)) if max_frames > 0 else 1


def _training_ranges(plan: Plan, shard: Shard) -> list[list[int]]:
    """The training ranges of the shard's source that meet the shard's frames (the statistics' frames)."""
    return [r for r in plan.training["ranges"].get(str(shard.source), [])
            if r[0] < shard.frame_stop and r[1] > shard.frame_start]


def _previous_frame(reader: TrajectoryReader, frames: _Frames, frame: int,
                    offset: np.ndarray | None) -> tuple[np.ndarray, int] | None:
    """The frame just before a shard (same source and split), for the displacement across the boundary,
    or None when it is non-finite (dropped or reported by the shard holding it). ``offset``: its unwrapping
    offset (int64 [n, 3]; the shard's start offset), None when not unwrapped."""
    coords = reader.read(frames.raw_frame(frame), frames.raw_frame(frame) + 1).coordinates
    x, sums, _ = frames.select(coords, frame, gap=True)
    if not len(x):
        return None
    if offset is not None:  # as Unwrapper.__call__ gives it: raw + offset, in float64
        x = (x.astype(np.float64) + offset * OFFSET_UNIT_ANGSTROM).astype(np.float32)
        sums = np.matmul(np.ones(x.shape[1], dtype=np.float32), x)
    return frames.centred(x, sums)[0], frame


def _chunk_frames(n_atoms: int, stride: int, wanted: int) -> int:
    """Frames per read: ``data.chunk_frames``, capped so that one chunk of raw (float64) frames stays
    within MAX_CHUNK_BYTES (a strided read of up to 8 frames per kept frame reads them all)."""
    raw_frame_bytes = n_atoms * 3 * 8 * (stride if stride <= 8 else 1)
    return max(1, min(wanted, MAX_CHUNK_BYTES // raw_frame_bytes))


class _Clock:
    """The times of the kept frames: the file's own, checked to increase across chunks, else index × timestep."""

    def __init__(self, frames: _Frames, timestep_ps: float) -> None:
        self.frames, self.timestep_ps = frames, timestep_ps
        self.first: float | None = None
        self.last: float | None = None

    def __call__(self, time_ps: np.ndarray | None, index: np.ndarray, first: int) -> np.ndarray:
        if time_ps is None:
            return index * self.timestep_ps
        t = time_ps[index - first]
        check = np.concatenate([[self.last], t]) if self.last is not None else t
        bad = np.flatnonzero(np.diff(check) <= 0)
        if len(bad):
            raw = self.frames.raw_frame(int(index[bad[0] + (0 if self.last is not None else 1)]))
            raise user_error(self.frames.path, f"time is not increasing (non-monotonic time) at frame {raw}")
        return t

    def written(self, t: np.ndarray) -> None:
        self.first = float(t[0]) if self.first is None else self.first
        self.last = float(t[-1])


def _stream(chunks: Iterator, writer: AmberWriter, frames: _Frames, clock: _Clock, stats: _ShardStatistics | None,
            frame_offset: int, stride: int) -> tuple[int, list[int]]:
    """Check, transform and append every chunk; (frames written, strided indices of the dropped frames).

    One I/O thread makes every netCDF call, in order (the C library is not thread-safe): it reads chunk
    k+1 and writes chunk k-1 while this thread checks and transforms chunk k."""
    io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netcdf-io")
    dropped: list[int] = []
    n_written = 0
    pending_write: Future | None = None
    try:
        next_chunk = io.submit(next, chunks, None)
        while (chunk := next_chunk.result()) is not None:
            next_chunk = io.submit(next, chunks, None)
            first = (chunk.start - frame_offset) // stride
            x, index = frames(chunk.coordinates, first, chunk.cell)
            if len(index) < len(chunk.coordinates):
                dropped.extend(sorted(set(range(first, first + len(chunk.coordinates))) - set(index.tolist())))
            t = clock(chunk.time_ps, index, first)
            if not len(x):
                continue
            extras = frames.extras(chunk, index, first)
            if stats is not None:
                stats.update(x, index)
            if pending_write is not None:
                pending_write.result()
            pending_write = io.submit(writer.append, x, time_ps=t, **extras)
            clock.written(t)
            n_written += len(x)
        if pending_write is not None:
            pending_write.result()
    finally:
        io.shutdown(wait=True)
    return n_written, dropped


def write_shard(reader: TrajectoryReader, plan: Plan, shard: Shard, cfg, outdir: Path,
                linked_to_previous: bool, every: int, start: Start | None = None) -> dict:
    """Stream the shard's frames into its NetCDF file; return its record (without size and checksum).
    ``every``: the statistics sample every ``every``-th frame (:func:`stats_every`); ``start``: where the
    unwrapping of the shard's range begins (pass 2, :mod:`.unwrap_ranges`), None: not unwrapped."""
    data = cfg.data
    source = plan.sources[shard.source]
    frames = _Frames(plan, data.center, data.drop_nonfinite, source)
    chunk_frames = _chunk_frames(source.n_atoms, plan.frame_stride, data.chunk_frames)
    if start is not None:  # through the gap before the shard (if any) to its first frame
        frames.unwrapper = unwrapper_at(reader, frames, start, step_hint(plan.frame_stride))
        advance(reader, frames, frames.unwrapper, start.range_start, shard.frame_start, chunk_frames, gap=True)
    clock = _Clock(frames, plan.timestep_fs / 1000.0)
    stats = None
    training = _training_ranges(plan, shard)
    if training:
        crosses = in_ranges(training, [shard.frame_start - 1, shard.frame_start]).all()  # frame before: training
        before = _previous_frame(reader, frames, shard.frame_start - 1, start and start.offset) \
            if linked_to_previous and crosses and shard.frame_start % every == 0 else None
        stats = _ShardStatistics(every, training, before)
    writer = AmberWriter(outdir / shard.file, len(plan.atom_indices), plan.atomic_numbers,
                         cell=plan.periodic, velocities=plan.velocities, timestep_ps=clock.timestep_ps, program="asteroid-hpc preprocess",
                         compression=data.compression, chunk_frames=min(chunk_frames, 256),
                         attributes={"source_index": shard.source, "source_frame_start": shard.frame_start})
    chunks = reader.iter_chunks(chunk_frames, frames.raw_frame(shard.frame_start),
                                frames.raw_frame(shard.frame_stop - 1) + 1, plan.frame_stride)
    try:
        n_written, dropped = _stream(chunks, writer, frames, clock, stats, source.frame_offset, plan.frame_stride)
        if n_written == 0:
            raise user_error(source.path, f"every frame of {shard.frame_start}..{shard.frame_stop - 1} (strided) "
                                          "is non-finite")
    except BaseException:
        writer.discard()
        raise
    writer.close()
    return {"index": shard.index, "file": shard.file, "source": shard.source, "split": shard.split,
            "frame_start": shard.frame_start, "frame_stop": shard.frame_stop, "n_frames": n_written,
            "dropped_frames": dropped, "time_first_ps": clock.first, "time_last_ps": clock.last,
            "box_changes": frames.cells.box_changed,
            "coordinate_moments": (stats.coordinates if stats else RunningMoments()).to_dict(),
            "displacement_moments": (stats.displacements if stats else RunningMoments()).to_dict()}


class UnwrapPassOne:
    """Pass 1 of the unwrapping of this rank's shards and where pass 2 of each begins (:mod:`.unwrap_ranges`):
    a finished shard's shift comes from its sidecar, the others' from their frames (kept for their sidecars).
    Collective: every rank runs it."""

    def __init__(self, plan: Plan, cfg, outdir: Path, w, mine: list[Shard], done: dict, readers) -> None:
        self.plan, self.cfg, self.outdir, self.done, self.readers = plan, cfg, outdir, done, readers
        self.n = len(plan.atom_indices)
        self.bonds = selected_topology_bonds(plan)
        if self.bonds is None and w.rank == 0:
            log.info(NO_BONDS)
        self.shifts: dict[int, str] = {}  # shard index -> its shift (encoded), computed here
        self.range_start = {shard.index: a for chain in chains(plan).values() for shard, a in chain}
        self.starts, self.error = unwrap_starts(plan, w, {s.index for s in mine}, self._shift)

    def _shift(self, shard: Shard, range_start: int) -> np.ndarray:
        recorded = sidecar_entry(self.outdir, shard, "unwrap_shift") if self.done[shard.index] is not None else None
        if recorded is not None:
            return decode_offset(recorded, self.n)
        plan, data = self.plan, self.cfg.data
        source = plan.sources[shard.source]
        frames = _Frames(plan, data.center, data.drop_nonfinite, source)
        shift = range_shift(self.readers(shard), frames, shard, range_start, self.bonds,
                            _chunk_frames(source.n_atoms, plan.frame_stride, data.chunk_frames),
                            step_hint(plan.frame_stride))
        self.shifts[shard.index] = encode_offset(shift)
        return shift

    def start(self, shard: Shard) -> Start:
        offset = self.starts[shard.index]
        return Start(self.range_start[shard.index], None if offset is None else decode_offset(offset, self.n),
                     self.bonds)

    def sidecar(self, shard: Shard) -> dict | None:
        return {"unwrap_shift": self.shifts[shard.index]} if shard.index in self.shifts else None


def _sidecar(outdir: Path, shard: Shard) -> Path:
    return (outdir / shard.file).with_suffix(".json")


def seal_shard(outdir: Path, shard: Shard, record: dict, plan_key: str, rank: int, extra: dict | None = None) -> dict:
    """Checksum the finished shard and write its sidecar (runs in the background thread); ``extra``: more
    entries of the sidecar (read back by :func:`sidecar_entry`)."""
    path = outdir / shard.file
    record = dict(record, size_bytes=path.stat().st_size, sha256=file_digest(path))
    write_json_atomic(_sidecar(outdir, shard), {"plan_key": plan_key, "written_by_rank": rank, "record": record,
                                                **(extra or {})}, sort_keys=False)
    return record


def sidecar_entry(outdir: Path, shard: Shard, name: str):
    """Entry ``name`` of a shard's sidecar (one :func:`completed_shard` accepted), or None."""
    try:
        return json.loads(_sidecar(outdir, shard).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def completed_shard(outdir: Path, shard: Shard, plan_key: str) -> dict | None:
    """The record of a shard finished by an earlier run of the same plan, verified by size and sha256."""
    sidecar, path = _sidecar(outdir, shard), outdir / shard.file
    try:
        saved = json.loads(sidecar.read_text())
        record = saved["record"]
        if saved.get("plan_key") != plan_key or record["file"] != shard.file:
            return None
        if path.stat().st_size != record["size_bytes"] or file_digest(path) != record["sha256"]:
            log.warning("%s: does not match its sidecar; writing it again", path)
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None
