"""Protocol L on periodic trajectories: the same rollouts as for a molecule (``long_rollout_starts`` windows spread
over the files, ``long_rollout_ps`` of frames ``long_rollout_stride_fs`` apart), scored by the observables of
:mod:`asteroid_hpc.evaluation.periodic_rollout` against the files' MD (unwrapped on loading).

Every rollout keeps the box of its last history frame (constant volume); the observables use the box of the
last reference frame (for an NPT file both are the last observed box; the notes say so). Bonds come from the
topology when it has them, else from covalent radii on the first reference frame (minimum image).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..logs import get_logger
from ..metrics import liquid
from .long_rollout import rollout_starts, stride_frames
from .periodic_rollout import PeriodicSystem, score_periodic_rollout
from .protocols import ProtocolSamples, Trajectory

log = get_logger(__name__)


@dataclass
class PeriodicRolloutResult:
    """Protocol L's result for a periodic system: the scores (JSON-ready) and how they were made."""

    scores: dict
    history_frames: int
    starts: list[dict]  # {"source", "frame"}: last history frame of each rollout
    settings: dict
    notes: list[str] = field(default_factory=list)
    model_seconds: float = 0.0
    score_seconds: float = 0.0


def _check_same_system(trajectories: list[Trajectory]) -> None:
    first = trajectories[0]
    for traj in trajectories[1:]:
        if not np.array_equal(traj.atomic_numbers, first.atomic_numbers) or traj.cell is None:
            raise UserError(f"{traj.source}: not the periodic system of {first.source}; protocol L scores one system")


def _bonds(trajectories: list[Trajectory], settings, notes: list[str]) -> np.ndarray:
    first = trajectories[0]
    if first.bonds is not None:
        return first.bonds
    notes.append("bonds: from covalent radii on the first reference frame (minimum image); no topology bonds")
    return liquid.detect_periodic_bonds(first.positions[0], first.atomic_numbers, first.cell[0],
                                        settings.bond_tolerance_angstrom)


def _held_note(samples: ProtocolSamples) -> str:
    """What the rollouts hold fixed (the projection's constraints, found on all starting windows at once)."""
    import torch

    from ..geometry import cell_matrix
    from ..model.constraints import held_distances

    history = torch.as_tensor(samples.history, dtype=torch.float64)
    held = held_distances(samples.bonds, samples.atomic_numbers)(history, torch.as_tensor(cell_matrix(samples.cell)))
    if held is None:
        return "constraints: no bond or 1–3 distance is fixed in the starting windows; nothing held"
    return (f"constraints: {len(held)} bond and 1–3 distances fixed in every starting window (MD's constraints) are "
            "held at their lengths after every forecast step (evaluate.constraints=auto)")


def periodic_long_rollout(model, trajectories: list[Trajectory], settings, *,
                          batch_size: int = 64) -> PeriodicRolloutResult:
    """Run protocol L (``settings``: the ``evaluate`` config section) with ``model`` on periodic ``trajectories``."""
    from .run import model_forecast

    _check_same_system(trajectories)
    notes: list[str] = []
    strides = [stride_frames(settings.long_rollout_stride_fs, t.frame_fs, t.source) for t in trajectories]
    frame_fs = float(settings.long_rollout_stride_fs)
    m = model.cfg.history_frames
    n_frames = max(2, int(round(settings.long_rollout_ps * 1000.0 / frame_fs)))
    starts = rollout_starts(trajectories, strides, m, settings.long_rollout_starts)
    history = np.stack([trajectories[f].positions[last - strides[f] * np.arange(m - 1, -1, -1)] for f, last in starts])
    cells = np.stack([trajectories[f].cell[last] for f, last in starts])
    atomic_numbers = np.asarray(trajectories[0].atomic_numbers)
    bonds = _bonds(trajectories, settings, notes)
    samples = ProtocolSamples("L", "all", history, np.zeros((len(starts), 0) + history.shape[2:]), atomic_numbers,
                              np.arange(len(atomic_numbers)), np.arange(1, n_frames + 1), 1, frame_fs,
                              np.array([last for _, last in starts]), cell=cells,
                              bonds=bonds if settings.constraints == "auto" else None)
    log.info("protocol L (periodic, %d atoms): %d rollouts of %d frames (%g ps, %g fs apart)", len(atomic_numbers),
             len(starts), n_frames, n_frames * frame_fs / 1000.0, frame_fs)
    if samples.bonds is not None:
        notes.append(_held_note(samples))
    began = time.perf_counter()
    forecast = model_forecast(model, samples, batch_size=batch_size, seed=settings.seed)
    model_seconds = time.perf_counter() - began
    log.info("protocol L: rollouts in %.1f s", model_seconds)
    if any(not np.allclose(t.cell, t.cell[0]) for t in trajectories):
        notes.append("the box changes size in the reference (NPT): rollouts keep their last observed box; the "
                     "observables use the last reference frame's box")
    system = PeriodicSystem.of(atomic_numbers, bonds, trajectories[0].cell[-1])
    began = time.perf_counter()
    reference = [t.positions[::s].astype(np.float64) for t, s in zip(trajectories, strides)]
    scores = score_periodic_rollout(forecast, history[:, -1], reference, system, frame_fs, settings.clash_angstrom)
    score_seconds = time.perf_counter() - began
    return PeriodicRolloutResult(
        scores, m, [{"source": trajectories[f].source, "frame": int(last)} for f, last in starts],
        {"long_rollout_ps": settings.long_rollout_ps, "long_rollout_starts": len(starts),
         "long_rollout_stride_fs": frame_fs, "stride_frames": strides, "clash_angstrom": settings.clash_angstrom,
         "trajectories": [t.source for t in trajectories]}, notes, model_seconds, score_seconds)
