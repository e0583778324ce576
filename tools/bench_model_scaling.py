#!/usr/bin/env python
"""Forward time and peak memory of ASTEROID's local-global model versus atom count, on CPU.

Each size runs in its own process (so peak RSS is that size's own): a random open box at liquid-argon
density (0.021 atoms/Å^3) whose atoms jitter by ~0.02 Å per frame, a small model, one inference pass
(horizon L−1, neighbour list built inside the forward from the last frame with cKDTree). Reports the
median forward wall and CPU time over repeats (CPU time is the steadier number on a shared machine), the neighbour-search share, the peak RSS increase during the forward,
and time(2N)/time(N) for every doubling among the sizes.

    python tools/bench_model_scaling.py --out bench_model_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench_harness import add_out_argument, peak_rss_mb, time_call, write_report

DEFAULT_SIZES = [1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000]


def measure(n_atoms: int, args: argparse.Namespace) -> dict:
    import psutil
    import torch

    from asteroid_hpc.config.schema import ModelConfig
    from asteroid_hpc.model import build_model, radius_graph
    from asteroid_hpc.model.summary import probe_system

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(history_frames=args.history, delay_length=args.delay, hidden_size=args.hidden,
                      num_heads=args.heads, encoder_layers=args.layers, decoder_layers=args.layers,
                      attention="local_global", cutoff_angstrom=args.cutoff, max_neighbors=args.max_neighbors,
                      num_global_tokens=args.global_tokens, num_rbf=8, symmetry=args.symmetry)
    model = build_model(cfg).eval()
    history, elements = probe_system(n_atoms, cfg.history_frames)
    steps = cfg.delay_length - 1
    graph = radius_graph(history[:, -1], cfg.cutoff_angstrom, cfg.max_neighbors)
    mean_neighbors = float(graph.mask.sum(-1).float().mean())
    baseline_rss = psutil.Process().memory_info().rss
    times, cpu_times, graph_times = [], [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            graph_times.append(time_call(lambda: radius_graph(history[:, -1], cfg.cutoff_angstrom,
                                                              cfg.max_neighbors))[0])
            wall, cpu = time_call(lambda: model(history, elements, steps))
            times.append(wall)
            cpu_times.append(cpu)
    peak_rss = peak_rss_mb()
    return {
        "n_atoms": n_atoms,
        "forward_s": statistics.median(times),
        "forward_cpu_s": statistics.median(cpu_times),
        "neighbor_search_s": statistics.median(graph_times),
        "peak_rss_increase_MB": peak_rss - baseline_rss / 2**20,
        "peak_rss_MB": peak_rss,
        "mean_neighbors": mean_neighbors,
        "forecast_frames": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=1, help="encoder and decoder layers each")
    parser.add_argument("--history", type=int, default=4)
    parser.add_argument("--delay", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=5.0, help="cutoff_angstrom")
    parser.add_argument("--max-neighbors", type=int, default=16)
    parser.add_argument("--global-tokens", type=int, default=4)
    parser.add_argument("--symmetry", default="equivariant", choices=["equivariant", "augment"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    add_out_argument(parser)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return
    passthrough = [a for a in sys.argv[1:]]
    if "--out" in passthrough:
        i = passthrough.index("--out")
        del passthrough[i:i + 2]
    results = []
    for n_atoms in args.sizes:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run([sys.executable, __file__, *passthrough, "--child", str(n_atoms)],
                              capture_output=True, text=True, env=env, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"N={n_atoms:>7}  forward {row['forward_s']:8.3f} s wall, {row['forward_cpu_s']:8.3f} s CPU  (neighbour search {row['neighbor_search_s']:.3f} s)"
              f"  peak RSS +{row['peak_rss_increase_MB']:8.1f} MB  mean neighbours {row['mean_neighbors']:.1f}",
              flush=True)
    by_size = {row["n_atoms"]: row for row in results}
    ratios = {f"{n}->{2 * n}": {key: by_size[2 * n][key] / by_size[n][key] for key in ("forward_s", "forward_cpu_s")}
              for n in sorted(by_size) if 2 * n in by_size}
    for pair, ratio in ratios.items():
        print(f"time(2N)/time(N) for N {pair}: wall {ratio['forward_s']:.2f}, CPU {ratio['forward_cpu_s']:.2f}")
    write_report({"settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
                  "results": results, "doubling_ratios": ratios}, args.out)


if __name__ == "__main__":
    main()
