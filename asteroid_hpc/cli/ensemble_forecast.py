"""``asteroid-hpc ensemble-forecast``."""

from __future__ import annotations

import click

from .common import examples, input_check_options, load_cli_config, model_argument


@click.command("ensemble-forecast", epilog=examples(
    "asteroid-hpc ensemble-forecast model.safetensors traj.nc -o ens/run1 ensemble.members=4 ensemble.horizon_frames=200",
    "asteroid-hpc ensemble-forecast export/ traj.nc -o ens/frames ensemble.perturbation=frames ensemble.frame_spacing=20",
    "asteroid-hpc ensemble-forecast model.safetensors traj.nc -o ens/scored --reference truth.nc --reference-start 0",
    "mpiexec -n 4 asteroid-hpc ensemble-forecast model.safetensors traj.nc -o ens/run2 ensemble.members=8",
    "mpiexec -n 4 asteroid-hpc ensemble-forecast model.safetensors box.nc -o ens/big --grid 2x2   # 2 ranks per member",
    "asteroid-hpc ensemble-forecast model.safetensors md.dcd --topology system.psf -o ens/namd --full-system",
    "asteroid-hpc ensemble-forecast model.safetensors md.xtc --topology md.tpr -o ens/gmx --reference truth.xtc",
    "asteroid-hpc ensemble-forecast model.safetensors traj.nc -o ens/safe ensemble.stop_on_blowup=true",
    "asteroid-hpc ensemble-forecast water.safetensors water.nc --topology water.pdb -o ens/water   # periodic box",
    "asteroid-hpc ensemble-forecast water.safetensors water.nc -o ens/msd ensemble.output_wrap=none",
    "srun asteroid-hpc ensemble-forecast runs/aspirin traj.nc -o ens/run3 --config configs/aspirin.yaml"))
@model_argument(type=click.Path(exists=True))
@click.argument("initial", type=click.Path())
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("-o", "--out", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output directory (members/member_NNNNN.nc, mean.nc, summary.json, summary.nc). Re-running the "
                   "same command continues an interrupted run.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML config; its ensemble.* section applies (KEY=VALUE overrides win).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="The true continuation, in any trajectory format preprocess reads (of the model's atoms or the "
                   "whole system; --topology as for INITIAL): RMSD, MSE and CRPS per lead time are added to the "
                   "summary.")
@click.option("--reference-start", default=0, show_default=True, type=click.IntRange(min=0),
              help="Frame of --reference that is the truth at lead time 1 (0 when it holds only the continuation).")
@click.option("--grid", default=None, metavar="GROUPSxDOMAINS",
              help="Process grid, e.g. 2x2: member groups x ranks per member (sets ensemble.domains; the product "
                   "must be the number of ranks).")
@click.option("--full-system/--selected-atoms", "full_system", default=None,
              help="Member files hold every atom of INITIAL (the unselected ones held fixed) or only the model's "
                   "selected atoms; overrides ensemble.write_full_system.")
@input_check_options("INITIAL")
def command(model, initial, overrides, outdir, config, reference, reference_start, grid, full_system, topology,
            allow_mismatch) -> None:
    """Roll out an ensemble of perturbed ASTEROID forecasts from the end of INITIAL (a trajectory in any format
    preprocess reads: AMBER NetCDF, .xtc/.trr, .dcd, LAMMPS dump, H5MD, .mdcrd, .npz, .xyz). Member times
    continue INITIAL's, so a member appended to it reads as one trajectory.

    Settings: ensemble.members, horizon_frames (any length: iterative forecasting),
    perturbation (gaussian | frames), noise_angstrom, frame_spacing, start_frame (-1 = last frame), seed,
    domains (ranks per member), chunk_frames (frames per flush). Each member's random stream depends only on
    the seed and the member index, so results do not depend on the number of ranks.

    Every member is watched: a bond further than ensemble.blowup_bond_angstrom from its length in the
    starting window, or an atom moving more than ensemble.blowup_displacement_angstrom in one frame, is a
    blow-up, logged as a warning and listed in summary.json (watch.blown_up, with clashes and the largest
    deviations per member); with ensemble.stop_on_blowup=true that member's file ends there, marked stopped.

    Under mpiexec/srun, members are dealt to groups of ensemble.domains ranks; a group shares one member by
    spatial domain decomposition (for large systems).

    Periodic systems (INITIAL has a unit cell; the model must have been trained on periodic data, and a model
    trained on open systems refuses them): the box of INITIAL's last starting frame is kept for the whole
    forecast, neighbours and domain halos reach across the faces, and member files carry the cell of every
    frame. ensemble.output_wrap=molecules (default) writes every molecule whole with its centre in the box, as
    MD engines do (molecules from --topology's bonds, else each atom alone); =none writes continuous, unwrapped
    coordinates (for MSD and diffusion).
    """
    from pathlib import Path

    from ..logs import setup_logging
    from ..runtime.launch import detect_launch
    from ..runtime.mpi import abort_on_uncaught_exception, world
    from ..ensemble import Reference, parse_grid, run_ensemble

    if full_system is not None:  # the option wins over --config and KEY=VALUE
        overrides = (*overrides, f"ensemble.write_full_system={str(full_system).lower()}")
    cfg = load_cli_config(config, overrides)
    setup_logging(detect_launch())
    abort_on_uncaught_exception()
    domains = parse_grid(grid, world().size) if grid else None
    summary = run_ensemble(cfg, model, initial, outdir, domains=domains, topology=topology,
                           allow_mismatch=allow_mismatch,
                           reference=Reference(Path(reference), reference_start) if reference else None)
    if summary is not None:
        blown_up = summary["watch"]["blown_up"]
        spread = summary["spread_rms_angstrom_final"]
        click.echo(f"wrote {outdir}: {summary['members']} members x {summary['horizon_frames']} frames, "
                   + ("no member in the statistics" if spread is None else f"final spread {spread:.4f} A") + ", "
                   + (f"{len(blown_up)} blown up (member {', '.join(str(b['member']) for b in blown_up)}; see "
                      "summary.json watch)" if blown_up else "no member blew up"))
