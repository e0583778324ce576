"""The leading frames of a trajectory that no protocol A, B or C evaluation window touches.

Protocols A and B draw their starts from [margin : −margin] and C holds out the last 40 % chronologically,
so frames [0, margin − history span) are never inside an A/B window (of any split) nor a C val/test window.
Training on them leaves every reported number free of overlap with the training frames.

    python -m asteroid_hpc.evaluation.holdout traj.nc train_part.nc --history-frames 10 --a-history-stride 75
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from .protocols import (A_DELTA_T_FRAMES, A_MARGIN_FRAMES, B_STRIDE_FRAMES, C_STRIDE_FRAMES, chronological_bounds,
                        protocol_a_stride, random_start_plan, to_file_frames)


def clean_prefix_frames(n_frames: int, frame_fs: float, history_frames: int, a_history_stride_frames: int) -> int:
    """Number of leading frames outside every A/B window and every C val/test window."""
    a_stride = protocol_a_stride(a_history_stride_frames, frame_fs)
    b_stride = to_file_frames(B_STRIDE_FRAMES, frame_fs, "protocol B's stride")
    plan = random_start_plan(n_frames, before_frames=(history_frames - 1) * max(a_stride, b_stride),
                             after_frames=to_file_frames(A_DELTA_T_FRAMES, frame_fs, "protocol A's ΔT"),
                             margin_frames=to_file_frames(A_MARGIN_FRAMES, frame_fs, "protocol A's margin"))
    first_ab_frame = plan.margin_frames - (history_frames - 1) * max(a_stride, b_stride)
    c_stride = to_file_frames(C_STRIDE_FRAMES, frame_fs, "protocol C's downsampling")
    first_c_heldout = chronological_bounds((n_frames - 1) // c_stride + 1)["val"][0] * c_stride
    return max(0, min(first_ab_frame, first_c_heldout))


def main(argv: list[str] | None = None) -> int:
    from ..data.amber import AmberWriter
    from .trajectory import load_trajectory

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
