"""The ``asteroid-hpc`` command: a thin click group whose commands are imported only when run.

Nothing heavy (torch, deepspeed, mpi4py, netCDF4) is imported here, so ``--help`` is instant and never
starts MPI. A :class:`~asteroid_hpc.errors.UserError` anywhere becomes one line on stderr and exit 2
(``--debug`` shows the traceback); under MPI the whole job is then aborted so no rank hangs.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from .. import __version__

# command name -> module under asteroid_hpc.cli defining a click command named `command`
COMMANDS = {
    "preprocess": "preprocess",
    "train": "train",
    "evaluate": "evaluate",
    "ensemble-forecast": "ensemble_forecast",
    "export": "export",
    "config": "config_cmd",
    "env": "env_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(f"{__package__}.{module}").command


EPILOG = """\b
Examples:
  asteroid-hpc preprocess traj.nc -o data/ds            # shard a trajectory
  mpiexec -n 2 asteroid-hpc preprocess 'runs/*.nc' -o data/ds
  asteroid-hpc train configs/aspirin.yaml train.max_steps=200
  asteroid-hpc config show configs/aspirin.yaml model.hidden_size=32
  asteroid-hpc env
"""


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="asteroid-hpc")
@click.option("--debug", is_flag=True, envvar="ASTEROID_DEBUG", help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """asteroid-hpc: forecast molecular-dynamics trajectories with ASTEROID on HPC clusters."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ["ASTEROID_DEBUG"] = "1"


def _fail(message: str, code: int) -> None:
    from ..logs import release_console
    from ..runtime.launch import detect_launch

    release_console(drop=code == 2)  # a user error is one line: no INFO line before it

    info = detect_launch()
    prefix = f"[rank {info.rank}/{info.world_size}] " if info.world_size > 1 else ""
    # a file name that is not UTF-8 arrives as surrogate escapes: print its bytes as \xNN, never crash here
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    click.echo(f"{prefix}asteroid-hpc: error: {message}", err=True)
    if info.world_size > 1 and "mpi4py.MPI" in sys.modules:
        from ..runtime.mpi import world

        world().abort(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    from ..errors import UserError
    from ..logs import HOLD_S, hold_console, release_console

    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("ASTEROID_DEBUG") == "1"
    hold_console(HOLD_S)  # a user error found early is then one line alone
    try:
        rv = cli.main(args=argv, prog_name="asteroid-hpc", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:  # bad option or argument
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        sub = ctx.command_path.partition(" ")[2] if ctx is not None else ""
        where = f"{sub}: " if sub else ""
        _fail(f"{where}{exc.format_message()}", exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or debug:
            raise
        _fail(f"{exc.filename or 'output'}: no space left on the device ({exc.strerror}); free some and re-run", 2)
    except Exception:
        if "mpi4py.MPI" in sys.modules:  # a bug on one rank must not leave the others hanging
            import traceback

            from ..runtime.mpi import world

            traceback.print_exc()
            world().abort(1)
        raise
    finally:  # what a run logged in its first seconds (dropped already before a user error's line)
        release_console()
        hold_console(0.0)
    sys.exit(rv if isinstance(rv, int) else 0)
