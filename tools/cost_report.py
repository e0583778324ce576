#!/usr/bin/env python
"""CPU seconds per forecast frame of an ASTEROID model against the GFN2-xTB MD steps that frame replaces.

Both are measured in this run, on one CPU thread each: tblite GFN2-xTB + ASE velocity Verlet on the same
molecule (stride steps per frame, which also give the model its history), then the model's forecast.
Prints a table (per frame and per simulated picosecond) and writes it as JSON.

For the periodic systems of tools/gen_openmm_md.py (``water``, ``villin``) the reference is OpenMM on the same
system (its CPU platform, one thread), reported as simulated ns per day; the model forecasts from the end of
``--trajectory`` (with ``--topology``), and ``--md-steps`` are OpenMM steps.

Examples:
  python tools/cost_report.py model.safetensors aspirin --stride 10 -o cost/aspirin.json
  python tools/cost_report.py model.safetensors ethanol --stride 10 --frames 100 --batch-size 8 -o cost/ethanol.json
  python tools/cost_report.py water-model water --trajectory water.dcd --topology water.pdb -o cost/water.json
"""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/tblite/torch load
    os.environ[_name] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from bench_harness import write_report  # noqa: E402


PERIODIC_SYSTEMS = ("water", "villin")


def _molecule(args):
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.cost import measure_cost

    if args.stride is None or args.stride < 1:
        raise UserError("--stride (MD steps per forecast frame) is required for a molecule and must be positive")
    return measure_cost(args.model, args.molecule, stride_steps=args.stride, timestep_fs=args.timestep_fs,
                        forecast_frames=args.frames, batch_size=args.batch_size, repeats=args.repeats,
                        min_md_steps=args.md_steps)


def _periodic(args):
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.cost_periodic import measure_periodic_cost

    if args.trajectory is None:
        raise UserError(f"{args.molecule}: --trajectory (and --topology) give the system the forecast starts from")
    return measure_periodic_cost(args.model, args.molecule, args.trajectory, args.topology,
                                 openmm_steps=args.md_steps, forecast_frames=args.frames, batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.cli.common import MODEL_HELP
    from asteroid_hpc.logs import setup_logging
    from asteroid_hpc.runtime.launch import detect_launch
    from asteroid_hpc.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("molecule", help="an MD17 molecule name (aspirin, ethanol, ...), or water / villin")
    parser.add_argument("--stride", type=int, help="MD steps per forecast frame (the model's frame stride; molecules)")
    parser.add_argument("--trajectory", help="periodic systems: the trajectory the forecast starts from")
    parser.add_argument("--topology", help="periodic systems: its topology (bonds)")
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=50, help="forecast frames timed")
    parser.add_argument("--batch-size", type=int, default=1, help="trajectories forecast together")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--md-steps", type=int, default=200, help="GFN2-xTB (or OpenMM) steps timed (at least)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON report")
    args = parser.parse_args(argv)
    setup_logging(detect_launch())
    try:
        if min(args.frames, args.batch_size, args.repeats, args.md_steps) < 1 or args.timestep_fs <= 0:
            raise UserError("--frames, --batch-size, --repeats, --md-steps and --timestep-fs must be positive")
        report = _periodic(args) if args.molecule in PERIODIC_SYSTEMS else _molecule(args)
    except UserError as exc:
        print(f"cost_report: error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_report(report.as_dict(), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
