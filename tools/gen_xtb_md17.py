#!/usr/bin/env python
"""Generate xTB-MD17 trajectories: GFN2-xTB NVE molecular dynamics of the MD17 molecules.

Protocol per molecule: the table geometry (asteroid_hpc/datagen/molecules.py) relaxed with BFGS,
Maxwell-Boltzmann velocities and Langevin thermalisation at the temperature, then NVE (VelocityVerlet)
production, one frame every `--stride` steps of `--timestep-fs`. Output: <out-dir>/<molecule><suffix>.nc
(AMBER NetCDF, atomic numbers in `atomic_number`) and <molecule><suffix>.nc.json (settings, timing, energy drift).
An interrupted run resumes from its last complete chunk when re-run with the same settings; finished
files are skipped. Molecules run in parallel, one single-threaded process per job.

Examples:
  python tools/gen_xtb_md17.py aspirin --frames 20000 --seed 0 --out-dir asteroid_hpc/resources --suffix _xtb
  python tools/gen_xtb_md17.py all --frames 60000 --jobs 2 --out-dir data/xtb-md17
"""

import os

# one thread per process, before numpy or tblite load (here and in spawned workers)
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _run_one(job: tuple) -> dict:
    from asteroid_hpc.datagen.generate import generate_xtb_netcdf

    spec, out_path, write_velocities, progress = job
    _setup_logging()
    if out_path.exists():  # checked when the job starts: another run may have made it meanwhile
        logging.getLogger("gen_xtb_md17").info("%s exists, skipped", out_path)
        return None
    report = generate_xtb_netcdf(spec, out_path, write_velocities=write_velocities, progress=progress)
    return {"molecule": spec.molecule, "output": str(out_path), "ms_per_step": report.ms_per_step,
            "wall_seconds": report.wall_seconds, **report.energy}


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    logging.getLogger("asteroid_hpc").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.datagen.generate import XtbRunSpec
    from asteroid_hpc.datagen.molecules import MD17_MOLECULES, canonical_name, get_molecule
    from asteroid_hpc.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("molecules", nargs="+", help=f"'all' or any of: {' '.join(MD17_MOLECULES)}")
    parser.add_argument("--frames", type=int, required=True, help="frames per trajectory")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--suffix", default="", help="output name <molecule><suffix>.nc")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature-K", type=float, default=500.0)
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--stride", type=int, default=1, help="MD steps per saved frame")
    parser.add_argument("--thermalize-steps", type=int, default=2000, help="Langevin steps before production")
    parser.add_argument("--chunk-frames", type=int, default=1000, help="frames per resumable chunk")
    parser.add_argument("--velocities", action="store_true", help="also write velocities (Å/ps)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel processes (one molecule each)")
    parser.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                        help="tqdm bar, periodic log lines, or bar only on a terminal (auto)")
    args = parser.parse_args(argv)
    _setup_logging()
    log = logging.getLogger("gen_xtb_md17")

    try:
        names = list(MD17_MOLECULES) if args.molecules == ["all"] else [canonical_name(m) for m in args.molecules]
        for name in names:
            get_molecule(name)
        progress = {"auto": None, "bar": True, "log": False}[args.progress]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        jobs = []
        for name in names:
            out_path = args.out_dir / f"{name}{args.suffix}.nc"
            spec = XtbRunSpec(molecule=name, n_frames=args.frames, seed=args.seed, temperature_K=args.temperature_K,
                              timestep_fs=args.timestep_fs, thermalize_steps=args.thermalize_steps,
                              stride=args.stride, chunk_frames=args.chunk_frames)
            jobs.append((spec, out_path, args.velocities, progress))
    except (UserError, ValueError) as exc:  # bad arguments
        print(f"error: {exc}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    try:
        if args.jobs <= 1 or len(jobs) <= 1:
            results = [_run_one(job) for job in jobs]
        else:
            with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
                results = pool.map(_run_one, jobs, chunksize=1)
    except UserError as exc:  # e.g. an unfinished run with other settings, or one already running
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in filter(None, results):
        log.info("%s: %s | %.2f ms/step, %.1f s production | drift %+.4f meV/ps/atom, fluctuation %.4f meV/atom",
                 r["molecule"], r["output"], r["ms_per_step"], r["wall_seconds"],
                 r["drift_meV_per_ps_per_atom"], r["fluctuation_meV_per_atom"])
    log.info("total wall time %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
