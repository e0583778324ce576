"""``asteroid-hpc config show|validate|schema``."""

from __future__ import annotations

import json

import click

from .common import config_argument, examples, load_cli_config, overrides_argument


@click.group("config", epilog=examples(
    "asteroid-hpc config show configs/tiny/train.yaml train.lr=1e-3",
    "asteroid-hpc config validate configs/aspirin.yaml",
    "asteroid-hpc config schema > asteroid-config.schema.json"))
def command() -> None:
    """Show, validate or describe configurations."""


@command.command("show", epilog=examples("asteroid-hpc config show configs/tiny/train.yaml model.hidden_size=32",
                                         "asteroid-hpc config show   # the defaults"))
@config_argument
@overrides_argument
def show(config, overrides) -> None:
    """Print the resolved config (YAML file + KEY=VALUE overrides) as YAML."""
    import yaml

    from ..config import to_dict

    cfg = load_cli_config(config, overrides)
    click.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False), nl=False)


@command.command("validate", epilog=examples("asteroid-hpc config validate configs/aspirin.yaml train.zero_stage=2"))
@config_argument
@overrides_argument
def validate(config, overrides) -> None:
    """Check a config; print 'ok' and its hash, or one line naming the problem (exit 2)."""
    from ..config import config_hash

    cfg = load_cli_config(config, overrides)
    click.echo(f"ok {config_hash(cfg)}")


@command.command("schema", epilog=examples("asteroid-hpc config schema | head"))
def schema() -> None:
    """Print the JSON Schema of the config, generated from the typed dataclasses."""
    from ..config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
