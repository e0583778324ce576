"""Protocol L's section of results.md, its JSON record and its plot (long_rollout.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_figure_atomic
from .long_rollout import OBSERVABLES, LongRolloutResult

LONG_ROLLOUT_PNG = "long_rollout.png"
BOND_ROWS = 10  # bonds listed in the markdown (largest mean deviation first); all are in the JSON
VIOLIN_BONDS = 24

_UNITS = {"bond lengths": "Å", "bond angles": "°", "radius of gyration": "Å", "clashes": "per frame",
          "largest displacement": "Å per frame", "kinetic temperature": "K", "pair distances": "Å (W1)",
          "potential energy": "eV"}


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _horizon(value) -> str:
    if value is None:
        return "stays inside"
    if isinstance(value, str):
        return value
    return f"**{value:g} fs**"


def _md_range(result: LongRolloutResult, name: str) -> str:
    stats = result.md.get(name)
    if stats is None:
        return "—"
    if isinstance(stats["low"], list):
        return f"per {'bond' if name == 'bond lengths' else 'angle'} ({len(stats['low'])})"
    digits = {"potential energy": 2, "kinetic temperature": 0, "clashes": 0, "bond lengths": 3}.get(name, 3)
    return f"{stats['low']:.{digits}f} – {stats['high']:.{digits}f} {_UNITS[name]}"


def long_rollout_markdown(result: LongRolloutResult) -> str:
    lines = _intro_lines(result) + ["| observable | MD range | physical horizon |", "|---|---|---|"]
    for name in OBSERVABLES:
        lines.append(f"| {name} | {_md_range(result, name)} | {_horizon(result.horizon_fs.get(name))} |")
    lines += _block_lines(result) + _bond_lines(result)
    if result.notes:
        lines += [""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _intro_lines(result: LongRolloutResult) -> list[str]:
    """What was rolled out and how the physical horizon is defined."""
    sources = ", ".join(f"`{s}`" for s in result.settings.get("trajectories", []))
    return ["### Protocol L (long free-running rollouts: physics against the reference MD)", "",
            f"{result.n_rollouts} rollouts of {result.rollout_frames * result.frame_fs / 1000.0:g} ps "
            f"({result.rollout_frames} frames {result.frame_fs:g} fs apart) from {result.history_frames}-frame "
            f"windows spread over {sources}; reference MD: those files every {result.frame_fs:g} fs. "
            f"{len(result.bonds)} bonds (covalent radii on the reference's first frame), "
            f"{len(result.md['bond angles']['mean'])} bond angles. Kinetic temperature: central finite differences "
            f"at {result.frame_fs:g} fs, centre-of-mass motion removed, 3N−6 degrees of freedom (the same estimator "
            f"on MD), and its parts: what changes bond lengths and angles (stiff), rigid rotation, and the rest "
            f"(soft: torsions, out-of-plane; a frozen rotor shows here). Model {result.model_seconds:.1f} s"
            + (f", GFN2-xTB energies {result.energy_seconds:.1f} s ({result.molecule})." if result.energy_seconds
               else "."), "",
            "Physical horizon: the first lead time at which the mean over the rollouts leaves MD's 1st–99th "
            "percentile range over single MD frames (bonds, angles: any one of them; pair distances: Wasserstein-1 "
            "of the rollouts' all-pair distances at one lead time to MD's, against the same for single MD frames).",
            ""]


def _parts(values) -> str:
    return "—" if values is None else " / ".join(_number(v, 0) for v in values)


def _block_lines(result: LongRolloutResult) -> list[str]:
    """The table by lead-time block, headed by MD's own row."""
    md = result.md
    has_energy = "potential energy" in md
    lines = ["", "By lead time (rollouts pooled within each block; bond deviations from MD's mean bond length; "
                 "width: a bond's standard deviation along each rollout (RMS over rollouts) over MD's, median over "
                 "bonds; energy: of the sampled frames that are whole (— when none)):", "",
             "| lead time (fs) | bond mean dev. max (Å) | bond dev. max (Å) | bond width / MD | angle mean dev. max "
             "(°) | Rg (Å) | clashes / frame | largest displacement (Å) | T (K) | T stiff / rotation / soft (K) "
             "| pair-dist. W1 (Å)" + (" | E − ⟨E_MD⟩ (eV)" if has_energy else "") + " |",
             "|" + "---|" * (11 + has_energy)]
    md_row = ["MD", "—", "—", "1", "—", _number(md["radius of gyration"]["mean"]),
              _number(md["clashes"]["mean"], 2), _number(md["largest displacement"]["high"]) + " (P99)",
              _number(md["kinetic temperature"]["mean"], 0), _parts(md["kinetic temperature"].get("parts")),
              _number(md["pair distances"]["mean"])]
    energy_mean = md["potential energy"]["mean"] if has_energy else 0.0
    if has_energy:
        spread = float(np.std(result.series["potential_energy_eV"]["md"]))
        md_row.append(f"0 ± {spread:.3f}")
    lines.append("| " + " | ".join(md_row) + " |")
    for block in result.blocks:
        row = [f"{block['lead_fs'][0]:g}–{block['lead_fs'][1]:g}",
               _number(block.get("bond_mean_deviation_max_angstrom")), _number(block.get("bond_deviation_max_angstrom")),
               _number(block.get("bond_width_ratio_median"), 2),
               _number(block.get("angle_mean_deviation_max_degrees"), 1),
               _number(block["radius_of_gyration_angstrom"]), _number(block["clashes_per_frame"], 2),
               _number(block["largest_displacement_angstrom"]), _number(block["kinetic_temperature_K"], 0),
               _parts(block.get("kinetic_temperature_parts_K")), _number(block["pair_distance_w1_angstrom"])]
        if has_energy:
            row.append(_number(block["potential_energy_eV"] - energy_mean))
        lines.append("| " + " | ".join(row) + " |")
    excess = md.get("potential energy", {}).get("thermal_excess")
    if excess is not None:
        lines += ["", f"Thermal excess over the relaxed minimum (E_min {md['potential energy']['minimum']:.3f} eV: "
                      f"the lowest sampled MD frame relaxed by BFGS): MD {excess['md_eV']:.3f} eV, forecast "
                      f"{excess['forecast_eV']:.3f} eV over all its sampled frames ({excess['ratio']:.2f}× MD's)."]
    return lines


def _bond_lines(result: LongRolloutResult) -> list[str]:
    """The BOND_ROWS bonds of largest mean deviation (none without bonds)."""
    if not result.bond_table:
        return []
    worst = sorted(result.bond_table, key=lambda row: -abs(row["mean_deviation"]))[:BOND_ROWS]
    lines = ["", f"Bonds ({len(worst)} of {len(result.bond_table)} with the largest mean deviation over the "
                 "whole rollout; all in results.json):", "",
             "| bond | MD mean ± std (Å) | forecast mean ± std (Å) | mean deviation (Å) | first lead time out "
             "of MD's range |", "|---|---|---|---|---|"]
    for row in worst:
        lines.append(f"| {row['bond']} | {row['md_mean']:.3f} ± {row['md_std']:.3f} | {row['forecast_mean']:.3f} ± "
                     f"{row['forecast_std']:.3f} | {row['mean_deviation']:+.3f} | "
                     f"{_horizon(row['first_exit_fs']).strip('*')} |")
    return lines


def long_rollout_record(result: LongRolloutResult) -> dict:
    """The JSON record: everything but the raw samples kept for the plot."""
    from dataclasses import asdict

    record = asdict(result)
    record["series"] = {k: v for k, v in record["series"].items() if not k.startswith("_")}
    return {"protocol": "L", **record}


def _column_mean(values: np.ndarray) -> np.ndarray:
    """Mean over rows of the finite values (NaN for a column without any)."""
    finite = np.isfinite(values)
    return np.where(finite.any(axis=0), np.where(finite, values, 0.0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1),
                    np.nan)


def _band(ax, stats: dict, label: str = "MD 1st–99th percentile") -> None:
    ax.axhspan(stats["low"], stats["high"], color="0.85", label=label, zorder=0)
    ax.axhline(stats["mean"], color="0.4", lw=0.8, ls="--", zorder=1)


def plot_long_rollout(result: LongRolloutResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lead_ps = np.asarray(result.series["lead_time_fs"]) / 1000.0
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.2))
    (ax_violin, ax_bond, ax_rg), (ax_t, ax_e, ax_pairs) = axes
    _plot_bond_violins(ax_violin, result)
    _plot_bond_deviation(ax_bond, result, lead_ps)
    _plot_over_time(ax_rg, lead_ps, result.series["radius_of_gyration_angstrom"], result.md["radius of gyration"],
                    "radius of gyration (Å)", "radius of gyration")
    _plot_over_time(ax_t, lead_ps, result.series["kinetic_temperature_K"], result.md["kinetic temperature"],
                    "kinetic temperature (K)", f"finite-difference temperature at {result.frame_fs:g} fs")
    _plot_energy(ax_e, result)
    for ax in (ax_bond, ax_rg, ax_t, ax_e):
        ax.set_xscale("log")
        ax.set_xlim(lead_ps[0], lead_ps[-1])
        ax.set_xlabel("lead time (ps)")
        ax.grid(alpha=0.3)
    _plot_pair_distances(ax_pairs, result)
    fig.suptitle(f"protocol L: {result.n_rollouts} rollouts of {result.rollout_frames * result.frame_fs / 1000:g} ps",
                 fontsize=10)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=110)


def _plot_bond_violins(ax, result: LongRolloutResult) -> None:
    """MD's and the forecast's distribution of the first VIOLIN_BONDS bond lengths over the whole rollout."""
    bonds = result.series["_bond_lengths"]
    n_bonds = min(VIOLIN_BONDS, bonds["md"].shape[1])
    if n_bonds:
        positions = np.arange(n_bonds)
        finite = [column[np.isfinite(column)] for column in bonds["forecast"][:, :n_bonds].T]
        for data, offset, colour, label in ((list(bonds["md"][:, :n_bonds].T), -0.2, "0.55", "MD"),
                                            (finite, 0.2, "tab:red", "forecast")):
            parts = ax.violinplot(data, positions + offset, widths=0.38, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(colour)
                body.set_alpha(0.7)
            ax.plot([], [], color=colour, lw=6, label=label)
        ax.set_xticks(positions, [row["bond"] for row in result.bond_table[:n_bonds]], rotation=90, fontsize=6)
        ax.set_ylabel("bond length (Å)")
        ax.legend(fontsize=8)
    ax.set_title("bond lengths, whole rollout", fontsize=9)


def _plot_bond_deviation(ax, result: LongRolloutResult, lead_ps: np.ndarray) -> None:
    """The largest deviation of a bond's rollout mean from its MD mean, against MD's own spread."""
    deviation = result.series["bond_mean_deviation_max_angstrom"]
    if len(deviation):
        md = result.md["bond lengths"]
        md_spread = max(max(h - m, m - lo) for m, lo, h in zip(md["mean"], md["low"], md["high"]))
        ax.axhspan(0, md_spread, color="0.85", label="MD: largest P1/P99 distance from the mean")
        ax.plot(lead_ps, deviation, color="tab:red", lw=1, label="forecast (mean over rollouts)")
        ax.legend(fontsize=7)
    ax.set_ylabel("largest |bond − MD mean| (Å)")
    ax.set_title("bond lengths against time", fontsize=9)


def _plot_over_time(ax, lead_ps: np.ndarray, values, stats: dict, ylabel: str, title: str) -> None:
    """Every rollout's series and their mean over MD's band."""
    values = np.asarray(values, dtype=np.float64)
    _band(ax, stats)
    for row in values:
        ax.plot(lead_ps, row, color="tab:blue", lw=0.4, alpha=0.35)
    ax.plot(lead_ps, _column_mean(values), color="tab:blue", lw=1.4, label="forecast: rollouts, mean")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _plot_energy(ax, result: LongRolloutResult) -> None:
    """The xTB energies of the sampled frames over MD's band (or a note that none were computed)."""
    energy = result.series.get("potential_energy_eV")
    if energy is not None:
        at = np.asarray(energy["lead_time_fs"]) / 1000.0
        values = np.asarray(energy["forecast"], dtype=np.float64)
        _band(ax, result.md["potential energy"])
        for row in values:
            ax.plot(at, row, "o", color="tab:green", ms=2, alpha=0.5)
        ax.plot(at, _column_mean(values), color="tab:green", lw=1.4, label="forecast: rollouts, mean")
        ax.set_ylabel("GFN2-xTB potential energy (eV)")
        ax.text(0.02, 0.98, "frames with a bond beyond 2× its MD length:\nno energy", ha="left", va="top",
                fontsize=7, transform=ax.transAxes)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "potential energy: not computed", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("potential energy", fontsize=9)


def _plot_pair_distances(ax, result: LongRolloutResult) -> None:
    """Histograms of the all-pair distances of MD and of the first and last 10 % of the rollouts."""
    pairs = result.series["_pair_distance_samples"]
    top = float(np.nanpercentile(pairs["md"], 100)) * 1.5
    bins = np.linspace(0, top, 80)
    for key, colour, label in (("md", "0.3", "MD"), ("first", "tab:blue", "forecast, first 10 %"),
                               ("last", "tab:red", "forecast, last 10 %")):
        values = pairs[key][np.isfinite(pairs[key])]
        ax.hist(np.minimum(values, top), bins, density=True, histtype="step", color=colour, label=label)
    ax.set_xlabel("interatomic distance (Å; larger ones in the last bin)")
    ax.set_ylabel("density")
    ax.set_title("all-pair distances", fontsize=9)
    ax.legend(fontsize=7)
