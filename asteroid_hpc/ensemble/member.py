"""Run one member: start or continue its trajectory file, stream the rollout in chunks, mark it finished.

The group root (domain 0) owns the file; the other ranks of the group only compute. Frames are appended
after whole passes only, so the frame count of a partial file is a pass boundary (or the horizon) and the
rollout continues from it exactly: the window is the last m frames of (starting window + frames on disk).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from ..data.amber import AmberReader, AmberWriter, partial_path
from ..logs import get_logger
from .perturb import InitialCondition, starting_window
from .rollout import MemberForecaster
from .store import is_finished, marker_path, member_path
from .watch import Watch

log = get_logger(__name__)


@dataclass
class MemberJob:
    outdir: Path
    member: int
    horizon_frames: int
    chunk_frames: int
    attributes: dict  # written into the member file


def _resume_point(job: MemberJob, steps_per_pass: int) -> int:
    """Frames of a partial file that the rollout can continue from (0: start afresh)."""
    partial = partial_path(member_path(job.outdir, job.member))
    if not partial.exists():
        return 0
    with AmberReader(partial) as reader:  # UserError when truncated or unreadable
        frames = reader.n_frames
    if frames == job.horizon_frames or frames % steps_per_pass == 0:
        return frames
    log.warning("member %d: %s has %d frames, not a pass boundary; starting the member again",
                job.member, partial, frames)
    partial.unlink()
    return 0


def _window_after(start: np.ndarray, job: MemberJob, frames_done: int) -> np.ndarray:
    if frames_done == 0:
        return start
    m = start.shape[0]
    with AmberReader(partial_path(member_path(job.outdir, job.member))) as reader:
        tail = reader.read(max(0, frames_done - m), frames_done).coordinates.astype(np.float32)
    return np.concatenate([start, tail])[-m:]


def run_member(job: MemberJob, forecaster: MemberForecaster, initial: InitialCondition, ensemble_cfg,
               progress, watch: Watch | None = None) -> None:
    """Produce (or finish) member ``job.member``'s trajectory; collective over the forecaster's group. With
    ``watch`` the group root checks every pass: a blow-up is logged once, and with
    ``ensemble_cfg.stop_on_blowup`` the member's file ends after that pass, its marker saying so."""
    group = forecaster.group
    is_root = group.rank == 0
    state = None
    if is_root:
        if is_finished(job.outdir, job.member):
            state = ("finished", job.horizon_frames)
        else:
            state = ("run", _resume_point(job, forecaster.steps_per_pass))
    kind, frames_done = group.bcast(state, root=0)
    if kind == "finished":
        if is_root:
            progress.report(job.member, job.horizon_frames, job.horizon_frames, True)
        return
    start = starting_window(initial, ensemble_cfg, job.member, forecaster.history_frames)
    window = _window_after(start, job, frames_done) if is_root else None
    window = group.bcast(window, root=0)
    writer = _open_writer(job, initial, frames_done) if is_root else None
    began, resumed_from = time.monotonic(), frames_done
    if is_root and frames_done:
        log.info("member %d: continuing from frame %d of %d", job.member, frames_done, job.horizon_frames)
    buffer: list[np.ndarray] = []
    previous = window[-1] if is_root else None  # the frame before the next one, for the displacement check
    blowup = None
    with writer if writer is not None else nullcontext():  # an exception keeps the partial file
        for frames in forecaster.rollout(window, job.horizon_frames - frames_done):
            if is_root:
                first_lead = frames_done + sum(len(b) for b in buffer) + 1
                buffer.append(frames)
                if watch is not None and blowup is None:
                    blowup = watch.first_blowup(watch.check(frames, previous), first_lead)
                    if blowup is not None:
                        log.warning("member %d: blew up at lead time frame %d: %s%s", job.member,
                                    blowup["first_frame"], blowup["cause"],
                                    "; stopping it (ensemble.stop_on_blowup)" if ensemble_cfg.stop_on_blowup else "")
                previous = frames[-1]
                if sum(len(b) for b in buffer) >= job.chunk_frames:
                    frames_done = _flush(writer, buffer, frames_done, initial)
                    progress.report(job.member, frames_done, resumed_from, False)
            progress.poll()
            if ensemble_cfg.stop_on_blowup and group.bcast(blowup is not None if is_root else None, root=0):
                break
        if is_root:
            frames_done = _flush(writer, buffer, frames_done, initial)
    if is_root:  # the file is complete and renamed; only now does the member count as finished
        marker = {"member": job.member, "frames": frames_done, "resumed_from_frame": resumed_from,
                  "seconds_this_run": round(time.monotonic() - began, 3)}
        if ensemble_cfg.stop_on_blowup and blowup is not None:
            marker["stopped"] = blowup  # finished early: not a healthy member of the horizon's length
        write_json_atomic(marker_path(job.outdir, job.member), marker, indent=2)
        progress.report(job.member, frames_done, resumed_from, True)


def lead_times_ps(lead: np.ndarray, timestep_ps: float | None, end_time_ps: float) -> np.ndarray:
    """Times of lead times ``lead``: the initial window's last frame time plus lead × the forecast spacing
    (zeros when the spacing is unknown)."""
    return end_time_ps + lead * timestep_ps if timestep_ps else np.zeros(len(lead))


def _open_writer(job: MemberJob, initial: InitialCondition, frames_done: int) -> AmberWriter:
    path = member_path(job.outdir, job.member)
    if frames_done:
        return AmberWriter.resume(path)
    partial_path(path).unlink(missing_ok=True)
    return AmberWriter(path, initial.n_atoms, initial.atomic_numbers, timestep_ps=initial.timestep_ps,
                       title=f"asteroid-hpc ensemble member {job.member}", attributes=job.attributes)


def _flush(writer: AmberWriter, buffer: list[np.ndarray], frames_done: int, initial: InitialCondition) -> int:
    if not buffer:
        return frames_done
    frames = np.concatenate(buffer)
    buffer.clear()
    lead = frames_done + 1 + np.arange(len(frames))  # lead time j is frame j after the window's last frame
    # times continue the initial trajectory's: appended to it, a member reads as one trajectory
    writer.append(frames, lead_times_ps(lead, initial.timestep_ps, initial.end_time_ps))
    return frames_done + len(frames)
