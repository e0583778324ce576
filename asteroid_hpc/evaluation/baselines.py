"""Trivial forecasts every table reports beside the model (docs/method.md §3), built from the same history.

``history`` is ``[S, m, N, 3]`` (frames equally spaced), ``lead_steps`` the lead times to forecast in
units of that spacing (1 = the frame right after the last observed one). Results are ``[S, H, N, 3]``.

Two constant velocities: ours, "(history spacing)", is the finite difference of the last two history
frames; the peers' (GMN/EGNO), "(1-frame)", is their input velocity v = x_{t+1} − x_t, the forward
difference to the input file's frame just after the last observed one (their loaders compute
``v = x[1:] − x[:-1]``): it sees one frame (0.5 fs in MD17) past the start, as the peers' models do.
"""

from __future__ import annotations

import numpy as np

from ..geometry import kabsch_rotation, kabsch_superpose


def _check(history: np.ndarray, lead_steps) -> tuple[np.ndarray, np.ndarray]:
    history = np.asarray(history)
    steps = np.asarray(lead_steps, dtype=np.float64)
    if history.ndim != 4 or history.shape[-1] != 3:
        raise ValueError(f"history must be [S, m, N, 3], got {list(history.shape)}")
    if steps.ndim != 1 or steps.size == 0 or np.any(steps <= 0):
        raise ValueError("lead_steps must be a non-empty list of positive lead times")
    return history, steps


def persistence_forecast(history, lead_steps) -> np.ndarray:
    """The last observed frame, repeated at every lead time."""
    history, steps = _check(history, lead_steps)
    last = history[:, -1:]
    return np.repeat(last, steps.size, axis=1)


def constant_velocity_forecast(history, lead_steps) -> np.ndarray:
    """x_last + k · (x_last − x_previous) at lead time k: the finite-difference velocity of the last two
    observed frames, held constant."""
    history, steps = _check(history, lead_steps)
    if history.shape[1] < 2:
        raise ValueError("constant velocity needs at least two history frames")
    last = history[:, -1:].astype(np.float64)
    velocity = last - history[:, -2:-1]
    return (last + steps.reshape(1, -1, 1, 1) * velocity).astype(history.dtype)


def one_frame_velocity_forecast(history, next_frame, lead_frames) -> np.ndarray:
    """The peers' constant velocity: x_t + Δ · (x_{t+1} − x_t) with x_{t+1} the input's frame just after the
    last observed one (``next_frame`` [S, N, 3]; the peers' input velocity) and Δ the lead time in frames
    of the input (``lead_frames``, e.g. lead_steps × history stride)."""
    history, frames = _check(history, lead_frames)
    following = np.asarray(next_frame)
    if following.shape != history.shape[:1] + history.shape[2:]:
        raise ValueError(f"next_frame must be [S, N, 3] = {[history.shape[0], *history.shape[2:]]}, "
                         f"got {list(following.shape)}")
    last = history[:, -1:].astype(np.float64)
    velocity = following[:, None] - last
    return (last + frames.reshape(1, -1, 1, 1) * velocity).astype(history.dtype)


def history_mean_forecast(history, lead_steps) -> np.ndarray:
    """The mean of the observed frames, repeated at every lead time: the forecast of a process that
    forgets its state, which a model far beyond the correlation time of the motion should at least match."""
    history, steps = _check(history, lead_steps)
    mean = history.mean(axis=1, keepdims=True, dtype=np.float64).astype(history.dtype)
    return np.repeat(mean, steps.size, axis=1)


def aligned_history_mean_forecast(history, lead_steps) -> np.ndarray:
    """The history frames superposed onto the last one (Kabsch) and averaged, repeated at every lead time:
    the mean shape, placed where the molecule was last seen. For an isolated molecule whose orientation
    wanders unpredictably this is the history mean without the blur of the rotation."""
    history, steps = _check(history, lead_steps)
    last = history[:, -1:]
    mean = kabsch_superpose(history, last).mean(axis=1, keepdims=True).astype(history.dtype)
    return np.repeat(mean, steps.size, axis=1)


def constant_rotation_forecast(history, lead_steps) -> np.ndarray:
    """The last frame turned about its centroid at the history's mean angular rate, k steps of it at lead
    time k: the rigid rotation from the first to the last history frame (Kabsch), spread evenly over the
    m − 1 spacings. The rigid-body analogue of constant velocity, for a steadily tumbling molecule."""
    from scipy.spatial.transform import Rotation

    history, steps = _check(history, lead_steps)
    if history.shape[1] < 2:
        raise ValueError("constant rotation needs at least two history frames")
    last = history[:, -1].astype(np.float64)
    turn = kabsch_rotation(history[:, 0], last)  # row vectors: first @ turn ≈ last (centred)
    rate = Rotation.from_matrix(np.swapaxes(turn, -1, -2)).as_rotvec() / (history.shape[1] - 1)
    centre = last.mean(axis=1, keepdims=True)
    frames = [(last - centre) @ Rotation.from_rotvec(rate * k).as_matrix().transpose(0, 2, 1) + centre
              for k in steps]
    return np.stack(frames, axis=1).astype(history.dtype)


def reference_structure_forecast(history, lead_steps, reference) -> np.ndarray:
    """A fixed structure ``reference`` [N, 3] superposed onto the last observed frame (Kabsch), at every lead
    time: with the training frames' mean structure, the climatology of an isolated molecule."""
    history, steps = _check(history, lead_steps)
    last = history[:, -1]
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != last.shape[1:]:
        raise ValueError(f"reference must be [{last.shape[1]}, 3], got {list(reference.shape)}")
    placed = kabsch_superpose(np.broadcast_to(reference, last.shape), last).astype(history.dtype)
    return np.repeat(placed[:, None], steps.size, axis=1)


REFERENCE_BASELINE = "training mean structure"  # scored when the model carries a reference structure
CONSTANT_VELOCITY = "constant velocity (history spacing)"
ONE_FRAME_VELOCITY = "constant velocity (1-frame)"  # the peers'; scored when the samples carry the next frame
RIGID_BODY_BASELINES = ("aligned history mean", "constant rotation")  # molecules only: not scored in a box
BASELINES = {"persistence": persistence_forecast, CONSTANT_VELOCITY: constant_velocity_forecast,
             "history mean": history_mean_forecast, "aligned history mean": aligned_history_mean_forecast,
             "constant rotation": constant_rotation_forecast}
