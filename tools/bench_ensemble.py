#!/usr/bin/env python
"""Ensemble-forecast benchmark on OpenMM Lennard-Jones argon boxes (real `asteroid-hpc ensemble-forecast` runs).

1. Scaling: time per forecast frame of one member for N atoms (default 1e4 … 2e5), 1 rank, median over
   rounds that visit every size in turn; time(2N)/time(N) of the medians.
2. Memory: peak RSS of one member for two horizons (it must not grow with the horizon).
3. Members: wall time of 8 members on 2 ranks (mpiexec -n 2, 1 thread each) / 1 rank (2 threads, and 1 thread).
4. Domains: one large member on 2 ranks by domain decomposition (--grid 1x2) / 1 rank.
5. Batched members: members/s of the demo-size model (configs/demo.yaml) on an aspirin-size molecule
   (21 atoms), 1 rank 1 thread, ensemble.batch_members=1 / =B (``--batched-only`` runs just this, ~1 min).

Times are the forecast wall time the run records in summary.json (model loading and the summary excluded).
Boxes are generated once into --data-dir (OpenMM, 4 frames = the bench model's window).

``--periodic``: every system of 1-4 is instead a periodic water box (rigid TIP3P-geometry waters on a
jittered cubic lattice at liquid-water density, 0.1 atoms/Å³, the cell in every frame, atoms wrapped into
the box one by one so molecules straddle the faces): minimum-image neighbour lists, periodic halos across
the faces with --grid 1x2, member files with cells (wrapped per atom: no topology). Synthetic structure,
real costs: the timing depends on the atom density and the cutoff, not on the water's physics.

    python tools/bench_ensemble.py --out bench_ensemble.json
    python tools/bench_ensemble.py --sizes 10000 20000 --members-atoms 2000 --skip-domains
    python tools/bench_ensemble.py --batched-only --out bench_batched.json
    python tools/bench_ensemble.py --periodic --sizes 50000 100000 200000 --out bench_ensemble_periodic.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_harness import add_out_argument, write_report

BENCH_MODEL = dict(history_frames=4, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=1, decoder_layers=1,
                   attention="local_global", cutoff_angstrom=5.0, max_neighbors=16, num_global_tokens=4, num_rbf=8,
                   symmetry="equivariant")
CHILD_CODE = """
import resource, sys
from asteroid_hpc.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    if exit.code:
        raise
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def ensure_argon_box(data_dir: Path, n_atoms: int, frames: int) -> Path:
    from asteroid_hpc.datagen.lj import LIQUID_ARGON_TEMPERATURE_K, lj_argon_box, write_lj_box

    path = data_dir / f"argon_{n_atoms}.nc"
    if not path.exists():
        box = lj_argon_box(n_atoms, frames, seed=0, equilibration_steps=200, stride=20)
        write_lj_box(path, box, seed=0, temperature_K=LIQUID_ARGON_TEMPERATURE_K)
        print(f"generated {path}: {n_atoms} atoms, OpenMM {box.ms_per_step:.1f} ms/step", flush=True)
    return path


WATER_SPACING_ANGSTROM = 3.104  # one water per 29.9 Å³: 0.1003 atoms/Å³, liquid water at 300 K
WATER_GEOMETRY = ((0.0, 0.0, 0.0), (0.9572, 0.0, 0.0), (-0.2400, 0.9266, 0.0))  # TIP3P O, H, H (Å)


def ensure_water_box(data_dir: Path, n_atoms: int, frames: int) -> Path:
    """A periodic water box of about ``n_atoms`` atoms (a lattice of nx × n × n waters, nx closest to the
    count: within 1/nx of it), ``frames`` frames."""
    import numpy as np

    from asteroid_hpc.data.amber import AmberWriter

    side = max(4, round((n_atoms / 3) ** (1 / 3)))
    lattice = (max(4, round(n_atoms / 3 / side ** 2)), side, side)
    path = data_dir / f"water_{n_atoms}.nc"
    if not path.exists():
        rng = np.random.default_rng(0)
        n_waters, edges = int(np.prod(lattice)), np.asarray(lattice) * WATER_SPACING_ANGSTROM
        sites = np.stack(np.meshgrid(*[np.arange(n) * WATER_SPACING_ANGSTROM for n in lattice], indexing="ij"),
                         -1).reshape(-1, 3) + rng.normal(scale=0.1, size=(n_waters, 3))
        turns = np.linalg.qr(rng.normal(size=(n_waters, 3, 3)))[0]
        molecules = (sites[:, None] + np.asarray(WATER_GEOMETRY) @ turns.transpose(0, 2, 1)).reshape(-1, 3)
        coords = molecules + np.cumsum(rng.normal(scale=0.02, size=(frames, 3 * n_waters, 3)), axis=0)
        coords -= np.floor(coords / edges) * edges  # each atom into the box on its own
        with AmberWriter(path, 3 * n_waters, np.tile([8, 1, 1], n_waters), timestep_ps=0.01, cell=True) as writer:
            writer.append(coords.astype(np.float32), cell_lengths=np.tile(edges, (frames, 1)),
                          cell_angles=np.full((frames, 3), 90.0))
        print(f"generated {path}: {3 * n_waters} atoms in a periodic box of {' x '.join(f'{e:.1f}' for e in edges)} A",
              flush=True)
    return path


def ensure_model(data_dir: Path) -> Path:
    import torch

    from asteroid_hpc.config.schema import ModelConfig
    from asteroid_hpc.model import Asteroid, save_weights

    path = data_dir / "bench_model.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_weights(Asteroid(ModelConfig(**BENCH_MODEL)), path)
    return path


def forecast(model: Path, initial: Path, outdir: Path, *settings: str, ranks: int = 1, threads: int = 1) -> dict:
    """One ensemble-forecast run in fresh processes; returns summary.json plus the peak RSS of rank 0."""
    shutil.rmtree(outdir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, "-c", CHILD_CODE, "ensemble-forecast", str(model), str(initial), "-o", str(outdir),
               *settings]
    if ranks > 1:
        command = ["mpiexec", "-n", str(ranks), *command]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((outdir / "summary.json").read_text())
    peaks = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    return {"forecast_s": summary["forecast_wall_seconds"], "process_wall_s": time.perf_counter() - started,
            "atoms": summary["n_atoms"],
            "peak_rss_mb_max_rank": max(peaks) / 1024 if peaks else None}


def ensure_demo_model(data_dir: Path) -> Path:
    import torch

    from asteroid_hpc.config import load_config
    from asteroid_hpc.model import build_model, save_weights

    path = data_dir / "demo_model.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", [])
        save_weights(build_model(cfg), path)
    return path


def ensure_molecule(data_dir: Path, n_atoms: int, frames: int) -> Path:
    """A molecule-size cluster (atoms ~1.5 Å apart) vibrating around fixed positions, H/C/O."""
    import numpy as np

    from asteroid_hpc.data.amber import AmberWriter

    path = data_dir / f"molecule_{n_atoms}.nc"
    if not path.exists():
        rng = np.random.default_rng(0)
        base = rng.normal(scale=1.5, size=(n_atoms, 3))
        t = np.arange(frames)[:, None, None]
        coords = base + 0.05 * np.sin(0.7 * t + rng.uniform(0, 2 * np.pi, size=(n_atoms, 3)))
        with AmberWriter(path, n_atoms, rng.choice([1, 6, 8], size=n_atoms), timestep_ps=0.005) as writer:
            writer.append(coords.astype(np.float32))
    return path


def batched_members(args, runs: Path) -> dict:
    """Members/s at batch 1 and batch B, one rank, one thread, the same members and horizon."""
    model, molecule = ensure_demo_model(args.data_dir), ensure_molecule(args.data_dir, args.batched_atoms, 20)
    settings = (f"ensemble.members={args.batched_members}", f"ensemble.horizon_frames={args.batched_horizon}",
                "ensemble.chunk_frames=50")
    rows = {}
    for batch in (1, args.batched_batch):
        row = forecast(model, molecule, runs / f"batched_{batch}", *settings, f"ensemble.batch_members={batch}")
        rows[batch] = {"forecast_s": row["forecast_s"], "members_per_s": args.batched_members / row["forecast_s"],
                       "ms_per_member_frame": 1e3 * row["forecast_s"] / (args.batched_members * args.batched_horizon),
                       "peak_rss_mb": row["peak_rss_mb_max_rank"]}
        print(f"batch {batch}: {rows[batch]}", flush=True)
    return {"n_atoms": args.batched_atoms, "members": args.batched_members, "horizon": args.batched_horizon,
            "by_batch": rows, "speedup": rows[args.batched_batch]["members_per_s"] / rows[1]["members_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000, 50000, 100000, 200000])
    parser.add_argument("--horizon", type=int, default=8, help="frames per scaling run (4 passes of the bench model)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the sizes; medians per size")
    parser.add_argument("--memory-atoms", type=int, default=100000)
    parser.add_argument("--memory-horizons", type=int, nargs=2, default=[4, 44])
    parser.add_argument("--members-atoms", type=int, default=10000)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--members-horizon", type=int, default=4)
    parser.add_argument("--domain-atoms", type=int, default=100000)
    parser.add_argument("--skip-domains", action="store_true")
    parser.add_argument("--batched-only", action="store_true", help="run only the batched-members measurement")
    parser.add_argument("--batched-atoms", type=int, default=21)
    parser.add_argument("--batched-members", type=int, default=64)
    parser.add_argument("--batched-batch", type=int, default=64)
    parser.add_argument("--batched-horizon", type=int, default=40)
    parser.add_argument("--periodic", action="store_true",
                        help="periodic water boxes instead of open argon boxes for scaling, memory, members, domains")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/asteroid-bench-ensemble"))
    add_out_argument(parser)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    runs = args.data_dir / "runs"
    model = ensure_model(args.data_dir)
    frames = BENCH_MODEL["history_frames"]
    report: dict = {"load_average_at_start": os.getloadavg(), "model": BENCH_MODEL, "cpus": os.cpu_count(),
                    "system": "periodic water box" if args.periodic else "open argon box"}
    ensure_box = ensure_water_box if args.periodic else ensure_argon_box
    if args.batched_only:
        report["batched_members"] = batched_members(args, runs)
        report["load_average_at_end"] = os.getloadavg()
        write_report(report, args.out)
        return

    scaling = []
    for round_index in range(args.repeats):  # sizes in turn, round after round: load changes hit every size
        for n_atoms in args.sizes:
            box = ensure_box(args.data_dir, n_atoms, frames)
            row = forecast(model, box, runs / f"scale_{n_atoms}", "ensemble.members=1",
                           f"ensemble.horizon_frames={args.horizon}", "ensemble.chunk_frames=2", threads=1)
            row.update(n_atoms=n_atoms, round=round_index, seconds_per_frame=row["forecast_s"] / args.horizon)
            scaling.append(row)
            print(f"round {round_index} N={n_atoms:>7}: {row['seconds_per_frame']:.3f} s/frame, "
                  f"peak RSS {row['peak_rss_mb_max_rank']:.0f} MB", flush=True)
    by_size = {n: statistics.median(r["seconds_per_frame"] for r in scaling if r["n_atoms"] == n) for n in args.sizes}
    report["scaling"] = scaling
    report["median_seconds_per_frame"] = by_size
    report["doubling_ratios"] = {f"{n}->{2 * n}": by_size[2 * n] / by_size[n] for n in by_size if 2 * n in by_size}
    print("time(2N)/time(N):", report["doubling_ratios"], flush=True)

    box = ensure_box(args.data_dir, args.memory_atoms, frames)
    memory = {}
    for horizon in args.memory_horizons:
        row = forecast(model, box, runs / f"memory_{horizon}", "ensemble.members=1",
                       f"ensemble.horizon_frames={horizon}", "ensemble.chunk_frames=2", threads=1)
        memory[str(horizon)] = row["peak_rss_mb_max_rank"]
    report["memory_peak_rss_mb_by_horizon"] = {"n_atoms": args.memory_atoms, **memory}
    print(f"peak RSS, N={args.memory_atoms}: {memory} MB by horizon", flush=True)

    box = ensure_box(args.data_dir, args.members_atoms, frames)
    settings = (f"ensemble.members={args.members}", f"ensemble.horizon_frames={args.members_horizon}",
                "ensemble.chunk_frames=2")
    one_rank_2t = forecast(model, box, runs / "members_1rank_2threads", *settings, threads=2)
    one_rank_1t = forecast(model, box, runs / "members_1rank_1thread", *settings, threads=1)
    two_ranks = forecast(model, box, runs / "members_2ranks", *settings, ranks=2, threads=1)
    report["members"] = {"n_atoms": args.members_atoms, "members": args.members, "horizon": args.members_horizon,
                         "one_rank_two_threads_s": one_rank_2t["forecast_s"],
                         "one_rank_one_thread_s": one_rank_1t["forecast_s"], "two_ranks_s": two_ranks["forecast_s"],
                         "ratio_two_ranks_over_one_rank_two_threads": two_ranks["forecast_s"] / one_rank_2t["forecast_s"],
                         "ratio_two_ranks_over_one_rank_one_thread": two_ranks["forecast_s"] / one_rank_1t["forecast_s"]}
    print("members:", report["members"], flush=True)

    if not args.skip_domains:
        box = ensure_box(args.data_dir, args.domain_atoms, frames)
        settings = ("ensemble.members=1", f"ensemble.horizon_frames={args.horizon}", "ensemble.chunk_frames=2")
        single = forecast(model, box, runs / "domains_1", *settings, threads=1)
        split = forecast(model, box, runs / "domains_2", *settings, "--grid", "1x2", ranks=2, threads=1)
        report["domains"] = {"n_atoms": args.domain_atoms, "one_rank_s": single["forecast_s"],
                             "two_domains_s": split["forecast_s"], "ratio": split["forecast_s"] / single["forecast_s"],
                             "peak_rss_mb_one_rank": single["peak_rss_mb_max_rank"],
                             "peak_rss_mb_two_domains_max_rank": split["peak_rss_mb_max_rank"]}
        print("domains:", report["domains"], flush=True)
    report["batched_members"] = batched_members(args, runs)
    report["load_average_at_end"] = os.getloadavg()
    write_report(report, args.out)


if __name__ == "__main__":
    main()
