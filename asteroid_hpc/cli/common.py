"""Pieces shared by the command modules. Light imports only."""

from __future__ import annotations

import inspect

import click

# what MODEL means, the same in every command and tool (asteroid_hpc.train.model_files.open_model)
MODEL_HELP = ("MODEL is exported weights (a .safetensors file, or a folder holding one: see `asteroid-hpc export`), "
              "a complete training checkpoint folder (step_NNNNNN) or a run folder (its best-validation "
              "checkpoint, else its newest).")

config_argument = click.argument("config", required=False, type=click.Path(dir_okay=False))
overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


def model_argument(**kwargs):
    """The MODEL argument; MODEL_HELP becomes the last paragraph of the command's help (put it under
    ``@click.command``, which reads the docstring)."""
    def decorate(function):
        function.__doc__ = inspect.cleandoc(function.__doc__ or "") + "\n\n" + MODEL_HELP
        return click.argument("model", **kwargs)(function)
    return decorate


def input_check_options(inputs: str):
    """``--topology`` and ``--allow-mismatch`` of the commands that feed a trajectory (``inputs``) to a model."""
    def decorate(function):
        function = click.option(
            "--allow-mismatch", is_flag=True,
            help=f"Go on when the atoms or frame spacing of {inputs} differ from the model's training inputs.")(function)
        return click.option(
            "--topology", type=click.Path(dir_okay=False), default=None,
            help=f"Topology giving the elements of {inputs} without them (.prmtop/.parm7, .tpr/.gro, .psf, "
                 ".pdb/.cif, LAMMPS data); default: the one the model's dataset was preprocessed with.")(function)
    return decorate


def split_config_and_overrides(config: str | None, overrides: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """Let the config path be omitted: ``config show train.lr=1`` treats the first word as an override."""
    if config is not None and "=" in config:
        return None, [config, *overrides]
    return config, list(overrides)


def load_cli_config(config: str | None, overrides: tuple[str, ...]):
    from ..config import load_config

    path, items = split_config_and_overrides(config, overrides)
    return load_config(path, items)


def examples(*lines: str) -> str:
    """An epilog of runnable examples for a command's help (click keeps the lines as written)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def not_built(name: str, issue: int) -> None:
    click.echo(f"asteroid-hpc {name}: not built yet (tracked as issue {issue}); nothing was run.", err=True)
    raise SystemExit(3)


def verify_shards() -> None:
    """--verify: every dataset shard opened from now on is hashed against its manifest's sha256."""
    import os

    os.environ["ASTEROID_VERIFY_SHARDS"] = "1"  # data.manifest.VERIFY_ENV (not imported: the CLI stays light)
