#!/usr/bin/env python
"""Cost of unwrapping a periodic trajectory (asteroid_hpc.data.unwrap) at 10^5 atoms, on one CPU thread.

A synthetic water box (3-atom molecules with their two bonds) at liquid density (0.1 atoms/Å^3) in a
truncated octahedron, every atom at a random periodic image in every frame: the spanning forest of the
bonds (once per source), making the first frame whole, then the frame-to-frame unwrap of chunks of
``--chunk`` frames (pass 2, ``__call__``) and the same without output (pass 1, ``advance``), per frame.

    python tools/bench_unwrap.py --atoms 100000 --chunk 13 --repeats 5
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench_harness import add_out_argument, peak_rss_mb, summary, time_calls, write_report  # noqa: E402


def water_box(n_molecules: int, n_frames: int, seed: int = 0):
    from asteroid_hpc.data.unwrap import cell_vectors

    rng = np.random.default_rng(seed)
    edge = (3 * n_molecules / 0.1 / 0.7698) ** (1 / 3)  # truncated octahedron volume 0.7698 a^3
    box = np.array([edge, edge, edge, 109.4712206, 109.4712206, 109.4712206])
    h = cell_vectors(box)
    centres = rng.random((n_molecules, 3)) @ h
    shape = np.array([[0, 0, 0], [0.957, 0, 0], [-0.24, 0.927, 0]])
    x0 = (centres[:, None, :] + shape[None]).reshape(-1, 3)
    steps = rng.normal(scale=0.2, size=(n_frames, len(x0), 3))
    steps[0] = 0
    images = rng.integers(-1, 2, size=(n_frames, len(x0), 3))
    frames = (x0 + np.cumsum(steps, axis=0) + images @ h).astype(np.float32)
    first = 3 * np.arange(n_molecules)
    bonds = np.concatenate([np.stack([first, first + 1], 1), np.stack([first, first + 2], 1)])
    return frames, np.tile(box, (n_frames, 1)), bonds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=100000)
    parser.add_argument("--chunk", type=int, default=13, help="frames per chunk (13: preprocess's 32 MiB cap "
                                                              "of float64 frames at 10^5 atoms)")
    parser.add_argument("--repeats", type=int, default=5)
    add_out_argument(parser)
    args = parser.parse_args()

    from asteroid_hpc.data.unwrap import Unwrapper, spanning_parents

    frames, cells, bonds = water_box(args.atoms // 3, args.chunk + 1)
    n = frames.shape[1]
    tree = time_calls(lambda: spanning_parents(n, bonds), args.repeats)
    whole = time_calls(lambda: Unwrapper(n, bonds)(frames[:1], cells[:1]), args.repeats)

    def chunk(output: bool):
        u = Unwrapper.after(frames[0])
        return (u if output else u.advance)(frames[1:], cells[1:])

    calls = time_calls(lambda: chunk(True), args.repeats, warmup=1)
    advances = time_calls(lambda: chunk(False), args.repeats, warmup=1)
    per_frame = {name: {k: v / args.chunk if k.endswith("_s") else v for k, v in summary(t).items()}
                 for name, t in (("unwrap (pass 2)", calls), ("advance (pass 1)", advances))}
    write_report({"atoms": n, "bonds": len(bonds), "chunk_frames": args.chunk, "threads": 1,
                  "spanning_forest": summary(tree), "first_frame_whole_incl_forest": summary(whole),
                  "per_frame": per_frame, "peak_rss_mb_incl_synthetic_data": peak_rss_mb()},
                 args.out)


if __name__ == "__main__":
    main()
