#!/usr/bin/env python
"""Achieved FLOP/s of ASTEROID's forward pass beside this machine's own fp32 matmul FLOP/s, in one run.

Cases (one process each, one thread unless ``--threads``):

- ``aspirin64``: the model RESULTS reports for aspirin (``configs/results/aspirin-a.yaml``: heavy atoms,
  13 of them, full attention, reference structure) on 64 members in one batch — the batched ensemble pass;
- ``1e4`` / ``1e5``: the large-system model of the scaling benchmark (local-global attention, 5 Å cutoff,
  16 channels) on 10^4 / 10^5 atoms at liquid argon's density;
- ``water1e4`` / ``water1e5``: the model RESULTS reports for liquid water (``configs/water.yaml``: local-global,
  32 channels, 4 heads, 16 neighbours within 5 Å) on as many atoms at water's atom density (0.1 per Å³; open
  boundaries: the count and the time of a pass do not depend on the box).

The model's FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one inference pass as an
ensemble runs it (``forecast_only``: no STI outputs; matrix products and attention; element-wise work, gathers
and the neighbour search are not counted, as in the usual "model FLOPs utilisation") by
``asteroid_hpc.model.spatial_reference.count_flops``: the spatial attention in its einsum formulation (every
contraction a counted product; the fast path computes the local ones element-wise, which the counter would
miss) and the temporal attention with torch's attention formula (the
counter has none for the CPU flash kernel: the count before issue #18 item 2 missed it, and is reported
beside as ``model_flops_without_temporal_attention``). Its CPU time is the median of
``--repeats`` passes of the model as it runs (the fast path) under ``torch.inference_mode``.
The reference is ``torch.mm`` of two 1024×1024 fp32 matrices in the same process (2·1024³ FLOPs per call;
the median of ``max(repeats, 5)`` calls before and as many after the model's passes).
Reported: achieved FLOP/s, peak FLOP/s and their ratio (the fraction of peak).

    python tools/bench_flops.py --out bench_flops.json
    python tools/bench_flops.py --cases aspirin64 --compile   # the blocks through torch.compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_harness import REPO, add_out_argument, time_call, write_report

CASES = ("aspirin64", "1e4", "1e5", "water1e4", "water1e5")
WATER_ATOMS_PER_A3 = 0.1  # liquid water: 3 atoms per 29.9 Å^3


def matmul_seconds(repeats: int) -> list[float]:
    """CPU seconds of ``max(repeats, 5)`` products ``torch.mm`` of two 1024×1024 fp32 matrices."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    return [time_call(lambda: torch.mm(a, b))[1] for _ in range(max(repeats, 5))]


def _aspirin_case(members: int):
    from asteroid_hpc.config.load import load_config
    from asteroid_hpc.model import build_model
    from asteroid_hpc.model.summary import probe_system

    cfg = load_config(REPO / "configs/results/aspirin-a.yaml").model
    n_atoms = 13
    history, elements = probe_system(n_atoms, cfg.history_frames, density_per_A3=0.1)
    reference = history[0, -1].double()
    model = build_model(cfg, reference_coordinates=reference).eval()
    return model, history.expand(members, -1, -1, -1).contiguous(), elements, cfg.delay_length - 1


def _large_case(n_atoms: int, config: str | None = None):
    from asteroid_hpc.config.load import load_config
    from asteroid_hpc.config.schema import ModelConfig
    from asteroid_hpc.model import build_model
    from asteroid_hpc.model.summary import probe_system

    cfg = load_config(REPO / config).model if config else ModelConfig(
        history_frames=4, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=1, decoder_layers=1,
        attention="local_global", cutoff_angstrom=5.0, max_neighbors=16, num_global_tokens=4, num_rbf=8,
        symmetry="equivariant")
    model = build_model(cfg).eval()
    history, elements = probe_system(n_atoms, cfg.history_frames, **({"density_per_A3": WATER_ATOMS_PER_A3}
                                                                     if config else {}))
    return model, history, elements, cfg.delay_length - 1


def _case(case: str):
    if case == "aspirin64":
        return _aspirin_case(64)
    if case.startswith("water"):
        return _large_case(int(float(case[len("water"):])), "configs/water.yaml")
    return _large_case(int(float(case)))


def measure(case: str, repeats: int, compile_blocks: bool = False) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from asteroid_hpc.model.spatial_reference import count_flops, counted_formulation

    torch.manual_seed(0)
    model, history, elements, steps = _case(case)
    def one_pass():  # as ensemble-forecast runs a pass: no STI outputs (forecast_only)
        return model(history, elements, steps, forecast_only=True)

    flops = count_flops(one_pass)
    with counted_formulation(), FlopCounterMode(display=False) as counter:  # the count of BENCHMARKS.md before #18.2
        one_pass()
    flops_without_temporal = counter.get_total_flops()
    compile_s = None
    if compile_blocks:  # optional torch.compile of the blocks; the first pass compiles (its time reported)
        from asteroid_hpc.model.compiled import compile_blocks as compile_model

        compile_model(model)
        with torch.inference_mode():
            compile_s = time_call(one_pass)[0]
    mm_before = matmul_seconds(repeats)  # the peak before and after the model's passes: a shared machine
    with torch.inference_mode():
        one_pass()  # warm-up
        cpu = statistics.median(time_call(one_pass)[1] for _ in range(repeats))
    peak = 2 * 1024 ** 3 / statistics.median(mm_before + matmul_seconds(repeats))
    return {"case": case, "batch": int(history.shape[0]), "n_atoms": int(history.shape[2]),
            "forecast_frames": steps, "model_flops": flops, "forward_cpu_s": cpu,
            "model_flops_without_temporal_attention": flops_without_temporal, "compiled_first_pass_wall_s": compile_s,
            "achieved_gflops": flops / cpu / 1e9, "matmul_peak_gflops": peak / 1e9,
            "fraction_of_peak": flops / cpu / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the spatial and temporal blocks (asteroid_hpc.model.compiled) first")
    add_out_argument(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.child, args.repeats, args.compile)))
        return
    results = []
    for case in args.cases:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", case,
                               "--threads", str(args.threads), "--repeats", str(args.repeats)]
                              + (["--compile"] if args.compile else []),
                              capture_output=True, text=True, env=env, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        print(f"{case:>9}: {row['achieved_gflops']:6.2f} GFLOP/s of {row['matmul_peak_gflops']:6.1f} (matmul) = "
              f"{100 * row['fraction_of_peak']:5.1f} %  ({row['model_flops'] / 1e9:.2f} GFLOP in "
              f"{row['forward_cpu_s']:.3f} s CPU)", flush=True)
    write_report({"settings": {"threads": args.threads, "repeats": args.repeats, "compile": args.compile},
                  "results": results}, args.out)


if __name__ == "__main__":
    main()
