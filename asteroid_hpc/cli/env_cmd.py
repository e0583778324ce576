"""``asteroid-hpc env``: what launcher, ranks, device and libraries this process sees."""

from __future__ import annotations

import json

import click

from .common import examples


@click.command("env", epilog=examples("asteroid-hpc env", "asteroid-hpc env --json",
                                      "mpiexec -n 2 asteroid-hpc env --mpi"))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--mpi", is_flag=True, help="Also initialise MPI and report what every rank sees (rank 0 prints).")
def command(as_json: bool, mpi: bool) -> None:
    """Print the detected launcher, rank, world size, rendezvous address, device and versions."""
    from ..runtime import choose_device, detect_launch, threads_per_rank
    from ..provenance import package_versions

    info = detect_launch()
    report = {**info.to_dict(), "device": choose_device(info), "threads_per_rank": threads_per_rank(info),
              "versions": package_versions()}
    if mpi:
        from ..runtime.mpi import world

        w = world()
        gathered = w.gather({"rank": w.rank, "host": info.hostname, "device": report["device"]})
        report["mpi_world_size"] = w.size
        report["mpi_ranks"] = gathered
        if w.rank != 0:
            return
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if key == "versions":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        click.echo(f"{key:>17}: {value}")
