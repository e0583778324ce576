"""A rank's members in batches: several members through one forward, each streamed to its own file.

A batch is a fixed run of consecutive members of the group's list (``batch_members`` at a time), so a
re-run forms the same batches. The batch runs in lockstep from its members' earliest resume point: a
member whose file already holds more frames is recomputed without writing until it reaches them, and a
member leaves the batch at its end (the horizon, or the pass where ``ensemble.stop_on_blowup`` stops it;
a finished member rides along only up to its last frame when others must catch up). So a killed and
continued run computes exactly the passes of an uninterrupted one and writes the same files bit for bit.
Members equal their one-at-a-time trajectories within float reassociation (≤ 1e-5 Å over many passes).

The group root (domain 0) owns the files, the watch and the decisions (broadcast to the group); the other
ranks of the group only compute. Writers, buffers and the watch stay per member (:class:`MemberStream`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..atomic import write_json_atomic
from ..data.amber import AmberReader, partial_path
from ..logs import get_logger
from .member import MemberJob, _flush, _open_writer, _resume_point, output_wrap
from .periodic import OutputWrap
from .perturb import InitialCondition, held_frame, member_initial, starting_window
from .rollout import MemberForecaster
from .store import is_finished, marker_path, member_path
from .watch import Watch

log = get_logger(__name__)


@dataclass
class MemberState:
    """Where a member stands when its batch begins (decided on the group root, broadcast)."""

    have: int  # frames already in its file (partial or complete)
    final: int  # frames at which it leaves the batch: the horizon, or a finished member's last frame
    finished: bool  # its marker exists: it only rides along (never written) when others must catch up


def member_state(job: MemberJob, steps_per_pass: int) -> MemberState:
    if is_finished(job.outdir, job.member):
        frames = json.loads(marker_path(job.outdir, job.member).read_text())["frames"]
        return MemberState(frames, frames, True)
    return MemberState(_resume_point(job, steps_per_pass), job.horizon_frames, False)


def window_at(start: np.ndarray, job: MemberJob, state: MemberState, frames: int,
              atom_indices: Optional[np.ndarray] = None) -> np.ndarray:
    """The member's window after ``frames`` forecast frames: the last m of (starting window, its file's);
    a full-system file gives the model's atoms ``atom_indices``."""
    if frames == 0:
        return start
    m = start.shape[0]
    path = member_path(job.outdir, job.member)
    with AmberReader(path if state.finished else partial_path(path)) as reader:
        tail = reader.read(max(0, frames - m), frames).coordinates.astype(np.float32)
    if tail.shape[1] != start.shape[1]:
        tail = tail[:, atom_indices]
    return np.concatenate([start, tail])[-m:]


@dataclass
class MemberStream:
    """One member's writing side of a batch, on the group root: its file, buffer, watch and marker."""

    job: MemberJob
    state: MemberState
    initial: InitialCondition
    previous: np.ndarray  # the frame before the next one, for the displacement check
    held: Optional[np.ndarray] = None  # full-system files: all atoms, the unselected ones stay here
    wrap: Optional[OutputWrap] = None  # a periodic box: how the file holds the coordinates
    writer: object = None
    frames_done: int = 0  # frames in the file
    buffer: list = field(default_factory=list)
    blowup: Optional[dict] = None
    began: float = field(default_factory=time.monotonic)

    def open(self) -> None:
        self.frames_done = self.state.have
        self.writer = _open_writer(self.job, self.initial, self.state.have, self.held is not None)
        if self.state.have:
            log.info("member %d: continuing from frame %d of %d", self.job.member, self.state.have,
                     self.job.horizon_frames)

    def accept(self, frames: np.ndarray, produced: int, watch: Optional[Watch], stop_on_blowup: bool,
               progress) -> None:
        """The member's frames of one pass, lead times produced − len(frames) + 1 … produced."""
        first_lead = produced - len(frames) + 1
        if watch is not None and self.blowup is None:
            self.blowup = watch.first_blowup(watch.check(frames, self.previous), first_lead)
            if self.blowup is not None:
                log.warning("member %d: blew up at lead time frame %d: %s%s", self.job.member,
                            self.blowup["first_frame"], self.blowup["cause"],
                            "; stopping it (ensemble.stop_on_blowup)" if stop_on_blowup else "")
        self.previous = frames[-1]
        if produced <= self.state.have:  # recomputed to catch up with the batch: already in the file
            return
        self.buffer.append(frames)
        if sum(len(b) for b in self.buffer) >= self.job.chunk_frames:
            self.frames_done = _flush(self.writer, self.buffer, self.frames_done, self.initial, self.held, self.wrap)
            progress.report(self.job.member, self.frames_done, self.state.have, False)

    def finish(self, stopped: bool, progress) -> None:
        """Flush, close (the rename), then the marker: only now does the member count as finished."""
        self.frames_done = _flush(self.writer, self.buffer, self.frames_done, self.initial, self.held, self.wrap)
        self.writer.close()
        marker = {"member": self.job.member, "frames": self.frames_done, "resumed_from_frame": self.state.have,
                  "seconds_this_run": round(time.monotonic() - self.began, 3)}
        if stopped:
            marker["stopped"] = self.blowup  # finished early: not a healthy member of the horizon's length
        write_json_atomic(marker_path(self.job.outdir, self.job.member), marker, indent=2)
        progress.report(self.job.member, self.frames_done, self.state.have, True)

    def abandon(self, exc_info) -> None:
        """An exception: keep the partial file (it can be resumed)."""
        if self.writer is not None:
            self.writer.__exit__(*exc_info)


def run_members(jobs: list[MemberJob], forecaster: MemberForecaster, initial: InitialCondition, ensemble_cfg,
                progress, watch: Optional[Watch], batch_members: int) -> None:
    """Produce (or finish) the members of ``jobs`` (this group's, in order), ``batch_members`` at a time;
    collective over the forecaster's group."""
    group = forecaster.group
    states = [member_state(job, forecaster.steps_per_pass) for job in jobs] if group.rank == 0 else None
    states = group.bcast(states, root=0)
    for first in range(0, len(jobs), batch_members):
        batch = list(zip(jobs[first:first + batch_members], states[first:first + batch_members]))
        _run_batch(batch, forecaster, initial, ensemble_cfg, progress, watch)


def _run_batch(batch: list[tuple[MemberJob, MemberState]], forecaster: MemberForecaster,
               initial: InitialCondition, ensemble_cfg, progress, watch: Optional[Watch]) -> None:
    group = forecaster.group
    is_root = group.rank == 0
    if is_root:
        for job, state in batch:
            if state.finished:
                progress.report(job.member, state.final, state.final, True)
    unfinished = [state.have for _, state in batch if not state.finished]
    if not unfinished:
        return
    start = min(unfinished)
    riders = [(job, state) for job, state in batch if not state.finished or state.final > start]
    m = forecaster.history_frames
    windows = None
    if is_root:
        windows = np.stack([window_at(starting_window(initial, ensemble_cfg, job.member, m), job, state, start,
                                      initial.atom_indices) for job, state in riders])
    windows = group.bcast(windows, root=0)
    wrap = output_wrap(initial, ensemble_cfg.output_wrap, ensemble_cfg.write_full_system
                       and initial.atom_indices is not None) if is_root else None
    streams = [MemberStream(job, state, member_initial(initial, ensemble_cfg, job.member), windows[i][-1],
                            held_frame(initial, ensemble_cfg, job.member), wrap)
               if is_root and not state.finished else None for i, (job, state) in enumerate(riders)]
    try:
        for stream in streams:
            if stream is not None:
                stream.open()
        _lockstep(riders, streams, forecaster.to_device(windows), start, forecaster, ensemble_cfg, progress, watch)
    except BaseException as exc:
        for stream in streams:
            if stream is not None:
                stream.abandon((type(exc), exc, exc.__traceback__))
        raise


def _lockstep(riders: list, streams: list, windows: torch.Tensor, produced: int, forecaster: MemberForecaster,
              ensemble_cfg, progress, watch: Optional[Watch]) -> None:
    """Pass after pass over the riders still in the batch; a member leaves at its end or when stopped."""
    group = forecaster.group
    is_root = group.rank == 0
    horizon = max(state.final for _, state in riders)
    active = list(range(len(riders)))
    forecaster.start_batch()
    while active:
        steps = min(forecaster.steps_per_pass, horizon - produced)
        noise = forecaster.generators(ensemble_cfg.seed, [riders[i][0].member for i in active], produced)
        frames = forecaster.pass_batch(windows, steps, noise) if produced < horizon else windows[:, :0]
        produced += steps
        stopping = set()
        if is_root:
            host = frames.cpu().numpy()
            for row, i in enumerate(active):
                if streams[i] is not None and steps:
                    streams[i].accept(host[row], produced, watch, ensemble_cfg.stop_on_blowup, progress)
                    if ensemble_cfg.stop_on_blowup and streams[i].blowup is not None:
                        stopping.add(i)
        stopping = group.bcast(stopping, root=0)
        keep = [row for row, i in enumerate(active) if i not in stopping and riders[i][1].final > produced]
        if is_root:
            for row, i in enumerate(active):
                if row not in keep and streams[i] is not None:
                    streams[i].finish(i in stopping, progress)
                    streams[i] = None
        progress.poll()
        active = [active[row] for row in keep]
        if active and len(keep) < len(frames):
            rows = torch.as_tensor(keep, device=windows.device)
            windows, frames = windows[rows], frames[rows]
            if forecaster.neighbors is not None:
                forecaster.neighbors.keep(rows)
        if active:
            windows = forecaster.advance(windows, frames)
