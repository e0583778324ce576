"""Protocol L's observables for periodic systems (liquids, solvated proteins), against the reference MD at the
same frame spacing, judged as the long-stride forecasters of periodic systems are: structure, dynamics and
stability over long rollouts.

Inputs are unwrapped trajectories (molecules whole, continuous in time) in one constant box (the last
observed one). Observables (:mod:`asteroid_hpc.metrics.liquid`, :mod:`asteroid_hpc.metrics.physics`):

- bonded and constrained distances per type (element pair of the topology's bonds, e.g. ``O–H``, plus
  ``H–H (water)``, the third constraint of rigid water): mean, and width (each pair's fluctuation in time,
  root-mean-square over the pairs of the type: over the rollout, and over each MD trajectory);
- clashes: pairs closer than ``clash_angstrom`` (minimum image) that are not one or two bonds apart;
- the largest per-frame displacement (blow-up detector) and the finite-difference kinetic temperature with
  3N − 3 degrees of freedom (constraints are not subtracted: the same estimator runs on MD, so the ratio is
  what counts, not the absolute number);
- the water O–O radial distribution function (L1 distance to MD's, first-peak height and position);
- the water-oxygen self-diffusion coefficient from the mean-squared displacement;
- for a solute (a molecule of ≥ ``SOLUTE_MIN_ATOMS`` atoms, e.g. a protein): the radius of gyration and the
  RMSD (after superposition) of its heavy atoms from the rollout's starting frame, against MD's at the same lag.

Physical horizon: the first lead time at which the rollouts' mean of an observable leaves MD's 1st–99th
percentile range. Targets (``TARGETS``) are checked on the whole rollout, the structure on its last tenth;
a distance that MD holds constrained (fluctuation below ``CONSTRAINED_WIDTH_ANGSTROM``) has an absolute width
target (the mean tolerance) instead of one relative to MD's ~0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..geometry import kabsch_rmsd
from ..metrics import liquid, physics
from .long_rollout import lead_blocks
from .long_rollout_energy import sampled_leads

SOLUTE_MIN_ATOMS = 20
RDF_MAX_ANGSTROM = 8.0
RDF_BIN_ANGSTROM = 0.05
SAMPLED_LEADS = 40  # lead times (log-spaced) at which clashes and g(r) are computed
MD_SAMPLE_FRAMES = 40  # reference frames for MD's g(r) and clashes
MD_RMSD_ORIGINS = 16  # starting frames per reference trajectory for MD's RMSD at each lag
BLOWUP_FACTOR = 3.0  # a displacement beyond this times MD's largest is a blow-up
# A distance type whose MD fluctuation is below this is a constraint (rigid water, SHAKE): a width relative to
# ~0 means nothing, so its width target is absolute: the forecast's fluctuation within the mean tolerance.
CONSTRAINED_WIDTH_ANGSTROM = 1e-3
TARGETS = {"rdf_peak_height_relative": 0.10, "rdf_l1": 0.1, "distance_mean_angstrom": 0.02,
           "distance_width_relative": 0.30, "diffusion_relative": 0.30, "temperature_relative": 0.10}


@dataclass
class PeriodicSystem:
    """What the periodic observables need to know about the atoms."""

    atomic_numbers: np.ndarray  # [N]
    cell: np.ndarray  # [6] lengths (Å) and angles (°)
    pairs: np.ndarray  # [P, 2] bonds, then the H–H pairs of waters
    pair_types: np.ndarray  # [P] type index into type_names
    type_names: list[str]
    waters: np.ndarray  # [W, 3] (O, H, H)
    solute: np.ndarray  # heavy atoms of the solute molecules
    excluded: set

    @classmethod
    def of(cls, atomic_numbers, bonds, cell) -> "PeriodicSystem":
        from ase.data import chemical_symbols

        z = np.asarray(atomic_numbers)
        bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        waters = liquid.water_molecules(bonds, z)
        pairs = np.concatenate([bonds, waters[:, 1:]])
        names = ["–".join(sorted((chemical_symbols[z[i]], chemical_symbols[z[j]]))) for i, j in bonds]
        names += ["H–H (water)"] * len(waters)
        type_names = sorted(set(names))
        labels = liquid.molecule_labels(bonds, len(z))
        big = np.flatnonzero(np.bincount(labels) >= SOLUTE_MIN_ATOMS)
        solute = np.flatnonzero(np.isin(labels, big) & (z > 1))
        return cls(z, np.asarray(cell, dtype=np.float64), pairs, np.array([type_names.index(n) for n in names],
                   dtype=np.int64), type_names, waters, solute, liquid.excluded_pairs(bonds))


def _distances(frames: np.ndarray, system: PeriodicSystem) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and distance type the mean length [F, T]; per pair the variance of its length over the frames [P]
    (its fluctuation in time: a frozen trajectory has none, however much the pairs of a type differ)."""
    lengths = liquid.periodic_pair_lengths(frames, system.pairs, system.cell)
    counts = np.bincount(system.pair_types, minlength=len(system.type_names)).astype(np.float64)
    means = np.stack([np.bincount(system.pair_types, weights=row, minlength=len(counts)) for row in lengths]) / counts
    return means, np.var(lengths, axis=0)


def _type_width(pair_variance: np.ndarray, system: PeriodicSystem) -> np.ndarray:
    """Per distance type: the root-mean-square over its pairs of each pair's fluctuation in time [T]."""
    counts = np.bincount(system.pair_types, minlength=len(system.type_names))
    return np.sqrt(np.bincount(system.pair_types, weights=pair_variance, minlength=len(counts)) / counts)


def _rdf(frames: np.ndarray, system: PeriodicSystem) -> tuple[np.ndarray, np.ndarray] | None:
    if len(system.waters) < 2:
        return None
    r_max = min(RDF_MAX_ANGSTROM, liquid.half_shortest_width(system.cell))
    return liquid.radial_distribution(frames, system.cell, system.waters[:, 0], r_max=r_max,
                                      bin_angstrom=RDF_BIN_ANGSTROM)


def _diffusion_atoms(system: PeriodicSystem) -> np.ndarray:
    return system.waters[:, 0] if len(system.waters) else np.arange(len(system.atomic_numbers))


def _md_observables(reference: list[np.ndarray], system: PeriodicSystem, frame_fs: float, n_leads: int,
                    clash_angstrom: float) -> dict:
    """MD's per-frame observables and its structure and dynamics over the rollouts' time scale."""
    frames = np.concatenate(reference)
    pick = np.unique(np.linspace(0, len(frames) - 1, min(MD_SAMPLE_FRAMES, len(frames))).round().astype(np.int64))
    parts = [_distances(r, system) for r in reference]
    md = {"type_means": np.concatenate([p[0] for p in parts]),
          "type_width": _type_width(np.mean([p[1] for p in parts], axis=0), system),
          "displacement": np.concatenate([physics.max_displacement(r)[1:] for r in reference]),
          "temperature": np.concatenate([_temperature(r, system, frame_fs) for r in reference]),
          "clashes": liquid.periodic_clash_counts(frames[pick], system.cell, system.excluded, clash_angstrom),
          "rdf": _rdf(frames[pick], system)}
    lags = liquid.msd_lags(min(n_leads + 1, min(len(r) for r in reference)))
    atoms = _diffusion_atoms(system)
    md["msd_lags"] = lags
    md["msd"] = np.mean([liquid.mean_squared_displacement(r, lags, atoms) for r in reference], axis=0)
    if len(system.solute):
        md["rg"] = physics.radius_of_gyration(frames[:, system.solute], system.atomic_numbers[system.solute])
        md["rmsd_lags"], md["rmsd"] = _md_rmsd(reference, system.solute, n_leads)
    return md


def _md_rmsd(reference: list[np.ndarray], atoms: np.ndarray, n_leads: int) -> tuple[np.ndarray, np.ndarray]:
    """MD's solute RMSD after each sampled lag from several origins: (lags [K] 0-based lead index, [origins, K])."""
    leads = sampled_leads(n_leads, SAMPLED_LEADS)
    rows = []
    for traj in reference:
        usable = len(traj) - 1 - leads[-1]
        for origin in np.unique(np.linspace(0, max(usable, 0), MD_RMSD_ORIGINS).round().astype(np.int64)):
            later = origin + 1 + leads
            if later[-1] < len(traj):
                rows.append(kabsch_rmsd(traj[later][:, atoms], traj[origin][atoms]))
    return leads, np.array(rows)


def _temperature(frames: np.ndarray, system: PeriodicSystem, frame_fs: float) -> np.ndarray:
    return physics.kinetic_temperature(frames, system.atomic_numbers, frame_fs, dof=3 * len(system.atomic_numbers) - 3)


def _rollout_observables(forecast: np.ndarray, last_history: np.ndarray, system: PeriodicSystem, frame_fs: float,
                         clash_angstrom: float) -> dict:
    """The forecast's observables: per rollout and lead time, and pooled where a structure needs many frames."""
    n_rollouts, n_leads = forecast.shape[:2]
    leads = sampled_leads(n_leads, SAMPLED_LEADS)
    parts = [_distances(f, system) for f in forecast]
    out = {"type_means": np.stack([p[0] for p in parts]),
           "type_width": _type_width(np.nanmean([p[1] for p in parts], axis=0), system),
           "displacement": np.stack([physics.max_displacement(f, previous=p) for f, p in zip(forecast, last_history)]),
           "temperature": np.stack([np.append(_temperature(np.concatenate([p[None], f]), system, frame_fs), np.nan)
                                    for f, p in zip(forecast, last_history)]),
           "leads": leads,
           "clashes": np.stack([liquid.periodic_clash_counts(f[leads], system.cell, system.excluded, clash_angstrom)
                                for f in forecast])}
    tenth = max(1, n_leads // 10)
    finite = np.isfinite(forecast[:, -tenth:]).all(axis=(2, 3))
    last = forecast[:, -tenth:][finite]
    last = last[np.unique(np.linspace(0, len(last) - 1, min(MD_SAMPLE_FRAMES, len(last))).round().astype(np.int64))] \
        if len(last) else last
    out["rdf_last_tenth"] = _rdf(last, system) if len(last) else None
    whole = [np.concatenate([p[None], f]) for f, p in zip(forecast, last_history) if np.isfinite(f).all()]
    lags = liquid.msd_lags(n_leads + 1)
    out["msd_lags"] = lags
    atoms = _diffusion_atoms(system)
    out["msd"] = (np.mean([liquid.mean_squared_displacement(w, lags, atoms) for w in whole], axis=0)
                  if whole else np.full(len(lags), np.nan))
    if len(system.solute):
        solute = forecast[:, :, system.solute]
        out["rg"] = np.stack([physics.radius_of_gyration(f, system.atomic_numbers[system.solute]) for f in solute])
        out["rmsd"] = np.stack([_finite_rmsd(f[leads], p[system.solute]) for f, p in zip(solute, last_history)])
    return out


def _finite_rmsd(frames: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Kabsch RMSD [F] of ``frames`` from ``start``; NaN for a frame that is not a structure (came apart)."""
    out = np.full(len(frames), np.nan)
    finite = np.isfinite(frames).all(axis=(1, 2)) & (np.abs(frames).max(axis=(1, 2), initial=0.0) < 1e12)
    if finite.any():
        out[finite] = kabsch_rmsd(frames[finite], start)
    return out


def score_periodic_rollout(forecast: np.ndarray, last_history: np.ndarray, reference: list[np.ndarray],
                           system: PeriodicSystem, frame_fs: float, clash_angstrom: float) -> dict:
    """The periodic observables of ``forecast`` [S, H, N, 3] (rollouts after ``last_history`` [S, N, 3]) against the
    ``reference`` MD trajectories (each [F, N, 3], ``frame_fs`` apart, unwrapped): per-type distances, clashes,
    displacement, temperature, O–O g(r), diffusion, solute Rg/RMSD; blocks, horizons and targets (JSON-ready)."""
    n_leads = forecast.shape[1]
    lead_fs = np.arange(1, n_leads + 1) * frame_fs
    md = _md_observables(reference, system, frame_fs, n_leads, clash_angstrom)
    with np.errstate(all="ignore"), warnings.catch_warnings():  # rollouts that came apart give NaN, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        rollout = _rollout_observables(forecast, last_history, system, frame_fs, clash_angstrom)
        result = {"n_rollouts": int(forecast.shape[0]), "n_atoms": int(forecast.shape[2]), "frame_fs": frame_fs,
                  "rollout_frames": n_leads, "cell": system.cell.tolist(), "waters": int(len(system.waters)),
                  "solute_heavy_atoms": int(len(system.solute)),
                  "distances": _distance_table(md, rollout, system),
                  "structure": _structure(md, rollout), "dynamics": _dynamics(md, rollout, frame_fs),
                  "blocks": [_block(rollout, lead_fs, lo, hi, system) for lo, hi in lead_blocks(n_leads, frame_fs)],
                  "horizon_fs": _horizons(md, rollout, lead_fs, system)}
        result["targets"] = _targets(md, rollout, result)
    return result


def _distance_table(md: dict, rollout: dict, system: PeriodicSystem) -> list[dict]:
    """Per distance type, over the whole rollout: MD's and the forecast's mean and width (fluctuation in time)."""
    means, width = rollout["type_means"], rollout["type_width"]
    flat_mean = np.nanmean(means.reshape(-1, means.shape[-1]), axis=0)
    counts = np.bincount(system.pair_types, minlength=len(system.type_names))
    return [{"type": name, "pairs": int(counts[t]), "md_mean": float(md["type_means"][:, t].mean()),
             "md_width": float(md["type_width"][t]), "forecast_mean": float(flat_mean[t]),
             "forecast_width": float(width[t]), "mean_deviation": float(flat_mean[t] - md["type_means"][:, t].mean()),
             "width_ratio": float(width[t] / md["type_width"][t]) if md["type_width"][t] > 0 else float("nan")}
            for t, name in enumerate(system.type_names)]


def _structure(md: dict, rollout: dict) -> dict:
    if md["rdf"] is None:
        return {"rdf": "not computed (no waters)"}
    r, g_md = md["rdf"]
    if rollout["rdf_last_tenth"] is None:
        return {"rdf": "not computed (every rollout came apart)"}
    g = rollout["rdf_last_tenth"][1]
    return {"rdf": {"pair": "O–O (water)", **liquid.rdf_comparison(r, g, g_md), "r_angstrom": r.tolist(),
                    "g_md": g_md.tolist(), "g_forecast_last_tenth": g.tolist()}}


def _dynamics(md: dict, rollout: dict, frame_fs: float) -> dict:
    out = {"temperature_md_K": float(np.nanmean(md["temperature"])),
           "temperature_forecast_K": float(np.nanmean(rollout["temperature"])),
           "msd_lag_ps": (rollout["msd_lags"] * frame_fs * 1e-3).tolist(), "msd_forecast": rollout["msd"].tolist(),
           "msd_md_lag_ps": (md["msd_lags"] * frame_fs * 1e-3).tolist(), "msd_md": md["msd"].tolist()}
    try:
        out["diffusion_md_A2_per_ps"] = liquid.diffusion_coefficient(md["msd_lags"] * frame_fs * 1e-3, md["msd"])
        out["diffusion_forecast_A2_per_ps"] = liquid.diffusion_coefficient(rollout["msd_lags"] * frame_fs * 1e-3,
                                                                           rollout["msd"])
    except ValueError as exc:  # too short to fit
        out["diffusion"] = f"not computed ({exc})"
    return out


def _block(rollout: dict, lead_fs: np.ndarray, lo: int, hi: int, system: PeriodicSystem) -> dict:
    """The row of lead times lo+1 … hi, rollouts pooled."""
    in_block = (rollout["leads"] >= lo) & (rollout["leads"] < hi)
    block = {"lead_fs": [float(lead_fs[lo]), float(lead_fs[hi - 1])],
             "largest_displacement_angstrom": float(np.nanmax(rollout["displacement"][:, lo:hi])),
             "kinetic_temperature_K": physics.finite_mean(rollout["temperature"][:, lo:hi]),
             "clashes_per_frame": physics.finite_mean(rollout["clashes"][:, in_block]) if in_block.any() else None}
    for t, name in enumerate(system.type_names):
        block[f"{name} mean_angstrom"] = physics.finite_mean(rollout["type_means"][:, lo:hi, t])
    if "rg" in rollout:
        block["solute_rg_angstrom"] = physics.finite_mean(rollout["rg"][:, lo:hi])
        block["solute_rmsd_angstrom"] = (physics.finite_mean(rollout["rmsd"][:, in_block]) if in_block.any() else None)
    return block


def _first_exit_fs(values: np.ndarray, md_values: np.ndarray, at_fs: np.ndarray) -> float | None:
    low, high = physics.md_range(md_values)
    exit_at = physics.first_exit(values, low, high)
    return None if exit_at is None else float(at_fs[exit_at])


def _distance_exit_fs(values: np.ndarray, md_values: np.ndarray, at_fs: np.ndarray) -> float | None:
    """As :func:`_first_exit_fs` for a distance type's mean, whose MD range is widened to ± the mean-deviation
    target where MD holds it constrained (its range is then the file's rounding, ~1e-6 Å)."""
    low, high = physics.md_range(md_values)
    if high - low < CONSTRAINED_WIDTH_ANGSTROM:
        centre = float(np.nanmean(md_values))
        low, high = centre - TARGETS["distance_mean_angstrom"], centre + TARGETS["distance_mean_angstrom"]
    exit_at = physics.first_exit(values, low, high)
    return None if exit_at is None else float(at_fs[exit_at])


def _horizons(md: dict, rollout: dict, lead_fs: np.ndarray, system: PeriodicSystem) -> dict:
    """Each observable's physical horizon: the first lead time (fs) its rollout mean leaves MD's range."""
    horizon = {f"{name} distance": _distance_exit_fs(rollout["type_means"][:, :, t].mean(axis=0),
                                                     md["type_means"][:, t], lead_fs)
               for t, name in enumerate(system.type_names)}
    horizon["largest displacement"] = _first_exit_fs(rollout["displacement"].mean(axis=0), md["displacement"], lead_fs)
    horizon["kinetic temperature"] = _first_exit_fs(rollout["temperature"][:, :-1].mean(axis=0), md["temperature"],
                                                    lead_fs[:-1])
    horizon["clashes"] = _first_exit_fs(rollout["clashes"].mean(axis=0), md["clashes"], lead_fs[rollout["leads"]])
    if "rg" in rollout:
        horizon["solute radius of gyration"] = _first_exit_fs(rollout["rg"].mean(axis=0), md["rg"], lead_fs)
        high = np.percentile(md["rmsd"], physics.RANGE_PERCENTILES[1], axis=0) if len(md["rmsd"]) else None
        out = (np.flatnonzero(~(rollout["rmsd"].mean(axis=0) <= high)) if high is not None else [])
        horizon["solute RMSD"] = float(lead_fs[rollout["leads"][out[0]]]) if len(out) else None
    return horizon


def _target(name: str, measured, threshold, met: bool) -> dict:
    return {"target": name, "measured": measured, "threshold": threshold, "met": bool(met)}


def _targets(md: dict, rollout: dict, result: dict) -> list[dict]:
    """The issue's targets for a periodic system, each with its measurement."""
    largest = float(np.max(rollout["displacement"])) if np.isfinite(rollout["displacement"]).all() else float("inf")
    md_largest = float(np.nanmax(md["displacement"]))
    clashes = float(np.nanmax(rollout["clashes"])) if np.isfinite(rollout["clashes"]).all() else float("nan")
    rows = [_target("no blow-up (largest displacement, Å)", largest, BLOWUP_FACTOR * md_largest,
                    largest <= BLOWUP_FACTOR * md_largest),
            _target("no clashes (most in one frame)", clashes, float(np.nanmax(md["clashes"])),
                    clashes <= np.nanmax(md["clashes"]))]
    rdf = result["structure"]["rdf"]
    if isinstance(rdf, dict):
        rows.append(_target("O–O g(r) first-peak height, relative error", rdf["peak_height_relative_error"],
                            TARGETS["rdf_peak_height_relative"],
                            abs(rdf["peak_height_relative_error"]) <= TARGETS["rdf_peak_height_relative"]))
        rows.append(_target("O–O g(r) L1 distance", rdf["l1"], TARGETS["rdf_l1"], rdf["l1"] < TARGETS["rdf_l1"]))
    for row in result["distances"]:
        rows.append(_target(f"{row['type']} mean deviation (Å)", row["mean_deviation"],
                            TARGETS["distance_mean_angstrom"],
                            abs(row["mean_deviation"]) <= TARGETS["distance_mean_angstrom"]))
        if row["md_width"] < CONSTRAINED_WIDTH_ANGSTROM:
            rows.append(_target(f"{row['type']} width (Å; constrained in MD)", row["forecast_width"],
                                TARGETS["distance_mean_angstrom"],
                                row["forecast_width"] <= TARGETS["distance_mean_angstrom"]))
        else:
            rows.append(_target(f"{row['type']} width ratio", row["width_ratio"], TARGETS["distance_width_relative"],
                                abs(row["width_ratio"] - 1) <= TARGETS["distance_width_relative"]))
    dynamics = result["dynamics"]
    if "diffusion_md_A2_per_ps" in dynamics:
        error = dynamics["diffusion_forecast_A2_per_ps"] / dynamics["diffusion_md_A2_per_ps"] - 1
        rows.append(_target("self-diffusion, relative error", error, TARGETS["diffusion_relative"],
                            abs(error) <= TARGETS["diffusion_relative"]))
    error = dynamics["temperature_forecast_K"] / dynamics["temperature_md_K"] - 1
    rows.append(_target("kinetic temperature, relative error", error, TARGETS["temperature_relative"],
                        abs(error) <= TARGETS["temperature_relative"]))
    return rows


def targets_markdown(result: dict) -> str:
    """The targets as a Markdown table."""
    lines = ["| target | measured | threshold | met |", "|---|---:|---:|:---:|"]
    lines += [f"| {row['target']} | {row['measured']:.4g} | {row['threshold']:.4g} | {'yes' if row['met'] else 'NO'} |"
              for row in result["targets"]]
    return "\n".join(lines)
