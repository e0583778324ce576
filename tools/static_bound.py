#!/usr/bin/env python
"""How far below the history mean a forecast that ignores the motion can get on protocol A's test starts.

The history mean (the mean of the observed frames, repeated at every lead time) is the forecast to beat
once the motion has lost its phase. The best structure to place there instead is the mean structure of the
very frames being forecast: this tool takes the mean structure (superposed, asteroid_hpc.geometry.
superposed_mean) of the test stretch itself, every ``--a-history-stride``-th frame of ``--frames`` (an
**oracle**: it reads the test frames; nothing here trains or tunes anything), superposes it onto each start's
history mean (Kabsch: position and orientation from the history) and scores it like `evaluate --protocol A`.
A forecast that adds no dynamics beyond where the molecule is and which structure it keeps cannot do better;
one that does must predict the motion itself. ``--structure-frames LO HI`` takes the structure from other
frames instead (e.g. the last training frames: a static forecast, not an oracle).

    python tools/static_bound.py data/xtb-md17/aspirin.nc --a-history-stride 75 --frames 39675 60000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

STRUCTURE = "mean structure on the history mean"

def static_bound(path: Path, history_frames: int, a_history_stride: int, frames: tuple[int, int],
                 structure_frames: tuple[int, int] | None = None) -> dict:
    from asteroid_hpc.evaluation.protocols import heavy_atoms, protocol_a
    from asteroid_hpc.evaluation.trajectory import load_trajectory
    from asteroid_hpc.geometry import kabsch_superpose, superposed_mean
    from asteroid_hpc.metrics.errors import mse_per_lead_time

    traj = load_trajectory(path)
    samples = protocol_a(traj, split="test", history_frames=history_frames, history_stride_frames=a_history_stride,
                         frame_range=frames)
    history, target = samples.history.astype(np.float64), samples.target.astype(np.float64)
    heavy = heavy_atoms(traj.atomic_numbers, traj.source)  # the atoms protocol A scores
    lo, hi = structure_frames or frames
    structure = superposed_mean(traj.positions[lo:hi:a_history_stride][:, heavy])
    history_mean = history.mean(axis=1)
    placed = kabsch_superpose(np.broadcast_to(structure, history_mean.shape), history_mean)
    leads = target.shape[1]
    scores = {}
    for name, forecast in (("history mean", history_mean), (STRUCTURE, placed)):
        per_lead = mse_per_lead_time(np.repeat(forecast[:, None], leads, axis=1), target)
        scores[name] = {"s2s": float(per_lead[-1]), "s2t": float(per_lead.mean())}
    base, best = scores["history mean"], scores[STRUCTURE]
    return {"trajectory": str(path), "frames": list(frames), "structure_frames": [lo, hi],
            "oracle": structure_frames is None, "starts": int(len(history)), "scores": scores,
            "below_history_mean": {k: 1.0 - best[k] / base[k] for k in ("s2s", "s2t")}}


def main(argv: list[str] | None = None) -> int:
    from asteroid_hpc.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trajectory", type=Path)
    parser.add_argument("--frames", type=int, nargs=2, required=True, metavar=("LO", "HI"),
                        help="the test stretch [LO, HI), as evaluate.a_frames")
    parser.add_argument("--structure-frames", type=int, nargs=2, metavar=("LO", "HI"),
                        help="take the mean structure from frames [LO, HI) instead of the test stretch")
    parser.add_argument("--history-frames", type=int, default=10)
    parser.add_argument("--a-history-stride", type=int, default=75, help="as given to `evaluate`")
    parser.add_argument("-o", "--output", type=Path, help="JSON report")
    args = parser.parse_args(argv)
    try:
        report = static_bound(args.trajectory, args.history_frames, args.a_history_stride, tuple(args.frames),
                              None if args.structure_frames is None else tuple(args.structure_frames))
    except UserError as exc:
        print(f"static_bound: error: {exc}", file=sys.stderr)
        return 2
    for name, score in report["scores"].items():
        print(f"{name:35s} S2S {100 * score['s2s']:.3f}  S2T {100 * score['s2t']:.3f}  (x1e-2 A^2)")
    below, what = report["below_history_mean"], "the oracle" if report["oracle"] else "the structure"
    print(f"{report['starts']} starts; {what} is {100 * below['s2s']:.1f} % (S2S) / {100 * below['s2t']:.1f} % (S2T) "
          f"below the history mean")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
