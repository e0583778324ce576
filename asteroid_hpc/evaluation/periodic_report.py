"""Protocol L's report for a periodic system: the targets with their measurements, the distances per type, the
structure and dynamics, the physical horizons, a table per lead-time block, and one figure (O–O g(r), MSD,
temperature and largest displacement against lead time). The same names as
:mod:`asteroid_hpc.evaluation.long_rollout_report`, so the evaluation report takes either."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import write_figure_atomic
from .periodic_protocol import PeriodicRolloutResult

LONG_ROLLOUT_PNG = "long_rollout.png"


def _number(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def long_rollout_markdown(result: PeriodicRolloutResult) -> str:
    s = result.scores
    lines = ["## Protocol L: long free-running rollouts of a periodic system", "",
             f"{s['n_rollouts']} rollouts of {s['rollout_frames']} frames ({s['rollout_frames'] * s['frame_fs'] / 1000:g} "
             f"ps, {s['frame_fs']:g} fs apart) of {s['n_atoms']} atoms ({s['waters']} waters, "
             f"{s['solute_heavy_atoms']} solute heavy atoms) in a box {', '.join(f'{v:g}' for v in s['cell'])} "
             f"(Å, °); model {result.model_seconds:.1f} s, scoring {result.score_seconds:.1f} s.", "",
             "### Targets", "", _targets_table(s), "", "### Distances (whole rollout)", "",
             "| type | pairs | MD mean (Å) | forecast mean | MD width (Å) | forecast width | width ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['type']} | {r['pairs']} | {r['md_mean']:.4f} | {r['forecast_mean']:.4f} | {r['md_width']:.4f} | "
              f"{r['forecast_width']:.4f} | {_number(r['width_ratio'], 3)} |" for r in s["distances"]]
    lines += ["", "### Structure and dynamics", ""] + _structure_lines(s)
    lines += ["", "### Physical horizon (first lead time out of MD's 1st–99th percentile range)", "",
              "| observable | horizon |", "|---|---:|"]
    lines += [f"| {name} | {'stayed inside' if v is None else f'{v:g} fs'} |" for name, v in s["horizon_fs"].items()]
    lines += ["", "### Per lead-time block", ""] + _block_lines(s["blocks"])
    lines += [""] + [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _targets_table(scores: dict) -> str:
    rows = ["| target | measured | threshold | met |", "|---|---:|---:|:---:|"]
    rows += [f"| {r['target']} | {_number(r['measured'])} | {_number(r['threshold'])} | {'yes' if r['met'] else 'NO'} |"
             for r in scores["targets"]]
    return "\n".join(rows)


def _structure_lines(scores: dict) -> list[str]:
    rdf, dyn = scores["structure"]["rdf"], scores["dynamics"]
    lines = [f"- O–O g(r), last tenth of the rollouts: {rdf}" if isinstance(rdf, str) else
             f"- O–O g(r), last tenth of the rollouts: L1 {rdf['l1']:.3f}; first peak {rdf['peak_height']:.3f} at "
             f"{rdf['peak_position_angstrom']:.2f} Å (MD {rdf['reference_peak_height']:.3f} at "
             f"{rdf['reference_peak_position_angstrom']:.2f} Å)"]
    lines.append(f"- kinetic temperature (finite differences, 3N − 3 dof): forecast {dyn['temperature_forecast_K']:.1f} K, "
                 f"MD {dyn['temperature_md_K']:.1f} K")
    if "diffusion_md_A2_per_ps" in dyn:
        lines.append(f"- self-diffusion (water O, or all atoms): forecast {dyn['diffusion_forecast_A2_per_ps']:.4g} Å²/ps, "
                     f"MD {dyn['diffusion_md_A2_per_ps']:.4g} Å²/ps (1 Å²/ps = 10⁻⁴ cm²/s)")
    else:
        lines.append(f"- self-diffusion: {dyn['diffusion']}")
    return lines


def _block_lines(blocks: list[dict]) -> list[str]:
    keys = [k for k in blocks[0] if k != "lead_fs"]
    lines = ["| lead time (fs) | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for block in blocks:
        lo, hi = block["lead_fs"]
        lines.append(f"| {lo:g}–{hi:g} | " + " | ".join(_number(block[k]) for k in keys) + " |")
    return lines


def long_rollout_record(result: PeriodicRolloutResult) -> dict:
    return {"kind": "periodic", **result.scores, "history_frames": result.history_frames, "starts": result.starts,
            "settings": result.settings, "notes": result.notes, "model_seconds": result.model_seconds,
            "score_seconds": result.score_seconds}


def plot_long_rollout(result: PeriodicRolloutResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.scores
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    rdf = s["structure"]["rdf"]
    if isinstance(rdf, dict):
        axes[0, 0].plot(rdf["r_angstrom"], rdf["g_md"], label="MD")
        axes[0, 0].plot(rdf["r_angstrom"], rdf["g_forecast_last_tenth"], label="forecast (last tenth)")
        axes[0, 0].legend(fontsize=8)
    axes[0, 0].set(xlabel="r (Å)", ylabel="g(r)", title="O–O radial distribution")
    dyn = s["dynamics"]
    axes[0, 1].plot(dyn["msd_md_lag_ps"], dyn["msd_md"], label="MD")
    axes[0, 1].plot(dyn["msd_lag_ps"], dyn["msd_forecast"], label="forecast")
    axes[0, 1].set(xlabel="lag (ps)", ylabel="MSD (Å²)", title="mean-squared displacement")
    axes[0, 1].legend(fontsize=8)
    mid_ps = [np.mean(b["lead_fs"]) / 1000.0 for b in s["blocks"]]
    axes[1, 0].plot(mid_ps, [b["kinetic_temperature_K"] for b in s["blocks"]], marker="o", label="forecast")
    axes[1, 0].axhline(dyn["temperature_md_K"], color="k", linestyle="--", label="MD")
    axes[1, 0].set(xlabel="lead time (ps)", ylabel="T (K)", title="kinetic temperature (finite differences)")
    axes[1, 0].legend(fontsize=8)
    axes[1, 1].plot(mid_ps, [b["largest_displacement_angstrom"] for b in s["blocks"]], marker="o")
    axes[1, 1].set(xlabel="lead time (ps)", ylabel="Å", title="largest per-frame displacement", yscale="log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=110)
