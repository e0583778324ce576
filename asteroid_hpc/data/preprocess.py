"""Preprocessing: trajectories → a dataset directory of NetCDF shards and ``manifest.json``.

Layout of a dataset directory::

    manifest.json            written last, by rank 0; the directory is data only once it exists
    shards/shard-00000.nc    AMBER NetCDF, float32 coordinates (centred if data.center), velocities and
                             unit cells where the inputs have them, one shard per (source, split, block of
                             data.frames_per_shard frames)
    shards/shard-00000.json  sidecar: plan key, size and sha256 of the finished shard (for resuming), and
                             its unwrapping shift (periodic inputs, data.unwrap)
    .preprocess-plan.json    the plan of the run that is (or was) writing here

Under MPI the shards are dealt out round-robin (shard i → rank i mod K); each is written by one rank
under a temporary name and renamed when complete. A re-run with the same plan key (same inputs and
options) keeps every shard whose sidecar matches the file's size and sha256, so a killed run resumes.
Memory stays bounded by one chunk of frames (``data.chunk_frames``, capped at 32 MiB of raw frames).
Periodic inputs (``data.unwrap``) are read twice: pass 1 of the unwrapping on every rank, one broadcast per
shard to chain the ranks' ranges, then the shards (:mod:`.unwrap_ranges`); the shards are bit-identical
whatever the number of ranks, and a resumed run takes a finished shard's shift from its sidecar.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import write_json_atomic
from ..checksum import file_digest
from ..errors import UserError, user_error
from ..logs import get_logger
from ..progress import Progress
from .manifest import FORMAT, MANIFEST, SCHEMA_VERSION, box_record
from .plan import Plan, Shard, make_plan
from .readers import TrajectoryReader
from .shards import UnwrapPassOne, completed_shard, seal_shard, stats_every, write_shard
from .stats import RunningMoments

log = get_logger(__name__)

PLAN_FILE = ".preprocess-plan.json"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: the user's to fix
SHARD_DELAY_ENV = "ASTEROID_TEST_SHARD_DELAY_S"  # test hook: seconds to sleep after each shard


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


# the files preprocess writes under shards/: shards, their sidecars, and their partial or temporary forms
_SHARD_FILE = re.compile(r"shard-\d{5,}\.(nc|json)(\.partial|\.tmp-\d+)?")


def remove_dataset(outdir: Path) -> None:
    """Delete what preprocess wrote (manifest first, so the directory stops counting as data at once) and
    nothing else: a file of the user's in the directory, even under shards/, stays."""
    (outdir / MANIFEST).unlink(missing_ok=True)
    shards = outdir / "shards"
    if shards.is_dir() and not shards.is_symlink():
        for path in shards.iterdir():
            if _SHARD_FILE.fullmatch(path.name) and (path.is_file() or path.is_symlink()):
                path.unlink(missing_ok=True)
        try:
            shards.rmdir()  # only if empty
        except OSError:
            pass
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


# ----------------------------------------------------------------------------------- the run

def _lower_priority() -> None:
    """Checksums fill the CPU time the netCDF thread leaves (Linux: niceness is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class _Readers:
    """One open reader per input file, opened when first needed."""

    def __init__(self, plan: Plan, cfg) -> None:
        self.plan, self.cfg = plan, cfg
        self.open: dict[str, TrajectoryReader] = {}

    def __call__(self, shard: Shard) -> TrajectoryReader:
        source = self.plan.sources[shard.source]
        if source.path not in self.open:
            # the plan checked the time axis's ends; MDAnalysis formats check each frame as it is read
            self.open[source.path] = TrajectoryReader(source.path, n_atoms=source.n_atoms,
                                                      check_time=self.cfg.data.timestep_fs is None,
                                                      velocities=self.plan.velocities)
        return self.open[source.path]

    def close(self) -> None:
        for reader in self.open.values():
            reader.close()


def _process_my_shards(plan: Plan, cfg, outdir: Path, w, progress: bool):
    rank, size = w.rank, w.size
    mine = [s for s in plan.shards if s.index % size == rank]
    every = stats_every(plan, cfg.data.stats_max_frames)  # once: it sums over all shards
    previous = {s.index: p for p, s in zip(plan.shards, plan.shards[1:])}
    readers = _Readers(plan, cfg)
    futures: dict[int, Future] = {}
    records: dict[int, dict] = {}
    delay_s = float(os.environ.get(SHARD_DELAY_ENV, "0") or 0)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksum", initializer=_lower_priority)
    first_source_of = {}  # input file -> its first source (phases of one file share the file)
    for s in plan.sources:
        first_source_of.setdefault(s.path, s.index)
    source_hashes = {path: pool.submit(file_digest, path, "blake3")
                     for path, index in first_source_of.items() if index % size == rank}
    bar = Progress("preprocess (rank 0)", len(mine), unit="shard", enabled=progress and rank == 0,
                   every=max(1, len(mine) // 10))  # log lines: about every 10 %
    reused, shard = 0, None
    try:
        done = {s.index: completed_shard(outdir, s, plan.key) for s in mine}
        unwrap = UnwrapPassOne(plan, cfg, outdir, w, mine, done, readers) if plan.unwrap else None
        error = None if unwrap is None else unwrap.error
        for n_done, shard in enumerate(mine if error is None else [], 1):
            if done[shard.index] is not None:
                records[shard.index] = done[shard.index]
                reused += 1
            else:
                prev = previous.get(shard.index)
                linked = prev is not None and (prev.source, prev.split, prev.frame_stop) == \
                    (shard.source, shard.split, shard.frame_start)
                record = write_shard(readers(shard), plan, shard, cfg, outdir, linked, every,
                                     unwrap and unwrap.start(shard))
                futures[shard.index] = pool.submit(seal_shard, outdir, shard, record, plan.key, rank,
                                                   unwrap and unwrap.sidecar(shard))
                if delay_s:
                    time.sleep(delay_s)
            bar.update(n_done, f"shards on rank 0: {n_done}/{len(mine)}")
    except UserError as exc:
        error = (shard.index if shard else 0, str(exc))
    except OSError as exc:  # a full disk: write_shard removed its partial file; the run is refused
        if exc.errno not in NO_SPACE or shard is None:
            raise
        error = (shard.index, str(user_error(outdir, f"no space left to write {shard.file} ({exc.strerror})")))
    finally:
        bar.close()
        readers.close()
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
    changed = {r["source"] for r in records if r.get("box_changes")}
    sources = [{"index": s.index, "path": s.path, "format": s.format, "size_bytes": s.size_bytes,
                "blake3": source_hashes[s.path], "n_frames_raw": s.n_frames_raw, "n_frames": s.n_frames,
                "frame_offset": s.frame_offset, "frames_raw": s.frames_raw, "n_atoms": s.n_atoms,
                "timestep_ps": s.timestep_ps, **box_record(s.cell, s.has_velocities, s.index not in changed)}
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
        "topology": plan.topology,
        "timestep_fs": plan.timestep_fs,
        "frame_stride": plan.frame_stride,
        "centered": cfg.data.center,
        "unwrapped": plan.unwrap,  # periodic inputs with data.unwrap: whole molecules, no jumps across the box
        # velocities/cells stored in the shards; constant_box False: some box changes size (the model keeps
        # the last observed box)
        **box_record(plan.sources[0].cell, plan.velocities, not changed),
        "coordinates": {"dtype": "float32", "units": "angstrom", "compression": cfg.data.compression},
        "split": plan.split,
        "sources": sources,
        "shards": [{k: r[k] for k in keep} for r in records],
        "dropped_nonfinite_frames": sum(len(r["dropped_frames"]) for r in records),
        "statistics": {  # of the training frames only: "ranges" lists them (strided frames per source)
            "frames": plan.training["frames"],
            "count": plan.training["count"],
            "ranges": plan.training["ranges"],
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


def _plan_on_rank0(w, inputs: list[str], outdir: Path, cfg, overwrite: bool, topology: str | None) -> tuple[Plan, str]:
    """Rank 0 makes the plan and prepares the directory; every rank gets (plan, status) or the UserError."""
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
    return plan, status


def _write_manifest(plan: Plan, cfg, outdir: Path, gathered: list) -> tuple[str, dict | str]:
    """Rank 0: the manifest of every rank's shards, written; or the first error (by shard), the output
    removed. Returns the outcome for every rank."""
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
        try:
            write_json_atomic(outdir / MANIFEST, manifest, sort_keys=False)
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            raise user_error(outdir / MANIFEST, f"no space left to write it ({exc.strerror})") from None
        return "ok", manifest
    except UserError as exc:
        cleanup_failed(outdir)
        return "error", str(exc)


def _log_written(outdir: Path, manifest: dict, n_reused: int, elapsed_s: float) -> None:
    n_bytes = sum(s["size_bytes"] for s in manifest["shards"])
    log.info("wrote %s: %d shards (%d reused), %d frames, %.1f MB in %.2f s (%.0f MB/s)", outdir / MANIFEST,
             len(manifest["shards"]), n_reused, sum(s["n_frames"] for s in manifest["shards"]), n_bytes / 1e6,
             elapsed_s, n_bytes / 1e6 / max(elapsed_s, 1e-9))
    changed = [s["path"] for s in manifest["sources"] if s["periodic"] and not s["constant_box"]]
    if changed:
        log.warning("%s%s: the box changes size (NPT); the model will keep the last observed box", changed[0],
                    f" (and {len(changed) - 1} more input(s))" if len(changed) > 1 else "")
    if manifest["dropped_nonfinite_frames"]:
        log.warning("dropped %d frame(s) with non-finite coordinates (--drop-nonfinite)",
                    manifest["dropped_nonfinite_frames"])


def _log_partial_velocities(plan: Plan) -> None:
    """Shards store velocities only when every input has them (:attr:`Plan.velocities`): when only some do,
    one line names those without."""
    lacking = list(dict.fromkeys(s.path for s in plan.sources if not s.has_velocities))
    if lacking and any(s.has_velocities for s in plan.sources):
        log.warning("%s%s: no velocities, so no input's velocities are stored (the shards hold them only when "
                    "every input has them)", lacking[0],
                    f" (and {len(lacking) - 1} more input(s))" if len(lacking) > 1 else "")


def run_preprocess(inputs: list[str], outdir: str | os.PathLike, cfg, *, overwrite: bool = False,
                   topology: str | None = None, progress: bool = True) -> dict:
    """Preprocess ``inputs`` into ``outdir`` on every rank of the MPI world; returns the manifest."""
    from ..runtime.mpi import world

    w = world()
    outdir = Path(outdir)
    started = time.perf_counter()
    plan, status = _plan_on_rank0(w, inputs, outdir, cfg, overwrite, topology)
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
        _log_partial_velocities(plan)

    records, hashes, error, reused = _process_my_shards(plan, cfg, outdir, w, progress)
    gathered = w.gather((records, hashes, error, reused), root=0)
    kind, value = w.bcast(_write_manifest(plan, cfg, outdir, gathered) if w.rank == 0 else None)
    if kind == "error":
        raise UserError(value)
    if w.rank == 0:
        _log_written(outdir, value, sum(g[3] for g in gathered), time.perf_counter() - started)
    return value
