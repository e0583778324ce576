import platform
import subprocess
import sys
import textwrap

import pytest

from asteroid_hpc.runtime import choose_device, detect_launch, expand_nodelist, free_port, port_from_job_id
from asteroid_hpc.runtime.launch import LaunchInfo


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("gpu[001-004,010]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"]),
    ("a[1-2],b7", ["a1", "a2", "b7"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("c[9-11]", ["c9", "c10", "c11"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_single_process():
    info = detect_launch({})
    assert (info.launcher, info.rank, info.world_size, info.local_rank) == ("single", 0, 1, 0)
    assert not info.is_distributed


def test_torchrun_variables_win():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "n1",
           "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"}
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == \
        ("torchrun", 3, 8, 1, "n1", 1234)


def test_slurm_step():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_ID": "0",
           "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[001-004,010]",
           "SLURM_STEP_NODELIST": "gpu[003-004]", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_world_size) == \
        ("slurm", 5, 8, 1, 4)
    assert info.master_addr == "gpu003"
    assert info.master_port == port_from_job_id("123456")
    assert info.job_id == "123456"


@pytest.mark.parametrize("job_id, port", [("0", 15000), ("9", 15009), ("123456", 18456), ("20000", 15000),
                                          ("9999", 24999), ("4242_7", 15000 + 42427 % 10000)])
def test_port_from_job_id_is_the_one_formula(job_id, port):
    assert port_from_job_id(job_id) == port  # 15000 + job id mod 10000: slurm/train.sh sets no port itself


def test_free_port_can_be_bound():
    import socket

    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_slurm_batch_script_is_not_a_step():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]"}
    assert detect_launch(env).launcher == "single"


def test_mpirun_inside_an_allocation_is_open_mpi():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "1", "SLURM_JOB_ID": "77",
           "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_world_size, info.job_id) == \
        ("openmpi", 3, 4, 1, 2, "77")


def test_pmi():
    info = detect_launch({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"})
    assert (info.launcher, info.rank, info.world_size, info.local_rank) == ("pmi", 1, 2, 1)


def test_job_id_ports_differ_and_are_valid():
    ports = {port_from_job_id(str(j)) for j in range(1000, 1100)}
    assert len(ports) == 100 and all(1024 < p < 65536 for p in ports)


@pytest.mark.parametrize("local_rank, gpus, device", [(0, 0, "cpu"), (1, 0, "cpu"), (3, 4, "cuda:3"),
                                                      (5, 4, "cuda:1"), (0, 1, "cuda:0")])
def test_device_choice(local_rank, gpus, device):
    info = LaunchInfo("slurm", local_rank, 8, local_rank, 8, "h", 1, "1", "h")
    assert choose_device(info, visible_gpus=gpus) == device


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_accepted_by_glibc():
    """In a fresh process: the setting is process-wide, and a heap that already holds freed memory (pytest's,
    after other tests) would serve the block without growing."""
    code = textwrap.dedent("""
        import numpy as np, psutil
        from asteroid_hpc.runtime.allocator import keep_freed_memory
        assert keep_freed_memory() is True
        process = psutil.Process()
        before = process.memory_info().rss
        block = np.ones(96 << 20, dtype=np.uint8)  # above glibc's default mmap threshold (at most 32 MB)
        del block
        # kept in the heap for the next allocation instead of unmapped (default glibc: RSS falls back)
        print((process.memory_info().rss - before) >> 20)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 64
