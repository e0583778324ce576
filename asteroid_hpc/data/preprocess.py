"""Preprocessing: trajectories → a dataset directory of NetCDF shards and ``manifest.json``.

Layout of a dataset directory::

    manifest.json            written last, by rank 0; the directory is data only once it exists
    shards/shard-00000.nc    AMBER NetCDF, float32 coordinates (centred if data.center), one shard per
                             (source, split, block of data.frames_per_shard frames)
    shards/shard-00000.json  sidecar: plan key, size and sha256 of the finished shard (for resuming)
    .preprocess-plan.json    the plan of the run that is (or was) writing here

Under MPI the shards are dealt out round-robin (shard i → rank i mod K); each is written by one rank
under a temporary name and renamed when complete. A re-run with the same plan key (same inputs and
options) keeps every shard whose sidecar matches the file's size and sha256, so a killed run resumes.
Memory stays bounded by one chunk of frames (``data.chunk_frames``, capped at 32 MiB of raw frames).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from ..checksum import file_digest
from ..logs import get_logger
from ..progress import Progress
from ..errors import UserError, user_error
from .amber import AmberWriter
from .manifest import FORMAT, MANIFEST, SCHEMA_VERSION
from .plan import Plan, Shard, Source, make_plan
from .readers import TrajectoryReader
from .stats import RunningMoments

log = get_logger(__name__)

PLAN_FILE = ".preprocess-plan.json"
SHARD_DELAY_ENV = "ASTEROID_TEST_SHARD_DELAY_S"  # test hook: seconds to sleep after each shard
MAX_CHUNK_BYTES = 32 << 20
STATS_SPLITS = ("train", "all")  # statistics come from the training frames only (all for random starts)


# ----------------------------------------------------------------------------------- output directory

def check_output_location(plan: Plan, outdir: Path) -> None:
    out = outdir.resolve()
    for source in plan.sources:
        src = Path(source.path)
        if out == src or out.is_relative_to(src):
            raise user_error(outdir, f"output directory is inside the input {src}")
        if src.is_relative_to(out):
            raise user_error(src, f"input lies inside the output directory {outdir}")


def _read_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("plan_key")
    except (OSError, ValueError, AttributeError):
        return None


def remove_dataset(outdir: Path) -> None:
    """Delete what preprocess wrote (manifest first, so the directory stops counting as data at once)."""
    (outdir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(outdir / "shards", ignore_errors=True)
    (outdir / PLAN_FILE).unlink(missing_ok=True)


def prepare_outdir(outdir: Path, plan: Plan, overwrite: bool) -> str:
    """Return "complete" (nothing to do), "resume" or "fresh"; refuse to replace another dataset
    unless ``overwrite``."""
    if outdir.exists() and not outdir.is_dir():
        raise user_error(outdir, "exists and is not a directory")
    manifest, plan_file = outdir / MANIFEST, outdir / PLAN_FILE
    status = "fresh"
    if manifest.exists():
        if _read_key(manifest) == plan.key and not overwrite:
            return "complete"
        if not overwrite:
            raise user_error(outdir, "holds a different dataset; pass --overwrite to replace it")
        remove_dataset(outdir)
    elif plan_file.exists():
        if _read_key(plan_file) == plan.key:
            status = "resume"
        elif not overwrite:
            raise user_error(outdir, "holds an unfinished preprocess run of other inputs or options; "
                                     "pass --overwrite to replace it")
        else:
            remove_dataset(outdir)
    elif outdir.exists() and any(outdir.iterdir()):
        raise user_error(outdir, "is not empty and holds no asteroid-hpc dataset; choose another directory")
    (outdir / "shards").mkdir(parents=True, exist_ok=True)
    if status == "resume":  # leftovers of the killed run: half-written sidecars (shards are rewritten)
        for leftover in (outdir / "shards").glob("*.json.tmp-*"):
            leftover.unlink(missing_ok=True)
    write_json_atomic(plan_file, {"plan_key": plan.key, "plan": plan.to_dict()}, sort_keys=False)
    return status


def cleanup_failed(outdir: Path) -> None:
    """After bad input: remove everything this run (or an earlier attempt of the same plan) wrote."""
    remove_dataset(outdir)
    try:
        outdir.rmdir()  # only if empty
    except OSError:
        pass


# ----------------------------------------------------------------------------------- one shard

class _Frames:
    """Selection, checks and centring applied to every chunk of input frames."""

    def __init__(self, plan: Plan, center: bool, drop_nonfinite: bool, source: Source) -> None:
        self.atom_indices = None if plan.atom_indices == list(range(plan.sources[0].n_atoms)) \
            else np.asarray(plan.atom_indices)
        self.center = center
        self.drop_nonfinite = drop_nonfinite
        self.path = source.path
        self.raw_frame = partial(plan.raw_frame, source.index)  # strided frame -> the input file's frame

    def __call__(self, coords: np.ndarray, first_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(kept frames float32 [F', n, 3], their strided frame indices), in one pass for the checks
        and the centroid (a matrix product with ones) and one in place for the centring."""
        x = coords if self.atom_indices is None else coords[:, self.atom_indices]
        x = np.ascontiguousarray(x, dtype=np.float32)  # readers return fresh arrays: no copy when float32
        if not x.flags.writeable:  # e.g. np.frombuffer over the bytes of an .npz member
            x = x.copy()
        index = first_frame + np.arange(len(x))
        sums = np.matmul(np.ones(x.shape[1], dtype=np.float32), x)  # [F, 3]; NaN/Inf in a frame spreads to its sum
        finite = np.isfinite(sums).all(axis=1)
        if not finite.all():
            if not self.drop_nonfinite:
                bad = self.raw_frame(int(index[np.argmin(finite)]))
                raise user_error(self.path, f"non-finite coordinates (NaN or Inf) in frame {bad}; pass "
                                            "--drop-nonfinite to skip such frames")
            x, sums, index = x[finite], sums[finite], index[finite]
        if self.center and len(x):
            centroid = sums / np.float32(x.shape[1])
            for k in range(3):  # per component: a strided pass, faster than broadcasting over [F, n, 3]
                x[:, :, k] -= centroid[:, k, None]
        return x, index


class _ShardStatistics:
    """Coordinate and displacement moments of every ``every``-th frame (displacement: from the frame
    before it), accumulated chunk by chunk; ``last`` is the frame before the current chunk."""

    def __init__(self, every: int, last: tuple[np.ndarray, int] | None) -> None:
        self.every = every
        self.last = last
        self.coordinates, self.displacements = RunningMoments(), RunningMoments()

    def update(self, x: np.ndarray, index: np.ndarray) -> None:
        picked = np.flatnonzero(index % self.every == 0)
        if len(picked):
            self.coordinates.update_vectors(x[picked])
            inner = picked[picked > 0]
            inner = inner[index[inner - 1] == index[inner] - 1]
            self.displacements.update_vectors(x[inner] - x[inner - 1])
            if picked[0] == 0 and self.last is not None and self.last[1] == index[0] - 1:
                self.displacements.update_vectors((x[0] - self.last[0])[None])
        self.last = (x[-1].copy(), int(index[-1]))


def stats_every(plan: Plan, max_frames: int) -> int:
    """q: the statistics use frames whose (strided) index is a multiple of q, so that at most about
    ``max_frames`` frames of the statistics splits are read for them (0: every frame)."""
    n_frames = sum(s.frame_stop - s.frame_start for s in plan.shards if s.split in STATS_SPLITS)
    return max(1, -(-n_frames // max_frames)) if max_frames > 0 else 1


def _previous_frame(reader: TrajectoryReader, frames: _Frames, frame: int) -> tuple[np.ndarray, int] | None:
    """The frame just before a shard (same source and split), for the displacement across the boundary,
    or None when it is non-finite (dropped or reported by the shard holding it)."""
    coords = reader.read(frames.raw_frame(frame), frames.raw_frame(frame) + 1).coordinates
    selected = coords if frames.atom_indices is None else coords[:, frames.atom_indices]
    if not np.isfinite(selected).all():
        return None
    x, _ = frames(coords, frame)
    return x[0], frame


def write_shard(reader: TrajectoryReader, plan: Plan, shard: Shard, cfg, outdir: Path,
                linked_to_previous: bool, every: int) -> dict:
    """Stream the shard's frames into its NetCDF file; return its record (without size and checksum).
    ``every``: the statistics sample every ``every``-th frame (:func:`stats_every`)."""
    data = cfg.data
    source = plan.sources[shard.source]
    frames = _Frames(plan, data.center, data.drop_nonfinite, source)
    stride = plan.frame_stride
    raw_frame_bytes = source.n_atoms * 3 * 8 * (stride if stride <= 8 else 1)
    chunk_frames = max(1, min(data.chunk_frames, MAX_CHUNK_BYTES // raw_frame_bytes))
    timestep_ps = plan.timestep_fs / 1000.0
    stats = None
    if shard.split in STATS_SPLITS:
        before = _previous_frame(reader, frames, shard.frame_start - 1) \
            if linked_to_previous and shard.frame_start % every == 0 else None
        stats = _ShardStatistics(every, before)
    dropped: list[int] = []
    last_time = None
    first_time = None
    n_written = 0
    writer = AmberWriter(outdir / shard.file, len(plan.atom_indices), plan.atomic_numbers,
                         timestep_ps=timestep_ps, program="asteroid-hpc preprocess",
                         compression=data.compression, chunk_frames=min(chunk_frames, 256),
                         attributes={"source_index": shard.source, "source_frame_start": shard.frame_start})
    # One I/O thread makes every netCDF call of the loop, in order (the C library is not thread-safe):
    # it reads chunk k+1 and writes chunk k-1 while this thread checks and transforms chunk k.
    io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netcdf-io")
    chunks = reader.iter_chunks(chunk_frames, frames.raw_frame(shard.frame_start),
                                frames.raw_frame(shard.frame_stop - 1) + 1, stride)
    pending_write: Future | None = None
    try:
        next_chunk = io.submit(next, chunks, None)
        while (chunk := next_chunk.result()) is not None:
            next_chunk = io.submit(next, chunks, None)
            first = (chunk.start - source.frame_offset) // stride
            x, index = frames(chunk.coordinates, first)
            if len(index) < len(chunk.coordinates):
                dropped.extend(sorted(set(range(first, first + len(chunk.coordinates))) - set(index.tolist())))
            if chunk.time_ps is not None:
                t = chunk.time_ps[index - first]
                check = np.concatenate([[last_time], t]) if last_time is not None else t
                bad = np.flatnonzero(np.diff(check) <= 0)
                if len(bad):
                    raw = frames.raw_frame(int(index[bad[0] + (0 if last_time is not None else 1)]))
                    raise user_error(source.path, f"time is not increasing (non-monotonic time) at frame {raw}")
            else:
                t = index * timestep_ps
            if not len(x):
                continue
            if stats is not None:
                stats.update(x, index)
            if pending_write is not None:
                pending_write.result()
            pending_write = io.submit(writer.append, x, time_ps=t)
            first_time = float(t[0]) if first_time is None else first_time
            last_time = float(t[-1])
            n_written += len(x)
        if pending_write is not None:
            pending_write.result()
        if n_written == 0:
            raise user_error(source.path, f"every frame of {shard.frame_start}..{shard.frame_stop - 1} (strided) "
                                          "is non-finite")
    except BaseException:
        io.shutdown(wait=True)
        writer.discard()
        raise
    io.shutdown(wait=True)
    writer.close()
    return {"index": shard.index, "file": shard.file, "source": shard.source, "split": shard.split,
            "frame_start": shard.frame_start, "frame_stop": shard.frame_stop, "n_frames": n_written,
            "dropped_frames": dropped, "time_first_ps": first_time, "time_last_ps": last_time,
            "coordinate_moments": (stats.coordinates if stats else RunningMoments()).to_dict(),
            "displacement_moments": (stats.displacements if stats else RunningMoments()).to_dict()}


def _sidecar(outdir: Path, shard: Shard) -> Path:
    return (outdir / shard.file).with_suffix(".json")


def _seal_shard(outdir: Path, shard: Shard, record: dict, plan_key: str, rank: int) -> dict:
    """Checksum the finished shard and write its sidecar (runs in the background thread)."""
    path = outdir / shard.file
    record = dict(record, size_bytes=path.stat().st_size, sha256=file_digest(path))
    write_json_atomic(_sidecar(outdir, shard), {"plan_key": plan_key, "written_by_rank": rank, "record": record},
                      sort_keys=False)
    return record


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


# ----------------------------------------------------------------------------------- the run

def _lower_priority() -> None:
    """Checksums fill the CPU time the netCDF thread leaves (Linux: niceness is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


def _process_my_shards(plan: Plan, cfg, outdir: Path, rank: int, size: int, progress: bool):
    mine = [s for s in plan.shards if s.index % size == rank]
    every = stats_every(plan, cfg.data.stats_max_frames)  # once: it sums over all shards
    previous = {s.index: p for p, s in zip(plan.shards, plan.shards[1:])}
    readers: dict[str, TrajectoryReader] = {}  # by input file
    futures: dict[int, Future] = {}
    records: dict[int, dict] = {}
    error: tuple[int, str] | None = None
    delay_s = float(os.environ.get(SHARD_DELAY_ENV, "0") or 0)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksum", initializer=_lower_priority)
    first_source_of = {}  # input file -> its first source (phases of one file share the file)
    for s in plan.sources:
        first_source_of.setdefault(s.path, s.index)
    source_hashes = {path: pool.submit(file_digest, path, "blake3")
                     for path, index in first_source_of.items() if index % size == rank}
    bar = Progress("preprocess (rank 0)", len(mine), unit="shard", enabled=progress and rank == 0,
                   every=max(1, len(mine) // 10))  # log lines: about every 10 %
    reused = 0
    try:
        for done, shard in enumerate(mine, 1):
            record = completed_shard(outdir, shard, plan.key)
            if record is not None:
                records[shard.index] = record
                reused += 1
            else:
                path = plan.sources[shard.source].path
                if path not in readers:
                    readers[path] = TrajectoryReader(path)
                prev = previous.get(shard.index)
                linked = prev is not None and (prev.source, prev.split, prev.frame_stop) == \
                    (shard.source, shard.split, shard.frame_start)
                record = write_shard(readers[path], plan, shard, cfg, outdir, linked, every)
                futures[shard.index] = pool.submit(_seal_shard, outdir, shard, record, plan.key, rank)
                if delay_s:
                    time.sleep(delay_s)
            bar.update(done, f"shards on rank 0: {done}/{len(mine)}")
    except UserError as exc:
        error = (shard.index, str(exc))
    finally:
        bar.close()
        for reader in readers.values():
            reader.close()
        records.update({i: f.result() for i, f in futures.items()})
        hashes = {i: f.result() for i, f in source_hashes.items()}
        pool.shutdown()
    return records, hashes, error, reused


def _check_time_across_shards(plan: Plan, records: list[dict]) -> None:
    by_source: dict[int, list[dict]] = {}
    for record in records:
        by_source.setdefault(record["source"], []).append(record)
    for source, recs in by_source.items():
        recs.sort(key=lambda r: r["frame_start"])
        for a, b in zip(recs, recs[1:]):
            if a["time_last_ps"] is not None and b["time_first_ps"] is not None \
                    and b["time_first_ps"] <= a["time_last_ps"]:
                raise user_error(plan.sources[source].path, "time is not increasing (non-monotonic time) at "
                                                            f"frame {plan.raw_frame(source, b['frame_start'])}")


def build_manifest(plan: Plan, cfg, records: list[dict], source_hashes: dict[str, str]) -> dict:
    from .. import __version__
    from ..config import to_dict

    coords, disps = RunningMoments(), RunningMoments()
    for record in records:  # in shard order: the same sums whatever the number of ranks
        coords.merge(RunningMoments.from_dict(record["coordinate_moments"]))
        disps.merge(RunningMoments.from_dict(record["displacement_moments"]))
    keep = ("index", "file", "source", "split", "frame_start", "frame_stop", "n_frames", "dropped_frames",
            "time_first_ps", "time_last_ps", "size_bytes", "sha256")
    sources = [{"index": s.index, "path": s.path, "format": s.format, "size_bytes": s.size_bytes,
                "blake3": source_hashes[s.path], "n_frames_raw": s.n_frames_raw, "n_frames": s.n_frames,
                "frame_offset": s.frame_offset, "n_atoms": s.n_atoms, "timestep_ps": s.timestep_ps}
               for s in plan.sources]
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "plan_key": plan.key,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "program": {"name": "asteroid-hpc", "version": __version__},
        "n_atoms": len(plan.atom_indices),
        "atomic_numbers": plan.atomic_numbers,
        "atom_indices": plan.atom_indices,
        "atom_selection": cfg.data.atom_selection,
        "timestep_fs": plan.timestep_fs,
        "frame_stride": plan.frame_stride,
        "centered": cfg.data.center,
        "coordinates": {"dtype": "float32", "units": "angstrom", "compression": cfg.data.compression},
        "split": plan.split,
        "sources": sources,
        "shards": [{k: r[k] for k in keep} for r in records],
        "dropped_nonfinite_frames": sum(len(r["dropped_frames"]) for r in records),
        "statistics": {
            "frames": "all" if plan.split["method"] == "random_start" else "train",
            "sampled_every_frames": stats_every(plan, cfg.data.stats_max_frames),
            "coordinate_mean_angstrom": coords.mean.tolist(),
            "coordinate_std_angstrom": coords.std.tolist(),
            "coordinate_count": coords.count,
            "displacement_mean_angstrom": disps.mean.tolist(),
            "displacement_std_angstrom": disps.std.tolist(),
            "displacement_count": disps.count,
        },
        "config": to_dict(cfg),
    }


def run_preprocess(inputs: list[str], outdir: str | os.PathLike, cfg, *, overwrite: bool = False,
                   topology: str | None = None, progress: bool = True) -> dict:
    """Preprocess ``inputs`` into ``outdir`` on every rank of the MPI world; returns the manifest."""
    from ..runtime.mpi import world

    w = world()
    outdir = Path(outdir)
    started = time.perf_counter()
    payload = None
    if w.rank == 0:
        try:
            plan = make_plan(list(inputs), cfg, topology)
            check_output_location(plan, outdir)
            payload = ("ok", plan, prepare_outdir(outdir, plan, overwrite))
        except UserError as exc:
            payload = ("error", str(exc), None)
    kind, plan, status = w.bcast(payload)
    if kind == "error":
        raise UserError(plan)
    if status == "complete":
        log.info("%s: already holds this dataset (plan %s); nothing to do (--overwrite to redo it)",
                 outdir, plan.key)
        from .manifest import read_manifest

        return read_manifest(outdir)
    if w.rank == 0:
        n_frames = sum(s.frame_stop - s.frame_start for s in plan.shards)
        log.info("preprocess: %d input(s), %d atoms selected, %d frames → %d shards in %s on %d rank(s)%s",
                 len(plan.sources), len(plan.atom_indices), n_frames, len(plan.shards), outdir, w.size,
                 " (resuming)" if status == "resume" else "")

    records, hashes, error, reused = _process_my_shards(plan, cfg, outdir, w.rank, w.size, progress)
    gathered = w.gather((records, hashes, error, reused), root=0)
    outcome = None
    if w.rank == 0:
        all_records, all_hashes, errors = {}, {}, []
        for recs, hs, err, _ in gathered:
            all_records.update(recs)
            all_hashes.update(hs)
            if err:
                errors.append(err)
        try:
            if errors:
                raise UserError(min(errors)[1])
            ordered = [all_records[s.index] for s in plan.shards]
            _check_time_across_shards(plan, ordered)
            manifest = build_manifest(plan, cfg, ordered, all_hashes)
            write_json_atomic(outdir / MANIFEST, manifest, sort_keys=False)
            outcome = ("ok", manifest)
        except UserError as exc:
            cleanup_failed(outdir)
            outcome = ("error", str(exc))
    kind, value = w.bcast(outcome)
    if kind == "error":
        raise UserError(value)
    if w.rank == 0:
        manifest = value
        n_bytes = sum(s["size_bytes"] for s in manifest["shards"])
        elapsed = time.perf_counter() - started
        n_reused = sum(g[3] for g in gathered)
        log.info("wrote %s: %d shards (%d reused), %d frames, %.1f MB in %.2f s (%.0f MB/s)", outdir / MANIFEST,
                 len(manifest["shards"]), n_reused, sum(s["n_frames"] for s in manifest["shards"]), n_bytes / 1e6,
                 elapsed, n_bytes / 1e6 / max(elapsed, 1e-9))
        if manifest["dropped_nonfinite_frames"]:
            log.warning("dropped %d frame(s) with non-finite coordinates (--drop-nonfinite)",
                        manifest["dropped_nonfinite_frames"])
    return value
