"""``asteroid-hpc export``."""

from __future__ import annotations

import click

from .common import examples


@click.command("export", epilog=examples(
    "asteroid-hpc export runs/aspirin/checkpoints/step_000300 aspirin.safetensors",
    "asteroid-hpc export runs/aspirin model.safetensors   # the run's newest checkpoint",
    "asteroid-hpc export runs/aspirin best.safetensors --best   # its best validation checkpoint"))
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--best", is_flag=True, help="Export the run's best-validation checkpoint (best.json) instead of its "
                                           "newest.")
def command(checkpoint: str, output: str, best: bool) -> None:
    """Consolidate a training checkpoint (any ZeRO stage, any world size) into one fp32 weights file.

    CHECKPOINT is a step folder, a checkpoints folder or a run folder (then its newest complete
    checkpoint). OUTPUT is a safetensors file holding the weights and the model config, loadable for
    inference on any number of ranks.
    """
    from ..logs import setup_logging
    from ..runtime.launch import detect_launch
    from ..train.export import export_checkpoint

    setup_logging(detect_launch())
    path = export_checkpoint(checkpoint, output, best=best)
    click.echo(str(path))
