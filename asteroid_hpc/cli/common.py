"""Pieces shared by the command modules. Light imports only."""

from __future__ import annotations

import click

config_argument = click.argument("config", required=False, type=click.Path(dir_okay=False))
overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")


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
