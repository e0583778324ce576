"""One launch code path: from whatever launcher started us to an initialised torch.distributed, and back.

single process, ``srun``, ``torchrun``, ``mpiexec`` and the ``deepspeed`` launcher all end up here:
:func:`~asteroid_hpc.runtime.detect_launch` reads the launcher's variables, :func:`export_torch_env` turns
them into torch's env:// rendezvous, and DeepSpeed initialises the process group without MPI discovery.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import TrainConfig
from ..runtime.device import choose_device, setup_torch_threads
from ..runtime.launch import LaunchInfo, detect_launch, export_torch_env, free_port
from ..logs import get_logger
from .ds_config import resolve_backend, resolve_precision

log = get_logger(__name__)


@dataclass(frozen=True)
class Session:
    info: LaunchInfo
    device: str  # "cpu" or "cuda:<i>"
    backend: str  # "gloo" or "nccl"
    precision: str  # "fp32", "bf16" or "fp16"
    threads: int

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def device_type(self) -> str:
        return self.device.split(":")[0]


def default_extensions_dir() -> str:
    """Where DeepSpeed caches JIT-built ops: the project's ``.cache`` in a checkout, else the user cache."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return str(repo / ".cache" / "torch_extensions")
    return str(Path.home() / ".cache" / "asteroid-hpc" / "torch_extensions")


def _multi_node_master_addr(info: LaunchInfo) -> str | None:
    """Under an MPI launcher spanning nodes with no MASTER_ADDR, rank 0's host name (one MPI broadcast)."""
    if os.environ.get("MASTER_ADDR") or info.launcher not in ("openmpi", "pmi"):
        return None
    if info.local_world_size >= info.world_size:
        return None  # one node: the loopback default is right
    from ..runtime.mpi import world

    return world().bcast(info.hostname)


def start(train: TrainConfig) -> Session:
    """Initialise torch.distributed through DeepSpeed for this process (any launcher, or none)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", default_extensions_dir())
    info = detect_launch()
    master = _multi_node_master_addr(info)
    if master is not None:
        os.environ["MASTER_ADDR"] = master
    if info.world_size == 1 and not os.environ.get("MASTER_PORT"):
        os.environ["MASTER_PORT"] = str(free_port())  # alone: never collide with another run's rendezvous
    export_torch_env(info)
    device = choose_device(info)
    device_type = device.split(":")[0]
    backend = resolve_backend(train.backend, device_type)
    precision = resolve_precision(train.precision, device_type)
    threads = setup_torch_threads(info)

    import deepspeed
    import deepspeed.ops
    import torch

    if device_type == "cuda":
        torch.cuda.set_device(device)
    if os.environ.get("ASTEROID_DS_SHM_COMM") != "1":
        # DeepSpeed JIT-builds a shared-memory all-reduce (~1 min on first start) that only its
        # tensor-parallel inference uses; training never calls it, so it is not built.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return Session(info, device, backend, precision, threads)


def teardown(engine=None, *, clean: bool = True) -> None:
    """Release the engine and the process group in the order that never crashes at exit under MPI launchers.

    ``clean=False`` (after an error on this rank) skips the barrier: the other ranks may be gone.
    DeepSpeed keeps its process groups in module globals, so a process runs one training session.
    """
    import torch.distributed as dist

    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
