#!/usr/bin/env python
"""DeepSpeed overhead: a ZeRO-1 training step against a plain torch loop, same model, same batch, one run.

Then the DeepSpeed step's throughput (samples/s) at 1 and 2 processes (the 2-process run is started with
torchrun from here). Prints a JSON report; ``--markdown`` adds the BENCHMARKS.md lines.

    python tools/bench_train_overhead.py configs/tiny/train.yaml data.dataset=data/ethanol --steps 30
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_harness import add_out_argument, summary, time_calls, write_report


def _load(config: str, overrides: list[str]):
    from asteroid_hpc.config import load_config

    return load_config(config, overrides)


def _batch(cfg, micro_batch_size: int, rank: int = 0):
    """``micro_batch_size`` consecutive training windows (rank ``rank``'s share) of the config's dataset."""
    import torch
    from torch.utils.data import default_collate

    from asteroid_hpc.data import WindowDataset

    dataset = WindowDataset(cfg.data.dataset, "train", cfg.model.history_frames, cfg.data.horizon_frames,
                            window_stride=cfg.data.window_stride)
    start = rank * micro_batch_size
    batch = default_collate([dataset[i] for i in range(start, start + micro_batch_size)])
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def _torch_step(model, optimizer, batch, weights, grad_clip):
    import torch

    from asteroid_hpc.model import sti_losses

    def step():
        output = model(batch["history"], batch["atomic_numbers"], batch["target"].shape[1], batch["target"])
        total, _ = sti_losses(output, batch["history"], batch["target"], weights)
        total.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _deepspeed_engine(cfg, model, world_size: int):
    import deepspeed
    import torch

    from asteroid_hpc.train.ds_config import build_deepspeed_config

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    config = build_deepspeed_config(cfg.train, world_size, "fp32")
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
    return engine


def _deepspeed_step(engine, batch, weights):
    from asteroid_hpc.model import sti_losses

    def step():
        output = engine(batch["history"], batch["atomic_numbers"], batch["target"].shape[1], batch["target"])
        total, _ = sti_losses(output, batch["history"], batch["target"], weights)
        engine.backward(total)
        engine.step()

    return step


def measure(cfg, steps: int, warmup: int, rounds: int) -> dict:
    """One process: torch loop and DeepSpeed ZeRO-1 on copies of one model, one step of each in turn."""
    import torch

    from asteroid_hpc.model import build_model
    from asteroid_hpc.train import session

    sess = session.start(cfg.train)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    batch = _batch(cfg, cfg.train.micro_batch_size)
    plain = copy.deepcopy(model)
    plain_step = _torch_step(plain, torch.optim.AdamW(plain.parameters(), lr=cfg.train.lr,
                                                      weight_decay=cfg.train.weight_decay),
                             batch, cfg.train.loss_weights, cfg.train.grad_clip)
    engine = _deepspeed_engine(cfg, model, 1)
    ds_step = _deepspeed_step(engine, batch, cfg.train.loss_weights)
    for _ in range(warmup):
        plain_step()
        ds_step()
    torch_times, ds_times = [], []
    for _ in range(steps * rounds):  # strictly alternating steps: the machine's load hits both alike
        torch_times += time_calls(plain_step, 1, 0)
        ds_times += time_calls(ds_step, 1, 0)
    session.teardown(engine)
    torch_s, ds_s = statistics.median(torch_times), statistics.median(ds_times)
    pair_ratio = statistics.median(d / p for d, p in zip(ds_times, torch_times))
    return {"torch": summary(torch_times), "deepspeed_zero1": summary(ds_times), "ratio": ds_s / torch_s,
            "median_pair_ratio": pair_ratio,
            "threads": sess.threads, "micro_batch_size": cfg.train.micro_batch_size,
            "samples_per_s_1proc": cfg.train.micro_batch_size / ds_s}


def worker(cfg, steps: int, warmup: int, out: str) -> None:
    """Inside torchrun: the DeepSpeed step of this rank; rank 0 writes the throughput."""
    import torch
    import torch.distributed as dist

    from asteroid_hpc.model import build_model
    from asteroid_hpc.train import session

    sess = session.start(cfg.train)
    torch.manual_seed(cfg.train.seed)
    engine = _deepspeed_engine(cfg, build_model(cfg.model), sess.world_size)
    step = _deepspeed_step(engine, _batch(cfg, cfg.train.micro_batch_size, sess.rank), cfg.train.loss_weights)
    times = torch.tensor(time_calls(step, steps, warmup), dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # a step ends when the slowest rank ends it
    if sess.rank == 0:
        median = float(times.median())
        Path(out).write_text(json.dumps({"world_size": sess.world_size, "threads": sess.threads,
                                         "step_median_s": median,
                                         "samples_per_s": sess.world_size * cfg.train.micro_batch_size / median}))
    session.teardown(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    parser.add_argument("--rounds", type=int, default=3, help="the 1-process comparison times steps × rounds pairs")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per process (OMP_NUM_THREADS); 1 makes 1 and 2 processes comparable")
    parser.add_argument("--markdown", action="store_true", help="also print BENCHMARKS.md lines")
    add_out_argument(parser)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = [*args.overrides, "train.zero_stage=1", "train.precision=fp32"]
    cfg = _load(args.config, overrides)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.worker_output:
        worker(cfg, args.steps, args.warmup, args.worker_output)
        return

    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "two.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "--", __file__, args.config, *args.overrides, "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--worker-output", str(out)]
        subprocess.run(cmd, check=True, env={**env, "ASTEROID_NO_MPI": "1"})
        two = json.loads(out.read_text())
    one = measure(cfg, args.steps, args.warmup, args.rounds)
    write_report({"config": args.config, "overrides": args.overrides, **one, "two_processes": two}, args.out)
    if args.markdown:
        print(f"| DeepSpeed ZeRO-1 / torch step time (1 process, {one['threads']} threads, micro-batch "
              f"{one['micro_batch_size']}) | {one['deepspeed_zero1']['median_s'] * 1e3:.1f} ms / "
              f"{one['torch']['median_s'] * 1e3:.1f} ms = **{one['ratio']:.3f}** |")
        print(f"| samples/s, DeepSpeed ZeRO-1, 1 process ({one['threads']} thread) | {one['samples_per_s_1proc']:.1f} |")
        print(f"| samples/s, DeepSpeed ZeRO-1, 2 processes ({two['threads']} thread each) | "
              f"{two['samples_per_s']:.1f} |")


if __name__ == "__main__":
    main()
