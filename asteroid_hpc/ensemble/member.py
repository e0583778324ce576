"""One member's file: where a partial file lets the rollout continue, opening and appending to it.

The group root (domain 0) owns the file; the other ranks of the group only compute. Frames are appended
after whole passes only, so the frame count of a partial file is a pass boundary (or the horizon) and the
rollout continues from it exactly: the window is the last m frames of (starting window + frames on disk).
The batched rollout that drives these is :mod:`asteroid_hpc.ensemble.batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.amber import AmberReader, AmberWriter, partial_path
from ..logs import get_logger
from .periodic import OutputWrap
from .perturb import InitialCondition, model_bonds
from .store import member_path

log = get_logger(__name__)


@dataclass
class MemberJob:
    outdir: Path
    member: int
    horizon_frames: int
    chunk_frames: int
    attributes: dict  # written into the member file
    output_wrap: str = "molecules"  # periodic systems: ensemble.output_wrap (recorded in the file)


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


def lead_times_ps(lead: np.ndarray, timestep_ps: float | None, end_time_ps: float) -> np.ndarray:
    """Times of lead times ``lead``: the initial window's last frame time plus lead × the forecast spacing
    (zeros when the spacing is unknown)."""
    return end_time_ps + lead * timestep_ps if timestep_ps else np.zeros(len(lead))


def output_wrap(initial: InitialCondition, mode: str, full_system: bool = False) -> Optional[OutputWrap]:
    """How a periodic system's member files hold its coordinates (``ensemble.output_wrap``); None: open."""
    if initial.cell is None:
        return None
    if full_system:
        return OutputWrap(mode, initial.cell, initial.file_atoms, initial.bonds)
    return OutputWrap(mode, initial.cell, initial.n_atoms, model_bonds(initial))


def _open_writer(job: MemberJob, initial: InitialCondition, frames_done: int,
                 full_system: bool = False) -> AmberWriter:
    """The member's file: the model's atoms, or (``full_system``) all atoms of the initial trajectory; with the
    cell of every frame in a periodic box."""
    path = member_path(job.outdir, job.member)
    if frames_done:
        return AmberWriter.resume(path)
    partial_path(path).unlink(missing_ok=True)
    n_atoms, numbers = (initial.file_atoms, initial.file_numbers) if full_system else \
        (initial.n_atoms, initial.atomic_numbers)
    attributes = job.attributes if initial.cell is None else {**job.attributes, "output_wrap": job.output_wrap}
    return AmberWriter(path, n_atoms, numbers, timestep_ps=initial.timestep_ps, cell=initial.cell is not None,
                       title=f"asteroid-hpc ensemble member {job.member}", attributes=attributes)


def full_frames(frames: np.ndarray, held: np.ndarray, atom_indices: np.ndarray) -> np.ndarray:
    """Frames [F, n, 3] of the model's atoms ``atom_indices`` placed into all atoms, the others at ``held``."""
    full = np.repeat(held[None], len(frames), axis=0)
    full[:, atom_indices] = frames
    return full


def _flush(writer: AmberWriter, buffer: list[np.ndarray], frames_done: int, initial: InitialCondition,
           held: Optional[np.ndarray] = None, wrap: Optional[OutputWrap] = None) -> int:
    """Append the buffered frames (with ``held``: as full-system frames, :func:`full_frames`; in a periodic box
    as ``wrap`` puts them, with the cell of every frame)."""
    if not buffer:
        return frames_done
    frames = np.concatenate(buffer)
    buffer.clear()
    if held is not None:
        frames = full_frames(frames, held, initial.atom_indices)
    lead = frames_done + 1 + np.arange(len(frames))  # lead time j is frame j after the window's last frame
    # times continue the initial trajectory's: appended to it, a member reads as one trajectory
    times = lead_times_ps(lead, initial.timestep_ps, initial.end_time_ps)
    if wrap is None:
        writer.append(frames, times)
    else:
        lengths, angles = wrap.cell_arrays(len(frames))
        writer.append(wrap(frames), times, cell_lengths=lengths, cell_angles=angles)
    return frames_done + len(frames)
