"""Device choice and per-rank thread count."""

from __future__ import annotations

import os

from .launch import LaunchInfo


def choose_device(info: LaunchInfo, visible_gpus: int | None = None) -> str:
    """``cuda:<LOCAL_RANK mod visible GPUs>`` when GPUs are visible, else ``cpu``."""
    if visible_gpus is None:
        import torch

        visible_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible_gpus > 0:
        return f"cuda:{info.local_rank % visible_gpus}"
    return "cpu"


def threads_per_rank(info: LaunchInfo) -> int:
    """CPU threads each rank may use: the cores this process may run on, shared among the node's ranks."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, info.local_world_size))


def setup_torch_threads(info: LaunchInfo) -> int:
    import torch

    n = threads_per_rank(info)
    torch.set_num_threads(n)
    return n
