"""Score a model and the trivial baselines on the same protocol samples."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..logs import get_logger
from ..errors import UserError
from ..metrics import ade_fde, mse_per_lead_time, superposed_mse_per_lead_time
from .members import member_scores, model_rows
from .baselines import (BASELINES, CONSTANT_VELOCITY, ONE_FRAME_VELOCITY, REFERENCE_BASELINE,
                        RIGID_BODY_BASELINES, one_frame_velocity_forecast, reference_structure_forecast)
from .protocols import PROTOCOL_HISTORY_FRAMES, ProtocolSamples

log = get_logger(__name__)

# how each protocol's headline numbers are quoted (docs/method.md §3)
MSE_SCALE = {"A": 1e-2, "B": 1e-3, "C": 1e-2, "window": 1e-2}


@dataclass
class ProtocolResult:
    """Errors of every method on one protocol's samples."""

    protocol: str
    split: str
    n_samples: int
    n_atoms_scored: int
    history_frames: int
    history_stride_frames: int
    frame_fs: float
    lead_time_fs: list[float]
    mse_per_lead_angstrom2: dict[str, list[float]]  # method -> [H]
    headline: dict[str, dict[str, float]]  # method -> metric name -> value
    mse_scale: float
    # the same after each forecast frame is superposed onto the true one: the error of the shape alone
    superposed_mse_per_lead_angstrom2: dict[str, list[float]] = field(default_factory=dict)
    superposed_headline: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_seconds: float = 0.0
    # several trajectories pooled: each one's headline, {"source", "n_samples", "headline": method -> metrics}
    per_trajectory: list[dict] = field(default_factory=list)
    # per trajectory: how close its starts lie to the model's training windows (data.coverage), with "source"
    training_overlap: list[dict] = field(default_factory=list)
    # evaluate.members: the members' count, seed, CRPS and spread (evaluation.members.member_scores); {}: none
    members: dict = field(default_factory=dict)


def mse_headline(protocol: str, mse: np.ndarray) -> dict[str, float]:
    """The MSE numbers a protocol's table quotes, from the MSE per lead time, in Å²."""
    if protocol == "A":
        return {"S2S MSE": float(mse[-1]), "S2T MSE": float(mse.mean())}
    if protocol == "B":
        return {"MSE": float(mse[0])}
    return {"MSE": float(mse.mean())}


def headline_metrics(protocol: str, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The numbers a protocol's table quotes, in Å² (MSE) and Å (ADE/FDE)."""
    mse = mse_headline(protocol, mse_per_lead_time(prediction, target))
    if protocol in ("A", "B"):
        return mse
    ade, fde = ade_fde(prediction, target)
    return {"ADE": ade, "FDE": fde, **mse}


def score_samples(samples: ProtocolSamples, model_prediction: np.ndarray | None, model_seconds: float = 0.0,
                  expected_history_frames: int | None = None, reference=None,
                  members: np.ndarray | None = None) -> ProtocolResult:
    """Scores of the model (when given) and of every baseline on ``samples``, on the scored atoms; with the
    model's ``reference`` structure [N, 3] also that structure placed on the last frame. With ``members``
    [S, K, H, N, 3] the model's row is their mean, ``model_prediction`` (its path of means) is scored beside
    it, and the members' CRPS and spread go into ``members`` (:mod:`asteroid_hpc.evaluation.members`)."""
    atoms = samples.scored_atoms
    target = samples.target[:, :, atoms]
    predictions = model_rows(model_prediction, members)
    periodic = samples.cell is not None  # a box has no rigid-body motion to superpose or continue
    for name, baseline in BASELINES.items():
        if periodic and name in RIGID_BODY_BASELINES:
            continue
        predictions[name] = baseline(samples.history, samples.lead_steps)
        if name == CONSTANT_VELOCITY and samples.next_frame is not None:
            predictions[ONE_FRAME_VELOCITY] = one_frame_velocity_forecast(
                samples.history, samples.next_frame, samples.lead_steps * samples.history_stride_frames)
    if reference is not None and len(reference):
        predictions[REFERENCE_BASELINE] = reference_structure_forecast(samples.history, samples.lead_steps, reference)
    per_lead, headline, superposed_per_lead, superposed_headline = {}, {}, {}, {}
    for name, prediction in predictions.items():
        prediction = prediction[:, :, atoms]
        per_lead[name] = mse_per_lead_time(prediction, target).tolist()
        headline[name] = headline_metrics(samples.protocol, prediction, target)
        if not periodic:
            superposed = superposed_mse_per_lead_time(prediction, target)
            superposed_per_lead[name] = superposed.tolist()
            superposed_headline[name] = mse_headline(samples.protocol, superposed)
    per_trajectory = []
    counts = samples.settings.get("samples_per_trajectory", [])
    if len(counts) > 1:
        bounds = np.cumsum([0, *counts])
        for source, lo, hi in zip(samples.settings["trajectories"], bounds[:-1], bounds[1:]):
            per_trajectory.append({"source": source, "n_samples": int(hi - lo), "headline": {
                name: headline_metrics(samples.protocol, prediction[lo:hi, :, atoms], target[lo:hi])
                for name, prediction in predictions.items()}})
    notes = list(samples.notes)
    if periodic:
        notes.append("periodic system: no superposition and no rigid-body baselines (aligned history mean, "
                     "constant rotation): a box of liquid does not turn as one body")
    k = samples.history.shape[1]
    if expected_history_frames is not None and k != expected_history_frames:
        notes.append(f"deviation: the protocol gives {expected_history_frames} history frames, the model takes {k}")
    return ProtocolResult(samples.protocol, samples.split, len(target), len(atoms), k, samples.history_stride_frames,
                          samples.frame_fs, samples.lead_time_fs.tolist(), per_lead, headline,
                          MSE_SCALE[samples.protocol], superposed_per_lead, superposed_headline,
                          settings=dict(samples.settings), notes=notes,
                          model_seconds=model_seconds, per_trajectory=per_trajectory,
                          members={} if members is None else member_scores(members, target, atoms))


def evaluate_samples(model, samples: ProtocolSamples, *, batch_size: int = 64, members: int = 0,
                     seed: int = 0) -> ProtocolResult:
    """Run the model on ``samples`` (timed) and score it beside the baselines (the baselines alone when
    ``model`` is None). With ``members`` K ≥ 2 a stochastic model is also rolled out K times per sample
    (seeded with ``seed``) and scored on their mean (:func:`score_samples`); a deterministic model has no
    members: logged, and scored as with ``members=0``."""
    if len(samples.history) == 0:
        raise UserError(f"protocol {samples.protocol}: no {samples.split} samples")
    log.info("protocol %s: %d %s samples, %d history frames %d frames apart, %d forecast frames",
             samples.protocol, len(samples.history), samples.split, samples.history.shape[1],
             samples.history_stride_frames, samples.forecast_frames)
    prediction, sampled, seconds = None, None, 0.0
    if model is not None:
        started = time.perf_counter()
        prediction = model_forecast(model, samples, batch_size=batch_size)
        seconds = time.perf_counter() - started
        log.info("protocol %s: model forecast in %.1f s", samples.protocol, seconds)
        sampled, member_seconds = _member_forecast(model, samples, members, batch_size, seed)
        seconds += member_seconds
    for note in samples.notes:
        log.warning("protocol %s: %s", samples.protocol, note)
    reference = model.reference.cpu().numpy() if model is not None and model.uses_reference else None
    result = score_samples(samples, prediction, seconds, PROTOCOL_HISTORY_FRAMES.get(samples.protocol), reference,
                           members=sampled)
    if sampled is not None:
        result.members["seed"] = seed
    return result


def _member_forecast(model, samples: ProtocolSamples, members: int, batch_size: int,
                     seed: int) -> tuple[np.ndarray | None, float]:
    """``members`` sampled rollouts of every sample [S, K, H, N, 3] and their seconds; (None, 0) without
    members or for a deterministic model (logged: it has none)."""
    if not members:
        return None, 0.0
    if not getattr(model.cfg, "stochastic", False):
        log.warning("protocol %s: evaluate.members=%d but the model is deterministic: it has no members; scored on "
                    "its forecast", samples.protocol, members)
        return None, 0.0
    started = time.perf_counter()
    sampled = model_forecast(model, samples, batch_size=batch_size, seed=seed, members=members)
    seconds = time.perf_counter() - started
    log.info("protocol %s: %d members per sample (seed %d) in %.1f s", samples.protocol, members, seed, seconds)
    return sampled, seconds


def build_samples(protocol: str, traj, *, split: str, history_frames: int, max_samples: int | None, seed: int,
                  a_history_stride_frames: int, a_heavy_input: bool,
                  a_frames: tuple[int, int] | None = None) -> ProtocolSamples:
    """Samples of protocol A, B or C from one trajectory in memory (A and B: starts whose window lies in
    ``a_frames`` when given)."""
    from .protocols import protocol_a, protocol_b, protocol_c

    if protocol == "A":
        return protocol_a(traj, split=split, history_frames=history_frames, max_samples=max_samples, seed=seed,
                          history_stride_frames=a_history_stride_frames, heavy_input=a_heavy_input,
                          frame_range=a_frames)
    if protocol == "B":
        return protocol_b(traj, split=split, history_frames=history_frames, max_samples=max_samples, seed=seed,
                          a_history_stride_frames=a_history_stride_frames, frame_range=a_frames)
    if protocol == "C":
        return protocol_c(traj, split=split, history_frames=history_frames, max_samples=max_samples, seed=seed)
    raise ValueError(f"unknown trajectory protocol {protocol!r}")


def model_forecast(model, samples: ProtocolSamples, batch_size: int = 64, device: str = "cpu",
                   seed: int = 0, members: int = 0) -> np.ndarray:
    """The model's forecast at the samples' lead times, ``batch_size`` samples at a time: [S, H, N, 3] float64 Å.

    A stochastic model (``model.stochastic``) gives its path of means for the error protocols (MSE wants the
    conditional mean) and samples for protocol L (physics wants the distribution); a deterministic model
    ignores both. With ``members`` K ≥ 1 a stochastic model samples K rollouts of every sample on any
    protocol: [S, K, H, N, 3] in the model's dtype, the K copies of max(1, ``batch_size`` // K) samples side by
    side in one forward. Sample s (member k) draws its noise from its own generator seeded (``seed``, s) or
    (``seed``, s, k): the same for any batch size. With ``samples.bonds``, each
    batch's rollouts hold the distances its histories hold fixed
    (:func:`asteroid_hpc.model.constraints.held_distances`)."""
    import torch

    from ..geometry import cell_matrix
    from ..model.constraints import held_distances
    from ..model.thermal import row_generators

    atomic_numbers = torch.as_tensor(np.asarray(samples.atomic_numbers), dtype=torch.long, device=device)
    find = held_distances(samples.bonds, samples.atomic_numbers)
    pick = samples.lead_steps - 1
    mean_only = samples.protocol != "L" and not members
    sampled = model.samples and not mean_only
    per_forward = max(1, batch_size // members) if members else batch_size
    outputs = []
    for first in range(0, len(samples.history), per_forward):
        rows = range(first, min(first + per_forward, len(samples.history)))
        seeds = [(seed, s, k) for s in rows for k in range(members)] if members else [(seed, s) for s in rows]
        sampling = {"mean_only": mean_only, "generator": row_generators(seeds, device) if sampled else None}
        history = torch.as_tensor(samples.history[first:first + per_forward], dtype=torch.float32, device=device)
        cell = None if samples.cell is None else torch.as_tensor(
            cell_matrix(samples.cell[first:first + per_forward]), dtype=torch.float32, device=device)
        if members:  # row b·K + k: member k of sample b
            history = history.repeat_interleave(members, dim=0)
            cell = None if cell is None else cell.repeat_interleave(members, dim=0)
        frames = model.forecast(history, atomic_numbers, samples.forecast_frames, cell=cell, **sampling,
                                constraints=find(history, cell))[:, pick]
        outputs.append(frames.unflatten(0, (-1, members)).cpu().numpy() if members
                       else frames.double().cpu().numpy())
    return np.concatenate(outputs)

