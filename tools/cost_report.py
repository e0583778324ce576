#!/usr/bin/env python
"""CPU seconds per forecast frame of an ASTEROID model against the GFN2-xTB MD steps that frame replaces.

Both are measured in this run, on one CPU thread each: tblite GFN2-xTB + ASE velocity Verlet on the same
molecule (stride steps per frame, which also give the model its history), then the model's forecast at each
``--batch-size`` (``auto``: the batch ``ensemble-forecast`` would choose for the system). Prints a table (per
frame and per simulated picosecond) and writes it as JSON. The process keeps freed memory as
``ensemble-forecast`` does by default (``ensemble.keep_freed_memory``), so the forecast is timed as it runs there.

Instead of a trained MODEL, ``--config FILE`` times the model of that config's ``model:`` section with
untrained weights (a forecast's cost depends on the architecture, atoms and batch, not on the weight
values): the model sees the config's ``data.atom_selection`` of the molecule, and the report says
"architecture of FILE, untrained weights: timing only".

For the periodic systems of tools/gen_openmm_md.py (``water``, ``villin``) the reference is OpenMM on the same
system (its CPU platform, one thread), reported as simulated ns per day; the model forecasts from the end of
``--trajectory`` (with ``--topology``), and ``--md-steps`` are OpenMM steps.

Examples:
  python tools/cost_report.py model.safetensors aspirin --stride 10 -o cost/aspirin.json
  python tools/cost_report.py model.safetensors ethanol --stride 10 --frames 100 --batch-size 8 -o cost/ethanol.json
  python tools/cost_report.py --config configs/results/aspirin-a.yaml aspirin --stride 75 --batch-size 1 auto -o a.json
  python tools/cost_report.py --config configs/results/aspirin-c.yaml aspirin --stride 10 --batch-size auto \
      --compile -o c.json   # the blocks compiled, as ensemble.compile=true runs them
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


def _batch_sizes(values: list[str]) -> list[int]:
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.cost import AUTO_BATCH

    if not all(v == "auto" or (v.isdigit() and int(v) >= 1) for v in values):
        raise UserError(f"--batch-size takes positive integers or 'auto', got {' '.join(values)}")
    return [AUTO_BATCH if v == "auto" else int(v) for v in values]


def _ensemble_batch(model_cfg, n_atoms: int) -> int:
    """The members per batch ``ensemble-forecast`` chooses for this system (of a full batch of members)."""
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.sizing import MAX_AUTO_BATCH, batch_members

    return batch_members(EnsembleConfig(), model_cfg, n_atoms, MAX_AUTO_BATCH)


def _model(args):
    """The weights MODEL, or the --config architecture (untrained); exactly one of them."""
    from asteroid_hpc.config.load import load_config
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.cost import ConfigArchitecture

    if (args.model is None) == (args.config is None):
        raise UserError("give a MODEL (trained weights) or --config FILE (its architecture, untrained), not both"
                        if args.model else "give a MODEL (trained weights) or --config FILE")
    if args.config is None:
        return args.model
    if args.molecule in PERIODIC_SYSTEMS:
        raise UserError("--config times MD17 molecules only; give the periodic system's MODEL")
    return ConfigArchitecture(load_config(args.config), str(args.config))


def _molecule(args, model):
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.cost import measure_cost

    if args.stride is None or args.stride < 1:
        raise UserError("--stride (MD steps per forecast frame) is required for a molecule and must be positive")
    return measure_cost(model, args.molecule, stride_steps=args.stride, timestep_fs=args.timestep_fs,
                        forecast_frames=args.frames, batch_sizes=_batch_sizes(args.batch_size),
                        repeats=args.repeats, min_md_steps=args.md_steps, auto_batch=_ensemble_batch,
                        compiled=args.compile)


def _periodic(args, model):
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.cost_periodic import measure_periodic_cost

    if args.trajectory is None:
        raise UserError(f"{args.molecule}: --trajectory (and --topology) give the system the forecast starts from")
    sizes = _batch_sizes(args.batch_size)
    if len(sizes) != 1 or sizes[0] < 1:
        raise UserError(f"{args.molecule}: one integer --batch-size for a periodic system")
    return measure_periodic_cost(model, args.molecule, args.trajectory, args.topology,
                                 openmm_steps=args.md_steps, forecast_frames=args.frames, batch_size=sizes[0])


def _allocator_as_ensembles_run() -> None:
    """Freed memory kept, as ``ensemble-forecast`` runs by default (``ensemble.keep_freed_memory``): without
    it every forecast pass page-faults its large intermediates anew."""
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.runtime.allocator import keep_freed_memory

    if EnsembleConfig().keep_freed_memory:
        keep_freed_memory()


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.cli.common import MODEL_HELP
    from asteroid_hpc.logs import setup_logging
    from asteroid_hpc.runtime.launch import detect_launch
    from asteroid_hpc.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help=MODEL_HELP + " (or --config instead)")
    parser.add_argument("molecule", help="an MD17 molecule name (aspirin, ethanol, ...), or water / villin")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="time the model of this config's model: section with untrained weights instead of a "
                             "MODEL (timing only; molecules)")
    parser.add_argument("--stride", type=int, help="MD steps per forecast frame (the model's frame stride; molecules)")
    parser.add_argument("--trajectory", help="periodic systems: the trajectory the forecast starts from")
    parser.add_argument("--topology", help="periodic systems: its topology (bonds)")
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=50, help="forecast frames timed")
    parser.add_argument("--batch-size", nargs="+", default=["1"], metavar="B",
                        help="trajectories forecast together; several are timed in turn; 'auto': the batch "
                             "ensemble-forecast chooses for the system (molecules)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--md-steps", type=int, default=200, help="GFN2-xTB (or OpenMM) steps timed (at least)")
    parser.add_argument("--compile", action="store_true",
                        help="the model's blocks through torch.compile, as ensemble.compile=true runs them "
                             "(molecules; the compiling first call is untimed, its wall time reported)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSON report")
    args = parser.parse_intermixed_args(argv)  # MODEL and MOLECULE may sit on either side of options
    setup_logging(detect_launch())
    try:
        if min(args.frames, args.repeats, args.md_steps) < 1 or args.timestep_fs <= 0:
            raise UserError("--frames, --repeats, --md-steps and --timestep-fs must be positive")
        model = _model(args)
        _allocator_as_ensembles_run()
        report = _periodic(args, model) if args.molecule in PERIODIC_SYSTEMS else _molecule(args, model)
    except UserError as exc:
        print(f"cost_report: error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_report(report.as_dict(), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
