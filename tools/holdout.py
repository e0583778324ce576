#!/usr/bin/env python
"""Write the leading frames of a trajectory that no protocol A, B or C evaluation window touches (the
clean prefix, asteroid_hpc.evaluation.holdout) to an AMBER NetCDF file, to train on without overlap.

Examples:
  python tools/holdout.py traj.nc train_part.nc --history-frames 10 --a-history-stride 75
"""

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.data.amber import AmberWriter
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.evaluation.holdout import clean_prefix_frames
    from asteroid_hpc.evaluation.trajectory import load_trajectory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trajectory", type=Path)
    parser.add_argument("output", type=Path, help="AMBER NetCDF file of the clean leading frames")
    parser.add_argument("--history-frames", type=int, required=True, help="the model's history frames")
    parser.add_argument("--a-history-stride", type=int, default=375, help="as given to `evaluate`")
    args = parser.parse_args(argv)
    try:
        traj = load_trajectory(args.trajectory)
        stop = clean_prefix_frames(len(traj.positions), traj.frame_fs, args.history_frames, args.a_history_stride)
        if stop < 2:
            raise UserError(f"{args.trajectory}: no frames lie outside the evaluation windows")
        with AmberWriter(args.output, n_atoms=traj.positions.shape[1], atomic_numbers=traj.atomic_numbers,
                         timestep_ps=traj.frame_fs / 1000.0,
                         attributes={"source": str(args.trajectory), "source_frames": f"0:{stop}"}) as writer:
            writer.append(traj.positions[:stop], np.arange(stop) * traj.frame_fs / 1000.0)
    except UserError as exc:
        print(f"holdout: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: frames 0:{stop} of {len(traj.positions)} ({stop * traj.frame_fs / 1000.0:g} ps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
