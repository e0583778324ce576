"""``asteroid-hpc evaluate``: score an exported model beside the trivial baselines."""

from __future__ import annotations

import shlex
import sys

import click

from .common import examples

TRAJECTORY_PROTOCOLS = ("A", "B", "C")


@click.command("evaluate", epilog=examples(
    "asteroid-hpc evaluate model.safetensors data/xtb-md17/aspirin.nc -o eval/aspirin --protocol C",
    "asteroid-hpc evaluate export/aspirin-a traj.nc -o eval/a --protocol A --protocol B --max-samples 500",
    "asteroid-hpc evaluate export/aspirin data/aspirin -o eval/win --protocol window --split val",
    "asteroid-hpc evaluate none data/xtb-md17/ethanol.nc -o eval/baselines   # baselines only",
    "asteroid-hpc evaluate model.safetensors test/seed-*.nc -o eval/pooled --protocol A   # several trajectories",
))
@click.argument("model", type=click.Path())
@click.argument("datasets", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory (results.md, results.json, error_vs_lead_time.png).")
@click.option("--protocol", "protocols", multiple=True, type=click.Choice(["A", "B", "C", "window"], case_sensitive=False),
              help="Protocol (repeatable). A, B, C (docs/method.md §3) read a trajectory file and make their own "
                   "splits; window uses a preprocessed dataset directory. Default: A, B, C for a file, window "
                   "for a directory.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--history-frames", type=click.IntRange(min=2),
              help="History frames given to the model; must equal the model's history_frames (the default). "
                   "With MODEL none: the history of the baselines (default 10).")
@click.option("--max-samples", type=click.IntRange(min=1), help="Score a seeded random subset of at most N samples.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the --max-samples subset.")
@click.option("--a-history-stride", default=375, show_default=True, type=click.IntRange(min=1),
              help="Protocol A: MD17 frames between the model's history (and forecast) frames; must divide 375.")
@click.option("--a-input", default="heavy", show_default=True, type=click.Choice(["heavy", "all"]),
              help="Protocol A: atoms the model sees (only heavy atoms are scored either way).")
@click.option("--horizon-frames", default=10, show_default=True, type=click.IntRange(min=1),
              help="Protocol window: frames forecast per window.")
@click.option("--timestep-fs", type=click.FloatRange(min=0, min_open=True),
              help="Frame spacing of the trajectory when its file has no time axis (default: MD17's 0.5 fs).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
def command(model, datasets, out_dir, protocols, split, history_frames, max_samples, seed, a_history_stride, a_input,
            horizon_frames, timestep_fs, batch_size) -> None:
    """Evaluate MODEL (exported weights, or "none" for the baselines alone) on DATASETS: one or more
    trajectory files of one molecule (pooled, and each alone), or one preprocessed dataset directory.

    Prints a markdown table per protocol (model, persistence, constant velocity and rotation, and the history
    means on the very same samples, and the error after superposition) and writes it to OUT/results.md,
    with OUT/results.json and OUT/error_vs_lead_time.png.
    """
    from pathlib import Path

    from ..logs import setup_logging
    from ..runtime.launch import detect_launch
    from ..errors import user_error
    from ..evaluation import evaluate_to_directory

    setup_logging(detect_launch())
    directories = [d for d in datasets if Path(d).is_dir()]
    if directories and len(datasets) > 1:
        raise user_error(directories[0], "a dataset directory is evaluated alone (protocol window); pass it "
                                         "without other inputs")
    dataset = datasets[0]
    is_directory = bool(directories)
    chosen = [p.upper() if p.lower() != "window" else "window" for p in protocols]
    if not chosen:
        chosen = ["window"] if is_directory else list(TRAJECTORY_PROTOCOLS)
    if is_directory and any(p in TRAJECTORY_PROTOCOLS for p in chosen):
        raise user_error(dataset, "protocols A, B and C make their own splits: pass the trajectory file, not a "
                                  "dataset directory")
    if not is_directory and "window" in chosen:
        raise user_error(dataset, "protocol window needs a preprocessed dataset directory")
    command_line = "asteroid-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results, paths, markdown = evaluate_to_directory(
        model, list(datasets), out_dir, list(dict.fromkeys(chosen)), split=split, history_frames=history_frames,
        max_samples=max_samples, seed=seed, a_history_stride_frames=a_history_stride, a_heavy_input=a_input == "heavy",
        horizon_frames=horizon_frames, timestep_fs=timestep_fs, batch_size=batch_size, command_line=command_line)
    click.echo(markdown)
    click.echo(f"wrote {paths['markdown']}, {paths['json']}, {paths['plot']}")
