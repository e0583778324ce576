"""``asteroid-hpc evaluate``: score a model beside the trivial baselines."""

from __future__ import annotations

import json
import shlex
import sys

import click

from .common import examples, input_check_options, load_cli_config, model_argument, verify_shards

# option name -> the evaluate.* config key it sets
OPTION_KEYS = {"protocols": "protocols", "split": "split", "max_samples": "max_samples", "seed": "seed",
               "a_history_stride": "a_history_stride_frames", "a_input": "a_input",
               "horizon_frames": "horizon_frames", "timestep_fs": "timestep_fs", "batch_size": "batch_size",
               "rollout_ps": "long_rollout_ps", "rollout_starts": "long_rollout_starts",
               "rollout_stride_fs": "long_rollout_stride_fs", "energy_samples": "energy_samples",
               "members": "members"}


@click.command("evaluate", epilog=examples(
    "asteroid-hpc evaluate model.safetensors data/xtb-md17/aspirin.nc -o eval/aspirin --protocol C",
    "asteroid-hpc evaluate export/aspirin-a traj.nc -o eval/a --protocol A --protocol B --max-samples 500",
    "asteroid-hpc evaluate runs/aspirin data/aspirin -o eval/win --protocol window --split val   # best checkpoint",
    "asteroid-hpc evaluate model.safetensors traj.nc -o eval/c --config configs/aspirin.yaml evaluate.seed=3",
    "asteroid-hpc evaluate none data/xtb-md17/ethanol.nc -o eval/baselines   # baselines only, 10 history frames",
    "asteroid-hpc evaluate none traj.nc -o eval/b4 evaluate.baseline_history_frames=4",
    "asteroid-hpc evaluate model.safetensors test/seed-*.nc -o eval/pooled --protocol A   # several trajectories",
    "asteroid-hpc evaluate model.safetensors md.xtc --topology topol.tpr -o eval/gmx --protocol C",
    "asteroid-hpc evaluate model.safetensors traj.nc -o eval/late --protocol A 'evaluate.a_frames=[36000,60000]'",
    "asteroid-hpc evaluate model.safetensors test/seed-*.nc -o eval/long --protocol L --rollout-ps 10   # physics",
    "asteroid-hpc evaluate thermal.safetensors traj.nc -o eval/k8 --protocol C --members 8   # a stochastic model",
))
@model_argument(type=click.Path())
@click.argument("inputs", nargs=-1, required=True, metavar="DATASETS... [KEY=VALUE]...")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output directory (results.md, results.json, error_vs_lead_time.png, config.resolved.yaml).")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML config; its evaluate.* section applies (KEY=VALUE overrides and the options below win).")
@click.option("--protocol", "protocols", multiple=True,
              type=click.Choice(["A", "B", "C", "L", "window"], case_sensitive=False),
              help="Protocol (repeatable) [evaluate.protocols]. A, B, C (docs/method.md §3) read a trajectory file "
                   "and make their own splits; L rolls the model out freely for --rollout-ps and compares bonds, "
                   "angles, Rg, clashes, temperature and xTB energy with the files' MD; window uses a preprocessed "
                   "dataset directory. Default: A, B, C for a file, window for a directory.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Split scored [evaluate.split].")
@click.option("--max-samples", type=int, help="Score a seeded random subset of at most N samples "
                                              "[evaluate.max_samples].")
@click.option("--seed", type=int, help="Seed of the --max-samples subset and of a stochastic model's draws "
                                       "[evaluate.seed].")
@click.option("--members", type=int, help="Stochastic models: score the mean of K sampled rollouts per sample "
                                          "beside the path of means, with the members' CRPS and spread (K >= 2; "
                                          "0: the path of means) [evaluate.members].")
@click.option("--a-history-stride", type=int,
              help="Protocol A: MD17 frames between the model's history (and forecast) frames; must divide 375 "
                   "[evaluate.a_history_stride_frames].")
@click.option("--a-input", type=click.Choice(["heavy", "all"]),
              help="Protocol A: atoms the model sees (only heavy atoms are scored either way) [evaluate.a_input].")
@click.option("--horizon-frames", type=int, help="Protocol window: frames forecast per window "
                                                 "[evaluate.horizon_frames].")
@click.option("--timestep-fs", type=float, help="Frame spacing of the trajectory when its file has no time axis "
                                                "(default: MD17's 0.5 fs) [evaluate.timestep_fs].")
@click.option("--batch-size", type=int, help="Samples forecast at a time [evaluate.batch_size].")
@click.option("--rollout-ps", type=float, help="Protocol L: length of each rollout in ps [evaluate.long_rollout_ps].")
@click.option("--rollout-starts", type=int, help="Protocol L: rollouts, from windows spread over the files "
                                                 "[evaluate.long_rollout_starts].")
@click.option("--rollout-stride-fs", type=float, help="Protocol L: fs between the model's frames "
                                                      "[evaluate.long_rollout_stride_fs].")
@click.option("--energy-samples", type=int, help="Protocol L: frames per rollout given a GFN2-xTB energy "
                                                 "(molecules of the xTB table; 0: none) [evaluate.energy_samples].")
@input_check_options("the trajectories")
@click.option("--verify", is_flag=True, help="Hash every shard of a dataset against the manifest's sha256 "
              "(default: only shards newer than the manifest).")
def command(model, inputs, out_dir, config, topology, allow_mismatch, verify, **options) -> None:
    """Evaluate MODEL (or "none": the baselines alone) on DATASETS: one or more trajectory files of one
    molecule (pooled, and each alone), or one preprocessed dataset directory.

    Prints a markdown table per protocol (model, persistence, constant velocity and rotation, and the history
    means on the very same samples, and the error after superposition) and writes it to OUT/results.md,
    with OUT/results.json, OUT/error_vs_lead_time.png and the resolved config OUT/config.resolved.yaml.

    The model is given its own number of history frames; with MODEL none the baselines are given
    evaluate.baseline_history_frames. Settings come from the evaluate section of the config (`asteroid-hpc
    config show` lists them with their defaults); arguments containing '=' override it, and each option
    sets the key named in brackets.
    """
    from ..logs import setup_logging
    from ..runtime.launch import detect_launch
    from ..evaluation import evaluate_to_directory

    if verify:
        verify_shards()
    datasets = [a for a in inputs if "=" not in a]
    overrides = [a for a in inputs if "=" in a]
    if not datasets:
        raise click.UsageError("no DATASETS given")
    if options["protocols"]:
        options["protocols"] = [p.upper() if p.lower() != "window" else "window" for p in options["protocols"]]
    overrides += [f"evaluate.{OPTION_KEYS[name]}={json.dumps(value)}" for name, value in options.items()
                  if value not in (None, ())]
    cfg = load_cli_config(config, tuple(overrides))
    setup_logging(detect_launch())
    command_line = "asteroid-hpc " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results, paths, markdown = evaluate_to_directory(model, datasets, out_dir, cfg, command_line=command_line,
                                                     topology=topology, allow_mismatch=allow_mismatch)
    click.echo(markdown)
    click.echo(f"wrote {', '.join(str(path) for path in paths.values())}")
