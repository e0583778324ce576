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


def inference_device(setting: str, info: LaunchInfo, cuda_available: bool | None = None) -> str | None:
    """The device of an inference run for ``ensemble.device``: "cpu", "cuda" (this rank's GPU; None when no
    GPU is visible, for the caller to refuse) or "auto" (this rank's GPU when one is visible, else the CPU)."""
    if setting == "cpu":
        return "cpu"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return None if setting == "cuda" else "cpu"
    return choose_device(info)


def inference_dtype(precision: str, device: str):
    """The autocast dtype of ``precision`` ("auto", "fp32", "bf16", "fp16") on ``device``, or None for plain
    fp32. Autocast runs on CUDA only: "auto" is bf16 there, and on the CPU every setting is fp32."""
    import torch

    if precision == "fp32" or not str(device).startswith("cuda"):
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def autocast(dtype, device: str):
    """The autocast context of :func:`inference_dtype`'s answer (a no-op context for None)."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)
