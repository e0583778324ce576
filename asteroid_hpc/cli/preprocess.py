"""``asteroid-hpc preprocess``: trajectories → NetCDF shards + manifest.json (see asteroid_hpc.data.preprocess)."""

from __future__ import annotations

import click

from .common import examples, load_cli_config, verify_shards


@click.command("preprocess", epilog=examples(
    "asteroid-hpc preprocess traj.nc -o data/aspirin",
    "asteroid-hpc preprocess 'runs/*.nc' -o data/ds data.frames_per_shard=2048 data.frame_stride=10",
    "asteroid-hpc preprocess md17_aspirin.npz -o data/asp-A data.timestep_fs=0.5 data.split=random_start "
    "data.atom_selection=heavy",
    "asteroid-hpc preprocess amber.nc --topology system.prmtop -o data/ds --config configs/aspirin.yaml",
    "asteroid-hpc preprocess md.xtc --topology topol.tpr -o data/gmx data.atom_selection=heavy",
    "asteroid-hpc preprocess 'md/seed-*.nc' -o data/ds data.split=by_file 'data.val_inputs=[md/seed-4.nc]'",
    "mpiexec -n 4 asteroid-hpc preprocess 'runs/*.nc' -o data/ds --overwrite"))
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS... [KEY=VALUE]...")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Dataset directory to write (manifest.json + shards/).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="YAML config; its data.* and model.history_frames apply.")
@click.option("--topology", type=click.Path(dir_okay=False), default=None,
              help="Topology giving the elements of inputs without them: AMBER .prmtop/.parm7, GROMACS .tpr/.gro, "
                   "CHARMM/NAMD .psf, .pdb/.cif, LAMMPS data (via MDAnalysis), .xyz (via ASE). Recorded in the "
                   "dataset, so evaluate and ensemble-forecast find it.")
@click.option("--drop-nonfinite", is_flag=True, help="Skip frames with NaN/Inf coordinates (reports how many) "
                                                     "instead of failing. Same as data.drop_nonfinite=true.")
@click.option("--overwrite", is_flag=True, help="Replace a different dataset already in the output directory.")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress log lines.")
@click.option("--verify", is_flag=True, help="When the output already holds this dataset, hash every shard "
              "against the manifest's sha256 (default: only shards newer than the manifest).")
def command(inputs, outdir, config, topology, drop_nonfinite, overwrite, no_progress, verify) -> None:
    """Shard trajectories (AMBER NetCDF .nc/.ncdf, MD17 .npz, extended .xyz, GROMACS .xtc/.trr, CHARMM/NAMD/OpenMM
    .dcd, LAMMPS dump, H5MD, AMBER ASCII .mdcrd; files or quoted globs) into a
    dataset directory: NetCDF shards of data.frames_per_shard frames, split chronologically (with a gap of
    history + horizon frames between splits), by protocol A's random start frames, or by whole input files
    (data.split=by_file with data.val_inputs / data.test_inputs), plus manifest.json
    with checksums and normalisation statistics. Arguments containing '=' are config overrides.

    Runs on every rank under mpiexec/srun (shards are dealt out across ranks); a re-run after an
    interruption keeps the complete shards.
    """
    from ..logs import setup_logging
    from ..runtime.launch import detect_launch
    from ..runtime.mpi import abort_on_uncaught_exception

    paths = [a for a in inputs if "=" not in a]
    overrides = [a for a in inputs if "=" in a]
    if drop_nonfinite:
        overrides.append("data.drop_nonfinite=true")
    if not paths:
        raise click.UsageError("no input files given")
    cfg = load_cli_config(config, tuple(overrides))
    setup_logging(detect_launch())
    abort_on_uncaught_exception()
    from ..data.preprocess import run_preprocess

    if verify:
        verify_shards()
    run_preprocess(paths, outdir, cfg, overwrite=overwrite, topology=topology, progress=not no_progress)
