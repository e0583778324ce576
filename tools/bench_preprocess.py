#!/usr/bin/env python
"""Benchmark `asteroid-hpc preprocess` against a plain netCDF4 read-and-write of the same file.

Writes a synthetic AMBER trajectory (random walk, float32) with the project's AmberWriter, then, in one
run and alternating, times
  - plain: a subprocess that reads `coordinates` and `time` in chunks with netCDF4 and writes them to a
    new classic-format file (no checks, no centring, no checksums);
  - preprocess: `python -m asteroid_hpc preprocess INPUT -o OUT` (all frames in one split, so every
    frame is read, checked, centred, written, checksummed and counted in the statistics);
and reports throughput preprocess ÷ plain, the peak RSS of the preprocess process (ru_maxrss), and
optionally the same run with data.compression=zlib (time and size). Files are deleted at the end.

    python tools/bench_preprocess.py --frames 180000 --atoms 1000        # ~2.2 GB trajectory, 5 pairs
    python tools/bench_preprocess.py --frames 20000 --atoms 500 --zlib   # quick, with compression
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_harness import add_out_argument, peak_rss_mb, run_timed, write_report

PLAIN_COPY = """
import sys, netCDF4
src, dst, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
with netCDF4.Dataset(src) as a, netCDF4.Dataset(dst, "w", format="NETCDF3_64BIT_OFFSET") as b:
    a.set_auto_mask(False)
    n, atoms, _ = a["coordinates"].shape
    b.createDimension("frame", None); b.createDimension("atom", atoms); b.createDimension("spatial", 3)
    c = b.createVariable("coordinates", "f4", ("frame", "atom", "spatial"))
    t = b.createVariable("time", "f4", ("frame",))
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        c[i:j] = a["coordinates"][i:j]
        t[i:j] = a["time"][i:j]
"""


def make_trajectory(path: Path, n_frames: int, n_atoms: int, chunk: int = 2000) -> None:
    from asteroid_hpc.data.amber import AmberWriter

    rng = np.random.default_rng(0)
    position = rng.normal(size=(n_atoms, 3)).astype(np.float32) * 10
    with AmberWriter(path, n_atoms, np.full(n_atoms, 18), timestep_ps=0.002) as writer:
        for start in range(0, n_frames, chunk):
            steps = rng.standard_normal((min(chunk, n_frames - start), n_atoms, 3), dtype=np.float32) * 0.01
            frames = position + np.cumsum(steps, axis=0)
            position = frames[-1]
            writer.append(frames)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.nc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--atoms", type=int, default=500)
    parser.add_argument("--chunk-frames", type=int, default=1024, help="frames per read (both runs)")
    parser.add_argument("--frames-per-shard", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--zlib", action="store_true", help="also time data.compression=zlib")
    parser.add_argument("--workdir", default=None, help="directory for the files (default: a new one in /tmp)")
    add_out_argument(parser)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "input.nc"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        t0 = time.perf_counter()
        make_trajectory(source, args.frames, args.atoms)
        os.sync()  # settle the input's write-back before timing anything
        size = source.stat().st_size
        print(f"input: {args.frames} frames x {args.atoms} atoms = {size / 1e9:.2f} GB, written in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        preprocess = [sys.executable, "-m", "asteroid_hpc", "preprocess", str(source), "--no-progress",
                      "data.split_fractions=[1,0,0]", f"data.chunk_frames={args.chunk_frames}",
                      f"data.frames_per_shard={args.frames_per_shard}"]
        plain, pre = [], []
        # untimed warm-up: the first copy after writing the input runs up to 2x slower (CPU time too)
        run_timed([sys.executable, "-c", PLAIN_COPY, str(source), str(work / "plain.nc"), str(args.chunk_frames)], env)
        (work / "plain.nc").unlink()
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            plain.append(run_timed([sys.executable, "-c", PLAIN_COPY, str(source), str(work / "plain.nc"),
                                str(args.chunk_frames)], env))
            (work / "plain.nc").unlink()
            pre.append(run_timed(preprocess + ["-o", str(work / "ds")], env))
            out_bytes = dir_bytes(work / "ds")
            shutil.rmtree(work / "ds")
        plain_s, pre_s = [w for w, _ in plain], [w for w, _ in pre]
        result = {
            "frames": args.frames, "atoms": args.atoms, "input_gb": size / 1e9,
            "chunk_frames": args.chunk_frames, "frames_per_shard": args.frames_per_shard,
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "plain_s": plain_s, "preprocess_s": pre_s,
            "plain_cpu_s": [c for _, c in plain], "preprocess_cpu_s": [c for _, c in pre],
            "plain_mb_per_s": size / 1e6 / min(plain_s), "preprocess_mb_per_s": size / 1e6 / min(pre_s),
            "throughput_ratio_best": min(plain_s) / min(pre_s),
            "throughput_ratio_median": float(np.median(np.array(plain_s) / np.array(pre_s))),
            "cpu_time_ratio_best": min(c for _, c in plain) / min(c for _, c in pre),
            "peak_rss_mb_max_over_children": peak_rss_mb(children=True), "output_gb": out_bytes / 1e9,
        }
        if args.zlib:
            zlib_s, _ = run_timed(preprocess + ["-o", str(work / "dsz"), "data.compression=zlib"], env)
            result.update(zlib_s=zlib_s, zlib_output_gb=dir_bytes(work / "dsz") / 1e9,
                          zlib_size_ratio=out_bytes / dir_bytes(work / "dsz"))
            shutil.rmtree(work / "dsz")
        write_report(result, args.out)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            source.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
