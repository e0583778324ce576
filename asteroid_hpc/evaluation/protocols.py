"""The peers' evaluation protocols (docs/method.md §3) as index arithmetic over one trajectory in memory.

Protocol frame counts (ΔT = 3000, stride 10, margin 10000) are MD17 frames of 0.5 fs; they are turned
into frames of the trajectory at hand with :func:`to_file_frames`, so a trajectory saved every 5 fs
uses stride 1 for "stride 10".

- A (GMN/EGNO/ATOM): random starts t from frames [margin : −margin] drawn with the legacy NumPy
  generator seeded 100 (train, then val, then test, without replacement), heavy atoms only, targets
  t + ⌊ΔT·p/P⌋, p = 1…P. S2S is the error at the last target, S2T the mean over the P targets.
- B (ESTAG): the same starts; K history frames 10 apart ending at t; target t + 10.
- C (GeoTDM): all atoms, every 10th frame, chronological 60/20/20 split, windows of K conditioning
  + 20 predicted frames lying wholly inside one split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.random_starts import (PEERS_MARGIN_FRAMES, PEERS_SEED, PEERS_SIZES, RandomStartPlan, random_start_plan,
                                  random_start_split)
from ..errors import UserError

MD17_FRAME_FS = 0.5

A_DELTA_T_FRAMES = 3000
A_TARGETS = 8
A_MARGIN_FRAMES, A_SIZES, A_SEED = PEERS_MARGIN_FRAMES, PEERS_SIZES, PEERS_SEED
B_STRIDE_FRAMES = 10
C_STRIDE_FRAMES = 10
C_FRACTIONS = (0.6, 0.2, 0.2)
C_PREDICTED_FRAMES = 20
PROTOCOL_HISTORY_FRAMES = {"B": 10, "C": 10}  # A: peers give one frame + velocity; we give the model's m


@dataclass
class Trajectory:
    """Positions of one contiguous trajectory in memory."""

    positions: np.ndarray  # [F, N, 3] Å (a periodic trajectory: unwrapped, continuous in time)
    atomic_numbers: np.ndarray  # [N]
    frame_fs: float  # time between consecutive frames
    source: str
    cell: np.ndarray | None = None  # [F, 6] lengths (Å) and angles (°) of a periodic trajectory; None: open
    bonds: np.ndarray | None = None  # [B, 2] the topology's bonds among these atoms, when it has them

    def cells_at(self, frames: np.ndarray) -> np.ndarray | None:
        """The box [S, 6] at each of ``frames`` (None for an open system)."""
        return None if self.cell is None else self.cell[np.asarray(frames)]


@dataclass
class ProtocolSamples:
    """Histories and targets of one protocol, ready for the model and the baselines."""

    protocol: str
    split: str
    history: np.ndarray  # [S, K, N, 3]: K frames, history_stride_frames apart, ending at start_frames
    target: np.ndarray  # [S, H, N, 3]: the true frames at lead_steps
    atomic_numbers: np.ndarray  # [N] of the model's input atoms
    scored_atoms: np.ndarray  # indices (into N) of the atoms the metrics use
    lead_steps: np.ndarray  # [H] lead times in units of history_stride_frames (1 = next frame)
    history_stride_frames: int  # trajectory frames between consecutive history (and forecast) frames
    frame_fs: float
    start_frames: np.ndarray  # [S] trajectory index of the last history frame
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # [S, N, 3]: the input's frame just after each start (one frame of the file, whatever the history
    # spacing), for the peers' one-frame input velocity; None where the protocol does not have it (window)
    next_frame: np.ndarray | None = None
    cell: np.ndarray | None = None  # [S, 6]: the box of each sample's last history frame (periodic systems)
    # [B, 2] the topology's bonds between the input atoms: with their 1–3 pairs, the candidates for the distances
    # the forecast holds fixed where the history holds them fixed (model.constraints); None: no projection
    bonds: np.ndarray | None = None

    @property
    def lead_time_fs(self) -> np.ndarray:
        return self.lead_steps * self.history_stride_frames * self.frame_fs

    @property
    def forecast_frames(self) -> int:
        """How many consecutive frames the model must forecast to reach the last lead time."""
        return int(self.lead_steps.max())


# ------------------------------------------------------------------------------------------ arithmetic

def to_file_frames(protocol_frames: int, frame_fs: float, what: str) -> int:
    """A protocol frame count (MD17 frames of 0.5 fs) in frames of a trajectory saved every frame_fs."""
    ratio = protocol_frames * MD17_FRAME_FS / frame_fs
    if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
        raise UserError(f"{what} of {protocol_frames} MD17 frames ({protocol_frames * MD17_FRAME_FS:g} fs) is not a "
                        f"whole number of frames of a trajectory saved every {frame_fs:g} fs")
    return int(round(ratio))


def protocol_a_offsets(delta_t_frames: int = A_DELTA_T_FRAMES, n_targets: int = A_TARGETS) -> np.ndarray:
    """Target offsets ⌊ΔT·p/P⌋ for p = 1…P (3000, 8 → 375, 750, …, 3000)."""
    return np.array([delta_t_frames * p // n_targets for p in range(1, n_targets + 1)], dtype=np.int64)


def chronological_bounds(n_frames: int, fractions: tuple[float, float, float] = C_FRACTIONS) -> dict[str, tuple[int, int]]:
    """[lo, hi) frame ranges of train, val and test, in time order."""
    first = int(round(n_frames * fractions[0]))
    second = int(round(n_frames * (fractions[0] + fractions[1])))
    return {"train": (0, first), "val": (first, second), "test": (second, n_frames)}


def window_starts(lo: int, hi: int, window_frames: int, stride: int = 1) -> np.ndarray:
    """First frames of every window of ``window_frames`` frames lying wholly inside [lo, hi)."""
    return np.arange(lo, hi - window_frames + 1, stride, dtype=np.int64)


def subsample(indices: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """At most ``max_samples`` of ``indices`` (a seeded random subset, kept in order)."""
    if max_samples is None or len(indices) <= max_samples:
        return indices
    chosen = np.random.default_rng(seed).choice(len(indices), size=max_samples, replace=False)
    return indices[np.sort(chosen)]


def gather(positions: np.ndarray, last_frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """positions[last + offset] for every last frame and offset: [S, len(offsets), N, 3]."""
    return positions[last_frames[:, None] + offsets[None, :]]


# ------------------------------------------------------------------------------------------ protocols

def _history_offsets(history_frames: int, stride: int) -> np.ndarray:
    return -stride * np.arange(history_frames - 1, -1, -1, dtype=np.int64)


def heavy_atoms(atomic_numbers: np.ndarray, source: str) -> np.ndarray:
    heavy = np.flatnonzero(np.asarray(atomic_numbers) > 1)
    if heavy.size == 0:
        raise UserError(f"{source}: no heavy atoms (atomic number > 1) for protocol A")
    return heavy


def _random_start_frames(traj: Trajectory, split: str, history_frames: int, a_stride: int,
                         notes: list[str], frame_range: tuple[int, int] | None = None,
                         window: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, RandomStartPlan]:
    """Starts shared by A and B: the plan covers the history of both and A's last target. With
    ``frame_range`` [lo, hi), only the starts whose window (``window`` = frames before and after the start)
    lies wholly inside are kept (the draw itself is the whole file's)."""
    delta_t = to_file_frames(A_DELTA_T_FRAMES, traj.frame_fs, "protocol A's ΔT")
    b_stride = to_file_frames(B_STRIDE_FRAMES, traj.frame_fs, "protocol B's stride")
    margin = to_file_frames(A_MARGIN_FRAMES, traj.frame_fs, "protocol A's margin")
    sizes = A_SIZES
    try:
        plan = random_start_plan(len(traj.positions), before_frames=(history_frames - 1) * max(a_stride, b_stride),
                                 after_frames=delta_t, margin_frames=margin, sizes=sizes)
    except UserError as exc:  # name the file
        raise UserError(f"{traj.source}: {exc}") from None
    if plan.scaled:
        notes.append(f"scaled down: {len(traj.positions)} frames are fewer than the peers' protocol needs; "
                     f"used {plan.describe()} instead of margin {margin} and {sizes[0]}/{sizes[1]}/{sizes[2]}")
    starts = random_start_split(len(traj.positions), plan, A_SEED)[split]
    if frame_range is not None:
        lo, hi = frame_range
        drawn, starts = len(starts), starts[(starts - window[0] >= lo) & (starts + window[1] < hi)]
        if not len(starts):
            raise UserError(f"{traj.source}: none of the {drawn} {split} starts has its whole window (history and "
                            f"targets) inside evaluate.a_frames=[{lo}, {hi}]")
        notes.append(f"evaluate.a_frames=[{lo}, {hi}]: {len(starts)} of the {drawn} {split} starts, those whose "
                     f"whole window (history and targets) lies inside")
    return starts, plan


def protocol_a_stride(history_stride_frames: int, frame_fs: float) -> int:
    """Protocol A's history stride in frames of the trajectory; it must divide the target spacing ΔT/P
    (375 MD17 frames: 1, 3, 5, 15, 25, 75, 125 or 375), so a 5 fs (stride 10) model cannot be scored on A."""
    spacing = A_DELTA_T_FRAMES // A_TARGETS
    if history_stride_frames < 1 or spacing % history_stride_frames:
        raise UserError(f"protocol A: history stride {history_stride_frames} frames does not divide the target "
                        f"spacing {spacing} frames")
    return to_file_frames(history_stride_frames, frame_fs, "protocol A's history stride")


def protocol_a(traj: Trajectory, *, split: str, history_frames: int, history_stride_frames: int = 375,
               heavy_input: bool = True, max_samples: int | None = None, seed: int = 0,
               frame_range: tuple[int, int] | None = None) -> ProtocolSamples:
    """Protocol A samples. ``history_stride_frames`` (MD17 frames) must divide ΔT/P: the model steps at that
    stride and is scored on the frames that land on the targets. ``frame_range`` [lo, hi) (file frames)
    keeps the starts whose history and targets all lie inside."""
    notes: list[str] = []
    offsets = np.array([to_file_frames(int(o), traj.frame_fs, "protocol A's target offset") for o in protocol_a_offsets()])
    stride = protocol_a_stride(history_stride_frames, traj.frame_fs)
    starts, plan = _random_start_frames(traj, split, history_frames, stride, notes, frame_range,
                                        ((history_frames - 1) * stride, int(offsets[-1])))
    starts = _limit(starts, max_samples, seed, notes)
    heavy = heavy_atoms(traj.atomic_numbers, traj.source)
    atoms = heavy if heavy_input else np.arange(len(traj.atomic_numbers))
    history = gather(traj.positions, starts, _history_offsets(history_frames, stride))[:, :, atoms]
    target = gather(traj.positions, starts, offsets)[:, :, atoms]
    scored = np.arange(len(atoms)) if heavy_input else heavy
    if not heavy_input:
        notes.append("the model sees all atoms; only heavy atoms are scored")
    return ProtocolSamples("A", split, history, target, traj.atomic_numbers[atoms], scored, offsets // stride,
                           stride, traj.frame_fs, starts,
                           settings={"delta_t_frames": int(offsets[-1]), "targets": A_TARGETS,
                                     "margin_frames": plan.margin_frames, "split_sizes": list(plan.kept_sizes),
                                     "split_seed": A_SEED, "atoms": "heavy" if heavy_input else "all (heavy scored)",
                                     "history_frames": history_frames, "history_stride_frames": stride,
                                     **_range_setting(frame_range)},
                           notes=notes, next_frame=traj.positions[starts + 1][:, atoms], cell=traj.cells_at(starts))


def protocol_b(traj: Trajectory, *, split: str, history_frames: int, a_history_stride_frames: int = 375,
               max_samples: int | None = None, seed: int = 0,
               frame_range: tuple[int, int] | None = None) -> ProtocolSamples:
    """Protocol B samples: the starts of protocol A, history frames 10 apart, target 10 frames later;
    ``frame_range`` as for :func:`protocol_a` (B's own window must lie inside)."""
    notes: list[str] = []
    stride = to_file_frames(B_STRIDE_FRAMES, traj.frame_fs, "protocol B's stride")
    a_stride = to_file_frames(a_history_stride_frames, traj.frame_fs, "protocol A's history stride")
    starts, plan = _random_start_frames(traj, split, history_frames, a_stride, notes, frame_range,
                                        ((history_frames - 1) * stride, stride))
    starts = _limit(starts, max_samples, seed, notes)
    heavy = heavy_atoms(traj.atomic_numbers, traj.source)
    history = gather(traj.positions, starts, _history_offsets(history_frames, stride))[:, :, heavy]
    target = gather(traj.positions, starts, np.array([stride]))[:, :, heavy]
    return ProtocolSamples("B", split, history, target, traj.atomic_numbers[heavy], np.arange(len(heavy)),
                           np.array([1]), stride, traj.frame_fs, starts,
                           settings={"margin_frames": plan.margin_frames, "split_sizes": list(plan.kept_sizes),
                                     "split_seed": A_SEED, "atoms": "heavy", "history_frames": history_frames,
                                     "history_stride_frames": stride, **_range_setting(frame_range)},
                           notes=notes, next_frame=traj.positions[starts + 1][:, heavy], cell=traj.cells_at(starts))


def protocol_c(traj: Trajectory, *, split: str, history_frames: int, max_samples: int | None = None,
               seed: int = 0) -> ProtocolSamples:
    """Protocol C samples: every 10th frame, chronological 60/20/20, windows of K + 20 frames in one split."""
    notes: list[str] = []
    stride = to_file_frames(C_STRIDE_FRAMES, traj.frame_fs, "protocol C's downsampling")
    n_downsampled = (len(traj.positions) - 1) // stride + 1
    lo, hi = chronological_bounds(n_downsampled)[split]
    window = history_frames + C_PREDICTED_FRAMES
    first = window_starts(lo, hi, window)
    if first.size == 0:
        raise UserError(f"{traj.source}: the {split} split of protocol C has {hi - lo} downsampled frames, fewer than "
                        f"one window of {window}")
    first = _limit(first, max_samples, seed, notes)
    last_history = (first + history_frames - 1) * stride  # in trajectory frames
    history = gather(traj.positions, last_history, _history_offsets(history_frames, stride))
    lead_steps = np.arange(1, C_PREDICTED_FRAMES + 1)
    target = gather(traj.positions, last_history, lead_steps * stride)
    return ProtocolSamples("C", split, history, target, traj.atomic_numbers, np.arange(len(traj.atomic_numbers)),
                           lead_steps, stride, traj.frame_fs, last_history,
                           settings={"downsample_frames": stride, "split_fractions": list(C_FRACTIONS),
                                     "split_bounds_downsampled": [lo, hi], "window_stride_downsampled": 1,
                                     "atoms": "all", "history_frames": history_frames,
                                     "predicted_frames": C_PREDICTED_FRAMES, "history_stride_frames": stride},
                           notes=notes, next_frame=traj.positions[last_history + 1], cell=traj.cells_at(last_history))


def pool_samples(parts: list[ProtocolSamples], sources: list[str]) -> ProtocolSamples:
    """The samples of one protocol drawn from several trajectories of the same molecule, as one set (its
    scores are the MSE over all samples); ``settings["samples_per_trajectory"]`` keeps the boundaries."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for part, source in zip(parts[1:], sources[1:]):
        if (part.protocol != first.protocol or not np.array_equal(part.lead_steps, first.lead_steps)
                or part.history_stride_frames != first.history_stride_frames or part.frame_fs != first.frame_fs
                or not np.array_equal(part.atomic_numbers, first.atomic_numbers)
                or part.history.shape[1:] != first.history.shape[1:]):
            raise UserError(f"{source}: not the same atoms, frame spacing or protocol {first.protocol} settings as "
                            f"{sources[0]}; trajectories evaluated together must be of one molecule")
    notes = list(dict.fromkeys(note for part in parts for note in part.notes))
    settings = {**first.settings, "trajectories": list(sources),
                "samples_per_trajectory": [len(part.history) for part in parts]}
    def joined(name: str) -> np.ndarray | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else np.concatenate(values)

    if len({p.cell is None for p in parts}) > 1:
        raise UserError(f"{sources[0]}: periodic and open trajectories cannot be evaluated together")
    return ProtocolSamples(first.protocol, first.split, np.concatenate([p.history for p in parts]),
                           np.concatenate([p.target for p in parts]), first.atomic_numbers, first.scored_atoms,
                           first.lead_steps, first.history_stride_frames, first.frame_fs,
                           np.concatenate([p.start_frames for p in parts]), settings, notes, joined("next_frame"),
                           joined("cell"))


def _range_setting(frame_range: tuple[int, int] | None) -> dict:
    return {} if frame_range is None else {"frame_range": [int(frame_range[0]), int(frame_range[1])]}


def _limit(indices: np.ndarray, max_samples: int | None, seed: int, notes: list[str]) -> np.ndarray:
    limited = subsample(indices, max_samples, seed)
    if len(limited) < len(indices):
        notes.append(f"--max-samples: {len(limited)} of {len(indices)} samples (random subset, seed {seed})")
    return limited
