"""Progress across ranks: group roots send (member, frames done) to rank 0, which reports members done / total
and an ETA through the shared reporter (a log line every LOG_EVERY_SECONDS and when a member finishes, or a
bar on a terminal). Messages are point-to-point and non-blocking, so groups never wait for each other."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..logs import get_logger
from ..progress import Progress as Reporter

log = get_logger(__name__)
PROGRESS_TAG = 7301
POLL_SECONDS = 0.05  # sleep between polls while rank 0 waits, so it does not spin on a shared core
LOG_EVERY_SECONDS = 5.0


@dataclass
class ProgressState:
    members: int
    horizon_frames: int
    started: float = field(default_factory=time.monotonic)
    frames: dict[int, int] = field(default_factory=dict)  # member -> frames on disk
    resumed: dict[int, int] = field(default_factory=dict)  # member -> frames it had when this run began
    done: set[int] = field(default_factory=set)

    def update(self, member: int, frames: int, resumed: int, finished: bool) -> None:
        self.frames[member] = frames
        self.resumed.setdefault(member, resumed)
        if finished:
            self.done.add(member)

    def eta_seconds(self) -> float | None:
        computed = sum(self.frames[m] - self.resumed[m] for m in self.frames)
        remaining = self.members * self.horizon_frames - sum(self.frames.values())
        if computed <= 0:
            return None
        return (time.monotonic() - self.started) / computed * remaining

    def line(self) -> str:
        total = self.members * self.horizon_frames
        eta = self.eta_seconds()
        eta_text = "-" if eta is None else f"{eta:.0f} s"
        return (f"members done {len(self.done)}/{self.members}, frames {sum(self.frames.values())}/{total} "
                f"({100.0 * sum(self.frames.values()) / total:.0f} %), ETA {eta_text}")


class Progress:
    """Every rank makes one; ``report`` on group roots, ``poll``/``wait_all`` act on rank 0 only."""

    def __init__(self, world, members: int, horizon_frames: int):
        self.world = world
        self.state = ProgressState(members, horizon_frames) if world.rank == 0 else None
        self._reporter = Reporter("ensemble", members * horizon_frames, unit="frame", enabled=world.rank == 0,
                                  every_s=LOG_EVERY_SECONDS)
        self._requests = []

    def report(self, member: int, frames: int, resumed: int, finished: bool) -> None:
        message = (member, frames, resumed, finished)
        if self.world.rank == 0:
            self._receive(message)
        else:
            self._requests.append(self.world.comm.isend(message, dest=0, tag=PROGRESS_TAG))

    def poll(self) -> None:
        """Take in the messages that have arrived (rank 0), without waiting."""
        if self.state is None or self.world.comm is None:
            return
        while self.world.comm.iprobe(tag=PROGRESS_TAG):
            self._receive(self.world.comm.recv(tag=PROGRESS_TAG))

    def wait_all(self) -> None:
        """Rank 0: wait until every member is reported finished. Other ranks: complete their sends."""
        if self.state is None:
            for request in self._requests:
                request.wait()
            self._requests.clear()
            return
        while len(self.state.done) < self.state.members and self.world.comm is not None:
            self.poll()
            time.sleep(POLL_SECONDS)
        self._reporter.close()
        log.info("ensemble: %s", self.state.line())

    def _receive(self, message) -> None:
        member, frames, resumed, finished = message
        self.state.update(member, frames, resumed, finished)
        self._reporter.update(sum(self.state.frames.values()), f"ensemble: {self.state.line()}", force=finished,
                              members=f"{len(self.state.done)}/{self.state.members}")
