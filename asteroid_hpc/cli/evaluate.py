"""``asteroid-hpc evaluate``."""

from __future__ import annotations

import click

from .common import examples, not_built


@click.command("evaluate", context_settings={"ignore_unknown_options": True},
               epilog=examples("asteroid-hpc evaluate --help"))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def command(args) -> None:
    """Not built yet."""
    not_built("evaluate", 7)
