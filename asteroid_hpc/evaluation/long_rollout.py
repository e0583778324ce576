"""Protocol L: the physics of long free-running rollouts against the reference MD at the same frame spacing.

From ``long_rollout_starts`` windows spread evenly over the trajectory files (round-robin over files, so
several independent test trajectories each give starts), the model rolls out ``long_rollout_ps`` of
frames ``long_rollout_stride_fs`` apart. The reference MD is every file's frames at that spacing.

Observables (:mod:`asteroid_hpc.metrics.physics`): bond lengths (bonds from covalent radii on the first
reference frame) and bond angles, radius of gyration, clashes (non-bonded pairs closer than
``clash_angstrom``), the largest per-frame displacement, the finite-difference kinetic temperature, the
all-pair distance distribution (Wasserstein-1 to MD's), and the GFN2-xTB potential energy of sampled frames
for molecules of the generator's table.

MD range: the 1st–99th percentile of an observable over single reference frames. Physical horizon of an
observable: the first lead time at which its mean over the rollouts leaves MD's range (bonds and angles:
any one of them). For the pair distances the statistic is the Wasserstein-1 distance of the distances of
all rollouts at one lead time, pooled, to MD's, against that of single MD frames. A mean over several
rollouts varies less than single frames, so an MD-like forecast does not leave the range by chance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..logs import get_logger
from ..metrics import physics
from .long_rollout_energy import BROKEN_BOND_FACTOR, sampled_leads, thermal_excess, xtb_energies
from .protocols import ProtocolSamples, Trajectory

log = get_logger(__name__)

PAIR_DISTANCE_LEADS = 100  # lead times at which the pair-distance distance is computed (log-spaced)
MD_PAIR_FRAMES = 100  # reference frames pooled for MD's pair-distance distribution
MD_PAIR_DRAWS = 100  # random single MD frames that give the pair-distance range
OBSERVABLES = ("bond lengths", "bond angles", "radius of gyration", "clashes", "largest displacement",
               "kinetic temperature", "pair distances", "potential energy")


@dataclass
class LongRolloutResult:
    """Protocol L's numbers; series are per lead time (1 … rollout_frames frames after the window)."""

    n_rollouts: int
    n_atoms: int
    frame_fs: float  # spacing of forecast and reference frames
    rollout_frames: int
    history_frames: int
    starts: list[dict]  # {"source", "frame"}: last history frame of each rollout
    molecule: str | None
    bonds: list[list[int]]
    atom_labels: list[str]
    md: dict  # observable -> {"mean", "low", "high"} (per bond / angle: lists)
    bond_table: list[dict]
    blocks: list[dict]  # one row per lead-time block
    horizon_fs: dict  # observable -> first lead time (fs) out of MD's range, None: stayed inside, "not computed"
    series: dict = field(default_factory=dict)  # per-lead-time series for the plot and the JSON
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    model_seconds: float = 0.0
    energy_seconds: float = 0.0

    @property
    def lead_time_fs(self) -> np.ndarray:
        return np.arange(1, self.rollout_frames + 1) * self.frame_fs


def stride_frames(stride_fs: float, frame_fs: float, source: str) -> int:
    ratio = stride_fs / frame_fs
    if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
        raise UserError(f"{source}: protocol L's frame spacing {stride_fs:g} fs is not a whole number of its "
                        f"frames ({frame_fs:g} fs apart); set evaluate.long_rollout_stride_fs")
    return int(round(ratio))


def rollout_starts(trajectories: list[Trajectory], strides: list[int], history_frames: int,
                   n_starts: int) -> list[tuple[int, int]]:
    """(file index, last history frame) of each rollout: round-robin over files, evenly spaced in each."""
    per_file = [len(range(f, n_starts, len(trajectories))) for f in range(len(trajectories))]
    starts = []
    for f, (traj, stride, count) in enumerate(zip(trajectories, strides, per_file)):
        first = (history_frames - 1) * stride
        if count and len(traj.positions) - first < count:
            raise UserError(f"{traj.source}: {len(traj.positions)} frames hold fewer than {count} windows of "
                            f"{history_frames} frames {stride} apart for protocol L")
        starts += [(f, int(last)) for last in np.unique(np.linspace(first, len(traj.positions) - 1, count).round()
                                                        .astype(np.int64))]
    if len(starts) < n_starts:
        raise UserError(f"protocol L: only {len(starts)} distinct starting windows, {n_starts} asked")
    return starts


def _check_same_molecule(trajectories: list[Trajectory]) -> None:
    for traj in trajectories[1:]:
        if not np.array_equal(traj.atomic_numbers, trajectories[0].atomic_numbers):
            raise UserError(f"{traj.source}: not the atoms of {trajectories[0].source}; protocol L needs one molecule")


def long_rollout(model, trajectories: list[Trajectory], settings, *, batch_size: int = 64) -> LongRolloutResult:
    """Run protocol L (``settings``: the ``evaluate`` config section) with ``model`` on ``trajectories``."""
    from ..datagen.molecules import molecule_of
    from .run import model_forecast

    _check_same_molecule(trajectories)
    atomic_numbers = np.asarray(trajectories[0].atomic_numbers)
    strides = [stride_frames(settings.long_rollout_stride_fs, t.frame_fs, t.source) for t in trajectories]
    frame_fs = float(settings.long_rollout_stride_fs)
    m = model.cfg.history_frames
    n_frames = max(2, int(round(settings.long_rollout_ps * 1000.0 / frame_fs)))
    starts = rollout_starts(trajectories, strides, m, settings.long_rollout_starts)
    history = np.stack([trajectories[f].positions[last - strides[f] * np.arange(m - 1, -1, -1)]
                        for f, last in starts])
    samples = ProtocolSamples("L", "all", history, np.zeros((len(starts), 0) + history.shape[2:]), atomic_numbers,
                              np.arange(len(atomic_numbers)), np.arange(1, n_frames + 1), 1, frame_fs,
                              np.array([last for _, last in starts]))
    log.info("protocol L: %d rollouts of %d frames (%g ps, %g fs apart) from %d-frame windows", len(starts), n_frames,
             n_frames * frame_fs / 1000.0, frame_fs, m)
    began = time.perf_counter()
    forecast = model_forecast(model, samples, batch_size=batch_size, seed=settings.seed)  # [S, H, N, 3]
    model_seconds = time.perf_counter() - began
    log.info("protocol L: rollouts in %.1f s", model_seconds)
    reference = [t.positions[::s].astype(np.float64) for t, s in zip(trajectories, strides)]
    molecule = molecule_of(atomic_numbers)
    result = score_long_rollout(forecast, history[:, -1], reference, atomic_numbers, frame_fs, settings, molecule)
    result.history_frames = m
    result.starts = [{"source": trajectories[f].source, "frame": last} for f, last in starts]
    result.model_seconds = model_seconds
    result.settings = {"long_rollout_ps": settings.long_rollout_ps, "long_rollout_starts": len(starts),
                       "long_rollout_stride_fs": frame_fs, "stride_frames": strides,
                       "clash_angstrom": settings.clash_angstrom,
                       "bond_tolerance_angstrom": settings.bond_tolerance_angstrom,
                       "energy_samples": settings.energy_samples, "range_percentiles": list(physics.RANGE_PERCENTILES),
                       "trajectories": [t.source for t in trajectories]}
    return result


def _md_stats(values: np.ndarray) -> dict:
    low, high = physics.md_range(values)
    return {"mean": np.nanmean(values, axis=0).tolist(), "low": np.asarray(low).tolist(),
            "high": np.asarray(high).tolist()}


def lead_blocks(n_frames: int, frame_fs: float) -> list[tuple[int, int]]:
    """[lo, hi) frame ranges (0-based lead index) of lead-time blocks with 1-2-5 edges from 10 frames on."""
    edges, scale = [], 10 * frame_fs
    while scale < n_frames * frame_fs:
        for factor in (1, 2, 5):
            if scale * factor < n_frames * frame_fs:
                edges.append(scale * factor)
        scale *= 10
    frames = sorted({int(round(e / frame_fs)) for e in edges} | {n_frames})
    bounds = [0] + [f for f in frames if f > 0]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def score_long_rollout(forecast: np.ndarray, last_history: np.ndarray, reference: list[np.ndarray],
                       atomic_numbers: np.ndarray, frame_fs: float, settings, molecule: str | None) -> LongRolloutResult:
    """Protocol L's observables of ``forecast`` [S, H, N, 3] (rollouts after ``last_history`` [S, N, 3])
    against the ``reference`` MD trajectories (each [F, N, 3], frames ``frame_fs`` apart)."""
    from ase.data import chemical_symbols

    n_rollouts, n_frames, n_atoms = forecast.shape[:3]
    notes: list[str] = []
    bonds = physics.detect_bonds(reference[0][0], atomic_numbers, settings.bond_tolerance_angstrom)
    triples = physics.angle_triples(bonds)
    md_frames = np.concatenate(reference)
    lead_fs = np.arange(1, n_frames + 1) * frame_fs
    rollouts = _Rollouts.of(forecast, last_history, bonds, triples, atomic_numbers, settings.clash_angstrom, frame_fs)
    md, md_lengths = _md_observables(md_frames, reference, bonds, triples, atomic_numbers, settings.clash_angstrom,
                                     frame_fs)
    pairs = _PairDistances.of(forecast, md_frames)
    md["pair distances"] = pairs.md_range()
    broken = (rollouts.lengths > BROKEN_BOND_FACTOR * md_lengths.mean(axis=0)).any(axis=-1)  # [S, H]
    energy = xtb_energies(forecast, broken, md_frames, atomic_numbers, settings.energy_samples, molecule, frame_fs,
                          notes)
    if energy is not None:
        md["potential energy"] = {**_md_stats(energy["md_eV"]), "minimum": energy["minimum_eV"], "thermal_excess":
                                  thermal_excess(energy["md_eV"], energy["forecast_eV"], energy["minimum_eV"])}
    labels = [f"{chemical_symbols[z]}{i}" for i, z in enumerate(atomic_numbers)]
    blocks = [_block(rollouts, pairs, energy, md, lead_fs, lo, hi) for lo, hi in lead_blocks(n_frames, frame_fs)]
    result = LongRolloutResult(n_rollouts, n_atoms, frame_fs, n_frames, 0, [], molecule, bonds.tolist(), labels, md,
                               _bond_table(bonds, labels, rollouts, md, lead_fs), blocks,
                               _horizons(rollouts, pairs, energy, md, lead_fs),
                               _series_record(rollouts, pairs, energy, md, lead_fs), notes=notes)
    result.energy_seconds = energy["seconds"] if energy is not None else 0.0
    result.series["_pair_distance_samples"] = pairs.plot_samples(forecast)
    result.series["_bond_lengths"] = {"md": md_lengths, "forecast": rollouts.lengths.reshape(-1, len(bonds))}
    return result


@dataclass
class _Rollouts:
    """The forecast's observables per rollout and lead time, [S, H, ...]."""

    lengths: np.ndarray  # [S, H, bonds]
    angles: np.ndarray  # [S, H, angles], degrees
    rg: np.ndarray
    clashes: np.ndarray
    displacement: np.ndarray
    temperature: np.ndarray  # NaN at the last lead time (central differences)
    temperature_parts: np.ndarray  # [S, H, 3]: stiff (bonds, angles), rotation, soft; NaN at the last lead time
    bond_mean: np.ndarray  # [H, bonds] over the rollouts; NaN (not finite) counts as out of range

    @classmethod
    def of(cls, forecast: np.ndarray, last_history: np.ndarray, bonds: np.ndarray, triples: np.ndarray,
           atomic_numbers: np.ndarray, clash_angstrom: float, frame_fs: float) -> "_Rollouts":
        n_rollouts, n_frames, n_atoms = forecast.shape[:3]
        flat = forecast.reshape(-1, n_atoms, 3)
        lengths = physics.bond_lengths(flat, bonds).reshape(n_rollouts, n_frames, -1)
        angles = physics.bond_angles_degrees(flat, triples).reshape(n_rollouts, n_frames, -1)
        displacement = np.stack([physics.max_displacement(f, previous=p) for f, p in zip(forecast, last_history)])
        stiff = bond_and_angle_pairs(bonds)
        parts = np.stack([physics.kinetic_temperature_parts(np.concatenate([p[None], f]), atomic_numbers, frame_fs,
                                                            stiff) for f, p in zip(forecast, last_history)])
        parts = np.concatenate([parts, np.full((n_rollouts, 1, 3), np.nan)], axis=1)  # leads 1 … H−1
        return cls(lengths, angles, physics.radius_of_gyration(flat, atomic_numbers).reshape(n_rollouts, n_frames),
                   physics.clash_counts(flat, bonds, clash_angstrom).reshape(n_rollouts, n_frames), displacement,
                   parts.sum(axis=-1), parts, lengths.mean(axis=0))


def bond_and_angle_pairs(bonds: np.ndarray) -> np.ndarray:
    """[C, 2]: the bonds and the 1–3 pairs of their angles, whose motion is the "stiff" part of the temperature."""
    from ..metrics.liquid import excluded_pairs

    return np.array(sorted(excluded_pairs(bonds)), dtype=np.int64).reshape(-1, 2)


def _md_observables(md_frames: np.ndarray, reference: list[np.ndarray], bonds: np.ndarray, triples: np.ndarray,
                    atomic_numbers: np.ndarray, clash_angstrom: float, frame_fs: float) -> tuple[dict, np.ndarray]:
    """MD's statistics of the single-frame observables (bonds, angles: also std) and its bond lengths [F, bonds]."""
    md_lengths = physics.bond_lengths(md_frames, bonds)
    md_angles = physics.bond_angles_degrees(md_frames, triples)
    stiff = bond_and_angle_pairs(bonds)
    parts = np.concatenate([physics.kinetic_temperature_parts(r, atomic_numbers, frame_fs, stiff) for r in reference])
    md = {"bond lengths": _md_stats(md_lengths), "bond angles": _md_stats(md_angles),
          "radius of gyration": _md_stats(physics.radius_of_gyration(md_frames, atomic_numbers)),
          "clashes": _md_stats(physics.clash_counts(md_frames, bonds, clash_angstrom).astype(float)),
          "largest displacement": _md_stats(np.concatenate([physics.max_displacement(r)[1:] for r in reference])),
          "kinetic temperature": _md_stats(parts.sum(axis=-1))}  # the parts add up to the estimator
    md["kinetic temperature"]["parts"] = parts.mean(axis=0).tolist()  # stiff, rotation, soft
    md["bond lengths"]["std"] = md_lengths.std(axis=0).tolist()
    md["bond angles"]["std"] = md_angles.std(axis=0).tolist()
    return md, md_lengths


@dataclass
class _PairDistances:
    """The pair-distance distribution: W1 of the rollouts' frames at one lead time to MD's pooled frames."""

    md_pairs: np.ndarray  # the distances of MD's pooled frames
    md_w1: list[float]  # single random MD frames against the pool: MD's own spread
    leads: np.ndarray  # sampled lead-time indices (0-based)
    w1: np.ndarray  # [leads]

    @classmethod
    def of(cls, forecast: np.ndarray, md_frames: np.ndarray) -> "_PairDistances":
        pick = np.unique(np.linspace(0, len(md_frames) - 1, min(MD_PAIR_FRAMES, len(md_frames))).astype(np.int64))
        md_pairs = physics.pair_distances(md_frames[pick])
        rng = np.random.default_rng(0)
        md_w1 = [physics.distribution_distance(physics.pair_distances(md_frames[i]), md_pairs)["wasserstein_angstrom"]
                 for i in rng.choice(len(md_frames), min(MD_PAIR_DRAWS, len(md_frames)), replace=False)]
        leads = sampled_leads(forecast.shape[1], PAIR_DISTANCE_LEADS)
        w1 = np.array([physics.distribution_distance(physics.pair_distances(forecast[:, j]), md_pairs)
                       ["wasserstein_angstrom"] for j in leads])
        return cls(md_pairs, md_w1, leads, w1)

    def md_range(self) -> dict:
        return {"mean": float(np.mean(self.md_w1)), "low": 0.0,
                "high": float(np.percentile(self.md_w1, physics.RANGE_PERCENTILES[1]))}

    def plot_samples(self, forecast: np.ndarray) -> dict:
        """The distances of MD and of the forecast's first and last 10 % of lead times (for the plot)."""
        tenth = max(1, forecast.shape[1] // 10)
        return {"md": self.md_pairs.ravel(),
                "first": physics.pair_distances(forecast[:, :tenth].reshape(-1, *forecast.shape[2:])).ravel(),
                "last": physics.pair_distances(forecast[:, -tenth:].reshape(-1, *forecast.shape[2:])).ravel()}


def _horizons(rollouts: _Rollouts, pairs: _PairDistances, energy: dict | None, md: dict,
              lead_fs: np.ndarray) -> dict:
    """Each observable's physical horizon: the first lead time (fs) its mean over the rollouts leaves MD's range."""
    checks = [("bond lengths", rollouts.bond_mean, lead_fs), ("bond angles", rollouts.angles.mean(axis=0), lead_fs),
              ("radius of gyration", rollouts.rg.mean(axis=0), lead_fs),
              ("clashes", rollouts.clashes.mean(axis=0), lead_fs),
              ("largest displacement", rollouts.displacement.mean(axis=0), lead_fs),
              ("kinetic temperature", rollouts.temperature[:, :-1].mean(axis=0), lead_fs[:-1]),
              ("pair distances", pairs.w1, lead_fs[pairs.leads])]
    if energy is not None:
        checks.append(("potential energy", energy["forecast_eV"].mean(axis=0), energy["lead_fs"]))  # NaN: out
    horizon = {}
    for name, values, at in checks:
        if name in ("bond lengths", "bond angles") and values.shape[-1] == 0:
            horizon[name] = "not computed"
            continue
        horizon[name] = _first_exit_fs(values, np.asarray(md[name]["low"]), np.asarray(md[name]["high"]), at)
    if energy is None:
        horizon["potential energy"] = "not computed"
    return horizon


def _bond_table(bonds: np.ndarray, labels: list[str], rollouts: _Rollouts, md: dict, lead_fs: np.ndarray) -> list:
    """Per bond: MD's and the forecast's mean and std; when the rollouts' mean first leaves MD's range."""
    md_bonds = md["bond lengths"]
    table = []
    for b, (i, j) in enumerate(bonds):
        values = rollouts.lengths[:, :, b]
        table.append({"bond": f"{labels[i]}–{labels[j]}", "md_mean": md_bonds["mean"][b],
                      "md_std": md_bonds["std"][b], "forecast_mean": float(np.nanmean(values)),
                      "forecast_std": float(np.nanstd(values)),
                      "mean_deviation": float(np.nanmean(values) - md_bonds["mean"][b]),
                      "first_exit_fs": _first_exit_fs(rollouts.bond_mean[:, b], md_bonds["low"][b],
                                                      md_bonds["high"][b], lead_fs)})
    return table


def _block(rollouts: _Rollouts, pairs: _PairDistances, energy: dict | None, md: dict, lead_fs: np.ndarray,
           lo: int, hi: int) -> dict:
    """The row of lead times lo+1 … hi (rollouts pooled)."""
    block = {"lead_fs": [float(lead_fs[lo]), float(lead_fs[hi - 1])]}
    if rollouts.lengths.shape[-1]:
        md_bond_mean = np.asarray(md["bond lengths"]["mean"])
        part = rollouts.lengths[:, lo:hi].reshape(-1, len(md_bond_mean))
        block["bond_mean_deviation_max_angstrom"] = float(np.nanmax(np.abs(np.nanmean(part, 0) - md_bond_mean)))
        block["bond_deviation_max_angstrom"] = float(np.nanmax(np.abs(part - md_bond_mean)))
        # fluctuation along each rollout (a frozen rollout has none, whatever its neighbours do)
        along = np.sqrt(np.nanmean(np.nanvar(rollouts.lengths[:, lo:hi], axis=1), axis=0))
        block["bond_width_ratio_median"] = float(np.nanmedian(along / np.asarray(md["bond lengths"]["std"])))
    if rollouts.angles.shape[-1]:
        md_angle_mean = np.asarray(md["bond angles"]["mean"])
        part = rollouts.angles[:, lo:hi].reshape(-1, len(md_angle_mean))
        block["angle_mean_deviation_max_degrees"] = float(np.nanmax(np.abs(np.nanmean(part, 0) - md_angle_mean)))
    block["radius_of_gyration_angstrom"] = float(np.nanmean(rollouts.rg[:, lo:hi]))
    block["clashes_per_frame"] = physics.finite_mean(rollouts.clashes[:, lo:hi])
    block["largest_displacement_angstrom"] = float(np.nanmax(rollouts.displacement[:, lo:hi]))
    block["kinetic_temperature_K"] = _nanmean(rollouts.temperature[:, lo:hi])
    block["kinetic_temperature_parts_K"] = [_nanmean(rollouts.temperature_parts[:, lo:hi, k]) for k in range(3)]
    in_block = (pairs.leads >= lo) & (pairs.leads < hi)
    block["pair_distance_w1_angstrom"] = float(pairs.w1[in_block].mean()) if in_block.any() else float("nan")
    if energy is not None:
        in_block = (energy["lead_index"] >= lo) & (energy["lead_index"] < hi)
        block["potential_energy_eV"] = _nanmean(energy["forecast_eV"][:, in_block])
    return block


def _series_record(rollouts: _Rollouts, pairs: _PairDistances, energy: dict | None, md: dict,
                   lead_fs: np.ndarray) -> dict:
    """The per-lead-time series of the JSON record (and the plot)."""
    bond_deviation = np.abs(rollouts.bond_mean - np.asarray(md["bond lengths"]["mean"]))
    series = {"lead_time_fs": lead_fs.tolist(),
              "bond_mean_deviation_max_angstrom": (np.nanmax(bond_deviation, axis=1).tolist()
                                                   if rollouts.lengths.shape[-1] else []),
              "radius_of_gyration_angstrom": rollouts.rg.tolist(),
              "clashes_mean": rollouts.clashes.mean(axis=0).tolist(),
              "largest_displacement_angstrom": rollouts.displacement.tolist(),
              "kinetic_temperature_K": rollouts.temperature.tolist(),
              "pair_distance_w1_angstrom": {"lead_time_fs": lead_fs[pairs.leads].tolist(), "value": pairs.w1.tolist(),
                                            "md_draws": pairs.md_w1}}
    if energy is not None:
        series["potential_energy_eV"] = {"lead_time_fs": energy["lead_fs"].tolist(),
                                         "forecast": energy["forecast_eV"].tolist(), "md": energy["md_eV"].tolist()}
    return series


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")


def _first_exit_fs(values: np.ndarray, low: float, high: float, lead_fs: np.ndarray) -> float | None:
    at = physics.first_exit(values, low, high)
    return None if at is None else float(lead_fs[at])
