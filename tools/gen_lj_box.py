#!/usr/bin/env python
"""Generate a Lennard-Jones liquid-argon box with OpenMM (CPU) as AMBER NetCDF, for scaling benchmarks.

The file holds `--frames` frames taken every `--stride` steps after `--equilibration-steps` Langevin
steps, the periodic cell (cell_lengths, cell_angles) and atomic numbers (18) in `atomic_number`.

Examples:
  python tools/gen_lj_box.py --atoms 10000 --frames 4 --out data/lj/argon_1e4.nc
  python tools/gen_lj_box.py --atoms 200000 --frames 3 --equilibration-steps 200 --out data/lj/argon_2e5.nc
"""

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.datagen.lj import LIQUID_ARGON_DENSITY_PER_A3, LIQUID_ARGON_TEMPERATURE_K, lj_argon_box, \
        write_lj_box
    from asteroid_hpc.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, required=True)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--density-per-A3", type=float, default=LIQUID_ARGON_DENSITY_PER_A3)
    parser.add_argument("--temperature-K", type=float, default=LIQUID_ARGON_TEMPERATURE_K)
    parser.add_argument("--timestep-fs", type=float, default=5.0)
    parser.add_argument("--stride", type=int, default=20, help="steps between frames")
    parser.add_argument("--equilibration-steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="OpenMM CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("gen_lj_box")
    try:
        box = lj_argon_box(args.atoms, args.frames, seed=args.seed, density_per_A3=args.density_per_A3,
                           temperature_K=args.temperature_K, timestep_fs=args.timestep_fs,
                           equilibration_steps=args.equilibration_steps, stride=args.stride, threads=args.threads)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_lj_box(args.out, box, seed=args.seed, temperature_K=args.temperature_K)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s: %d atoms, box %.2f Å, density %.5f /Å^3, %d frames; equilibration %.1f s, %.2f ms/step",
             args.out, box.n_atoms, box.box_length_angstrom, box.density_per_A3, args.frames,
             box.seconds_equilibration, box.ms_per_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
