"""Launch detection, devices, MPI helpers, stop signals: how a process finds its place in a job."""

from .device import choose_device, setup_torch_threads, threads_per_rank
from .launch import LaunchInfo, detect_launch, expand_nodelist, export_torch_env, free_port, port_from_job_id

__all__ = [
    "LaunchInfo", "choose_device", "detect_launch", "expand_nodelist", "export_torch_env", "free_port",
    "port_from_job_id", "setup_torch_threads", "threads_per_rank",
]
