"""Launcher detection in one place: torchrun/deepspeed → Slurm → Open MPI / PMI → single process.

The result tells every other part of the project its rank, world size, local rank, the rendezvous
address and the device, however the job was started.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class LaunchInfo:
    launcher: str  # "torchrun", "slurm", "openmpi", "pmi" or "single"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    job_id: Optional[str]
    hostname: str

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_PORT = 29500


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``gpu[001-004,010],login1`` into host names, in order."""
    hosts: list[str] = []
    # split on commas that are not inside brackets
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", nodelist):
        item = item.strip()
        if not item:
            continue
        hosts.extend(_expand_host(item))
    return hosts


def _expand_host(pattern: str) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", pattern)
    if not match:
        return [pattern]
    prefix, suffix = pattern[: match.start()], pattern[match.end():]
    out = []
    for part in match.group(1).split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            width = len(lo)
            out.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
        else:
            out.append(f"{prefix}{part}")
    return [h for host in out for h in _expand_host(host + suffix)] if "[" in suffix else [h + suffix for h in out]


def port_from_job_id(job_id: str) -> int:
    """The rendezvous port of a Slurm job, 15000 + job id mod 10000, so concurrent jobs on a node do not
    collide (the sbatch templates rely on it: they set no MASTER_PORT)."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 15000 + int(digits) % 10000


def free_port() -> int:
    """A TCP port on the loopback interface that is free now (for a rendezvous of this host alone)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _int(env: Mapping[str, str], *names: str, default: int | None = None) -> int | None:
    for name in names:
        if env.get(name, "") != "":
            return int(env[name])
    return default


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Read the launcher's environment variables (``os.environ`` by default)."""
    env = os.environ if env is None else env
    host = socket.gethostname()
    addr_env = env.get("MASTER_ADDR")
    port_env = _int(env, "MASTER_PORT")

    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, deepspeed launcher, or a user's explicit setup
        world = int(env["WORLD_SIZE"])
        return LaunchInfo("torchrun", int(env["RANK"]), world,
                          _int(env, "LOCAL_RANK", default=0), _int(env, "LOCAL_WORLD_SIZE", default=world),
                          addr_env or "127.0.0.1", port_env or DEFAULT_PORT, env.get("TORCHELASTIC_RUN_ID"), host)

    # An srun step (not the batch script itself, and not mpirun inside an allocation, whose ranks
    # inherit the SLURM_* of the daemon srun started on their node).
    in_step = "SLURM_STEP_NUM_TASKS" in env or "SLURM_STEP_ID" in env
    if "SLURM_PROCID" in env and in_step and "OMPI_COMM_WORLD_RANK" not in env:
        job_id = env.get("SLURM_JOB_ID", "0")
        nodes = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", host))
        tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
        local_world = int(re.match(r"\d+", tasks_per_node).group(0))
        return LaunchInfo("slurm", int(env["SLURM_PROCID"]), _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
                          _int(env, "SLURM_LOCALID", default=0), local_world,
                          addr_env or (nodes[0] if nodes else host), port_env or port_from_job_id(job_id),
                          job_id, host)

    if "OMPI_COMM_WORLD_RANK" in env:
        world = int(env["OMPI_COMM_WORLD_SIZE"])
        return LaunchInfo("openmpi", int(env["OMPI_COMM_WORLD_RANK"]), world,
                          _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
                          _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=world),
                          addr_env or "127.0.0.1", port_env or DEFAULT_PORT, env.get("SLURM_JOB_ID"), host)

    if "PMI_RANK" in env and "PMI_SIZE" in env:  # MPICH / Intel MPI (Hydra)
        world = int(env["PMI_SIZE"])
        return LaunchInfo("pmi", int(env["PMI_RANK"]), world,
                          _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK", default=0),
                          _int(env, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE", default=world),
                          addr_env or "127.0.0.1", port_env or DEFAULT_PORT, env.get("SLURM_JOB_ID"), host)

    return LaunchInfo("single", 0, 1, 0, 1, addr_env or "127.0.0.1", port_env or DEFAULT_PORT,
                      env.get("SLURM_JOB_ID"), host)


def launched_by_mpi(env: Mapping[str, str] | None = None) -> bool:
    """True when ranks come from an MPI launcher (or srun), so mpi4py may be initialised."""
    return detect_launch(env).launcher in ("openmpi", "pmi", "slurm")


def export_torch_env(info: LaunchInfo) -> None:
    """Set the variables torch.distributed's env:// rendezvous reads (idempotent)."""
    os.environ.setdefault("RANK", str(info.rank))
    os.environ.setdefault("WORLD_SIZE", str(info.world_size))
    os.environ.setdefault("LOCAL_RANK", str(info.local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(info.local_world_size))
    os.environ.setdefault("MASTER_ADDR", info.master_addr)
    os.environ.setdefault("MASTER_PORT", str(info.master_port))
