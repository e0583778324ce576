"""Launch detection, devices, rank-aware logging, MPI helpers, stop signals."""

from .device import choose_device, setup_torch_threads, threads_per_rank
from .launch import LaunchInfo, detect_launch, expand_nodelist, export_torch_env, port_from_job_id
from .logs import get_logger, setup_logging

__all__ = [
    "LaunchInfo", "choose_device", "detect_launch", "expand_nodelist", "export_torch_env", "get_logger",
    "port_from_job_id", "setup_logging", "setup_torch_threads", "threads_per_rank",
]
