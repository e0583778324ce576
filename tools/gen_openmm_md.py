#!/usr/bin/env python
"""Generate a periodic OpenMM trajectory: a TIP3P water box or the villin headpiece in explicit water.

Protocol (asteroid_hpc/datagen/openmm_md.py): energy minimisation, a Langevin equilibration (NPT at 1 bar for
water, NVT for villin), then Langevin NVT production at 2 fs, one frame every --frame-interval-fs, on OpenMM's
CPU platform with deterministic forces. Output: OUT (.dcd, OpenMM's DCD writer, the unit cell of every frame,
molecules wrapped into the box), <stem>.pdb (topology with elements and CONECT records for every bond, for
`asteroid-hpc preprocess OUT --topology <stem>.pdb`), OUT.json (command, settings, versions, timings) and
<stem>.md. An interrupted run resumes from its last checkpoint when re-run with the same command; a finished
output is skipped.

Examples:
  python tools/gen_openmm_md.py water --equilibration-ps 5 --production-ps 40 --out data/periodic/water.dcd
  python tools/gen_openmm_md.py villin --equilibration-ps 2 --production-ps 20 --out data/periodic/villin.dcd
  python tools/gen_openmm_md.py water --box-nm 2.0 --equilibration-ps 1 --production-ps 2 --out /tmp/w.dcd
"""

import argparse
import logging
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.datagen.openmm_md import OpenMMRunSpec, generate_openmm_md
    from asteroid_hpc.datagen.openmm_systems import SYSTEMS
    from asteroid_hpc.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--out", type=Path, required=True, help="the trajectory, <name>.dcd")
    parser.add_argument("--production-ps", type=float, required=True)
    parser.add_argument("--equilibration-ps", type=float, required=True)
    parser.add_argument("--frame-interval-fs", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--box-nm", type=float, default=None, help="water: the cube's edge (default 3.2 nm)")
    parser.add_argument("--equilibration-ensemble", choices=("NPT", "NVT"), default=None,
                        help="default NPT for water, NVT for villin")
    parser.add_argument("--temperature-K", type=float, default=300.0)
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="OpenMM CPU threads (part of the trajectory's identity)")
    parser.add_argument("--minimize-max-iterations", type=int, default=1000, help="0: until converged")
    parser.add_argument("--chunk-frames", type=int, default=500, help="frames between checkpoints")
    parser.add_argument("--progress", choices=("auto", "bar", "log"), default="auto",
                        help="tqdm bar, periodic log lines, or bar only on a terminal (auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("asteroid_hpc").setLevel(logging.INFO)
    log = logging.getLogger("gen_openmm_md")
    command = shlex.join(["python", "tools/gen_openmm_md.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        spec = OpenMMRunSpec(system=args.system, production_ps=args.production_ps,
                             equilibration_ps=args.equilibration_ps, frame_interval_fs=args.frame_interval_fs,
                             seed=args.seed, box_nm=args.box_nm, equilibration_ensemble=args.equilibration_ensemble,
                             temperature_K=args.temperature_K, timestep_fs=args.timestep_fs, threads=args.threads,
                             chunk_frames=args.chunk_frames, minimize_max_iterations=args.minimize_max_iterations)
        if args.out.exists():
            log.info("%s exists, skipped (delete it to generate again)", args.out)
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        progress = {"auto": None, "bar": True, "log": False}[args.progress]
        report = generate_openmm_md(spec, args.out, command=command, progress=progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s + %s: %d atoms, %d frames; %.2f ms/step (%.2f ns/day); production %.1f s", report.output,
             report.topology, report.n_atoms, report.n_frames, report.ms_per_step, report.ns_per_day,
             report.seconds["production"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
