"""``asteroid-hpc train``."""

from __future__ import annotations

import click

from .common import config_argument, examples, load_cli_config, overrides_argument, verify_shards


@click.command("train", epilog=examples(
    "asteroid-hpc train configs/tiny/train.yaml data.dataset=data/ethanol train.max_steps=20",
    "torchrun --nproc_per_node 2 -- $(which asteroid-hpc) train configs/tiny/train.yaml",
    "mpiexec -n 2 asteroid-hpc train configs/tiny/train.yaml train.zero_stage=2",
    "deepspeed --no_local_rank --num_gpus 2 $(which asteroid-hpc) train configs/aspirin.yaml",
    "srun --kill-on-bad-exit=1 asteroid-hpc train configs/aspirin.yaml --resume auto",
    "asteroid-hpc train configs/aspirin.yaml --resume runs/aspirin/checkpoints/step_000300"))
@config_argument
@overrides_argument
@click.option("--verify", is_flag=True, help="Hash every dataset shard against the manifest's sha256 (default: "
              "only shards newer than the manifest).")
@click.option("--resume", default="auto", show_default=True, metavar="auto|never|PATH",
              help="auto: continue from the newest complete checkpoint of train.run_dir (else start fresh); "
                   "never: start fresh; PATH: a checkpoint folder (or a run folder) to continue from.")
def command(config, overrides, verify: bool, resume: str) -> None:
    """Train ASTEROID with DeepSpeed (ZeRO 0-3) on 1 or many ranks, from any launcher.

    Checkpoints go to train.run_dir/checkpoints/step_NNNNNN; SIGUSR1 or SIGTERM makes every rank
    checkpoint at the next step and exit 0, ready for `--resume auto`.
    """
    cfg = load_cli_config(config, overrides)
    if verify:
        verify_shards()
    from ..train import train

    train(cfg, resume)
