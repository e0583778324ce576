"""Evaluation outputs: a markdown table, a JSON record and a plot of error against lead time.

Every file is written as ``<name>.tmp-<pid>`` and renamed when complete.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

from ..atomic import write_figure_atomic, write_json_atomic, write_text_atomic
from .members import CRPS_ESTIMATOR, PATH_OF_MEANS_LABEL, SPREAD_DEFINITION, is_model_label
from .run import ProtocolResult

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
PLOT_PNG = "error_vs_lead_time.png"

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_DESCRIPTION = {
    "A": "long jump, targets t + ⌊3000·p/8⌋; the peers see one frame and its finite-difference velocity",
    "B": "history window, target 10 frames after the last input",
    "C": "multi-step, 10 conditioning + 20 predicted frames",
    "window": "dataset windows",
}


def _scale_label(scale: float) -> str:
    return f"×10{str(round(math.log10(scale))).translate(_SUPERSCRIPT)}"


def _lead_times(lead_time_fs: list[float]) -> str:
    if len(lead_time_fs) == 1:
        return f"lead time {lead_time_fs[0]:g} fs"
    return f"{len(lead_time_fs)} lead times {lead_time_fs[0]:g}–{lead_time_fs[-1]:g} fs"


def _every_nth_frame(n: int) -> str:
    if n == 1:
        return "every frame"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"every {n}{suffix} frame"


def protocol_markdown(result: ProtocolResult) -> str:
    """One protocol's section: a heading that says what was given and scored, a table, and notes."""
    scale = _scale_label(result.mse_scale)
    stride_fs = result.history_stride_frames * result.frame_fs
    lines = [f"### Protocol {result.protocol} ({_DESCRIPTION[result.protocol]})", "",
             f"{result.split} split, {result.n_samples} samples, {result.n_atoms_scored} atoms scored; "
             f"{'the model is' if any(map(is_model_label, result.headline)) else 'the baselines are'} given "
             f"{result.history_frames} history frames {stride_fs:g} fs apart "
             f"({_every_nth_frame(result.history_stride_frames)} of the input); {_lead_times(result.lead_time_fs)}.", ""]
    metric_names = list(next(iter(result.headline.values())))
    header = ["method"]
    for name in metric_names:
        header += [f"{name} (Å)"] if name in ("ADE", "FDE") else [f"{name} (Å²)", f"{name} ({scale} Å²)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, metrics in result.headline.items():
        cells = [method]
        for name in metric_names:
            value = metrics[name]
            cells += [f"{value:.4f}"] if name in ("ADE", "FDE") else [f"{value:.3e}", f"{value / result.mse_scale:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _members_table(result)
    lines += _superposed_table(result, scale)
    lines += _per_trajectory_table(result, scale)
    bullets = [_training_overlap_line(entry) for entry in result.training_overlap] + [f"- {n}" for n in result.notes]
    if bullets:
        lines += [""] + bullets
    return "\n".join(lines) + "\n"


def _members_table(result: ProtocolResult) -> list[str]:
    """With ``evaluate.members``: what the model's two rows are, and the members' CRPS and spread."""
    members = result.members
    if not members:
        return []
    crps, spread = members["crps_per_lead_angstrom"], members["spread_per_lead_angstrom"]
    return ["", f"The model sampled {members['count']} rollouts of every sample (seed {members['seed']}): "
                f"\"{members['label']}\" scores their mean, \"{PATH_OF_MEANS_LABEL}\" the deterministic path of its "
                f"means (`evaluate.members: 0`). CRPS: {CRPS_ESTIMATOR}. Spread: {SPREAD_DEFINITION}. Per lead "
                f"time in {RESULTS_JSON} and {PLOT_PNG}.", "",
            "| members | CRPS mean (Å) | CRPS first / last lead time (Å) | spread mean (Å) | "
            "spread first / last lead time (Å) |", "|---|---|---|---|---|",
            f"| {members['count']} | {members['crps_mean_angstrom']:.4f} | {crps[0]:.4f} / {crps[-1]:.4f} | "
            f"{members['spread_mean_angstrom']:.4f} | {spread[0]:.4f} / {spread[-1]:.4f} |"]


def _superposed_table(result: ProtocolResult, scale: str) -> list[str]:
    """The shape error (each forecast frame superposed onto the true one) and the share of the raw MSE that
    the superposition removes, i.e. that is rigid-body motion."""
    if not result.superposed_headline:
        return []
    metric_names = list(next(iter(result.superposed_headline.values())))
    header = ["method"]
    for name in metric_names:
        header += [f"{name} superposed ({scale} Å²)", f"{name}: rigid-body share"]
    lines = ["", "After superposing each forecast frame onto the true frame (Kabsch): the error of the shape, and "
                 "the share of the MSE above that is rigid-body motion (translation and rotation).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, metrics in result.superposed_headline.items():
        cells = [method]
        for name in metric_names:
            raw = result.headline[method][name]
            share = 1.0 - metrics[name] / raw if raw > 0 else 0.0
            cells += [f"{metrics[name] / result.mse_scale:.3f}", f"{100 * share:.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _training_overlap_line(entry: dict) -> str:
    """How close one trajectory's starts lie to the model's training windows (data.coverage)."""
    where = f"training data, `{entry['source']}`: "
    if entry["status"] == "unknown":
        return f"- {where}unknown (the model records no training windows: saved before they were recorded)"
    if entry["status"] == "independent":
        return f"- {where}independent trajectory (no shared frames: not an input the model was trained on)"
    window, start = entry["to_window_frames"], entry["to_start_frames"]
    return (f"- {where}an input the model was trained on ({entry['training_windows']} training windows): the test "
            f"starts lie a median {window['median']:g} (min {window['min']:g}) input frames from the nearest "
            f"training window (history to last target; 0 = inside one: {entry['inside_training_window']} of "
            f"{entry['test_starts']}) and a median {start['median']:g} (min {start['min']:g}) frames from the "
            f"nearest training start")


def _per_trajectory_table(result: ProtocolResult, scale: str) -> list[str]:
    """With several trajectories pooled: every method's MSE numbers on each trajectory alone."""
    if not result.per_trajectory:
        return []
    names = [n for n in next(iter(result.headline.values())) if n not in ("ADE", "FDE")]
    lines = ["", f"Per trajectory ({' / '.join(names)}, {scale} Å²; the tables above pool all "
                 f"{result.n_samples} samples):", "",
             "| method | " + " | ".join(f"{t['source']} ({t['n_samples']})" for t in result.per_trajectory) + " |",
             "|---|" + "---|" * len(result.per_trajectory)]
    for method in result.headline:
        cells = [" / ".join(f"{t['headline'][method][n] / result.mse_scale:.3f}" for n in names)
                 for t in result.per_trajectory]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _long_rollout_report(result):
    """The report module of a protocol-L result: a periodic system's, or a molecule's."""
    from .periodic_protocol import PeriodicRolloutResult

    if isinstance(result, PeriodicRolloutResult):
        from . import periodic_report as report
    else:
        from . import long_rollout_report as report
    return report


def results_markdown(results: list[ProtocolResult], header: dict, long_rollout=None) -> str:
    data = header["data"] if isinstance(header["data"], str) else "`, `".join(header["data"])
    lines = ["# Evaluation", "", f"- model: `{header['model']}`", f"- data: `{data}`",
             f"- command: `{header['command']}`", "- MSE: per-coordinate squared error (mean over atoms and x, y, z)",
             "- baselines, from the same history: persistence repeats the last frame; constant velocity (history "
             "spacing) is x_last + k·(x_last − x_previous), k counted in history spacings; constant velocity "
             "(1-frame) is the peers' (GMN/EGNO): x_t + Δ·(x_{t+1} − x_t), their input velocity, x_{t+1} the "
             "input file's frame just after the last observed one (it sees that one frame ahead, as the peers' "
             "models do), Δ the lead time in input frames; history mean is the mean of the "
             "history frames; aligned history mean is that mean after superposing every history frame onto the "
             "last one (Kabsch); constant rotation turns the last frame at the history's mean angular rate (the "
             "rigid rotation from the first to the last history frame); training mean structure (models with a "
             "reference structure) is the model's reference superposed onto the last frame", ""]
    sections = [protocol_markdown(r) for r in results]
    if long_rollout is not None:
        sections.append(_long_rollout_report(long_rollout).long_rollout_markdown(long_rollout))
    return "\n".join(lines) + "\n" + "\n".join(sections)


def plot_error_vs_lead_time(results: list[ProtocolResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if any(r.members for r in results) else 1
    fig, axes = plt.subplots(rows, len(results), figsize=(4.5 * len(results), 3.6 * rows), squeeze=False)
    for ax, result in zip(axes[1] if rows == 2 else [], results):
        _plot_members(ax, result)
    for ax, result in zip(axes[0], results):
        for method, mse in result.mse_per_lead_angstrom2.items():
            ax.plot(result.lead_time_fs, mse, marker="o", markersize=3, label=method)
        ax.set_yscale("log")
        ax.set_xlabel("lead time (fs)")
        ax.set_ylabel("MSE (Å²)")
        ax.set_title(f"protocol {result.protocol} ({result.split}, {result.n_samples} samples)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure_atomic(fig, path, dpi=120)


def _plot_members(ax, result: ProtocolResult) -> None:
    """The members' CRPS and spread against lead time (Å); an empty panel for a protocol without members."""
    if not result.members:
        ax.axis("off")
        return
    members = result.members
    ax.plot(result.lead_time_fs, members["crps_per_lead_angstrom"], marker="o", markersize=3, label="CRPS")
    ax.plot(result.lead_time_fs, members["spread_per_lead_angstrom"], marker="s", markersize=3, label="spread")
    ax.set_xlabel("lead time (fs)")
    ax.set_ylabel("Å")
    ax.set_title(f"protocol {result.protocol}: {members['count']} members", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_outputs(results: list[ProtocolResult], out_dir: str | os.PathLike, header: dict,
                  long_rollout=None) -> dict[str, Path]:
    """Write results.md, results.json and error_vs_lead_time.png (with protocol L: its section, record and
    long_rollout.png) into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / RESULTS_MD, "json": out / RESULTS_JSON}
    record = {**header, "protocols": [asdict(r) for r in results]}
    if long_rollout is not None:
        report = _long_rollout_report(long_rollout)
        record["long_rollout"] = report.long_rollout_record(long_rollout)
        paths["long_rollout_plot"] = out / report.LONG_ROLLOUT_PNG
        report.plot_long_rollout(long_rollout, paths["long_rollout_plot"])
    write_json_atomic(paths["json"], record, indent=2, sort_keys=False)
    write_text_atomic(paths["markdown"], results_markdown(results, header, long_rollout))
    if results:
        paths["plot"] = out / PLOT_PNG
        plot_error_vs_lead_time(results, paths["plot"])
    return paths
