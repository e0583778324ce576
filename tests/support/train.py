"""Helpers for the training tests: the tiny dataset as a session fixture, runners for `asteroid-hpc train` alone,
under torchrun, mpiexec and the deepspeed launcher, a shared short training run, and a plain module standing in
for a DeepSpeed engine (with a one-batch stream) for `optimizer_step`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asteroid_hpc.runtime.launch import free_port
from tests.support.cli import cli_env
from tests.support.tiny import TINY_CONFIG, make_tiny_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.getbasetemp() / "train-data")


class PlainEngine:
    """The three calls the optimizer step makes of a DeepSpeed engine, on a plain module; ``calls`` records each
    forward as (batch rows, teacher-forced, mean_only)."""

    def __init__(self, module) -> None:
        self.module, self.calls = module, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args[0].shape[0], len(args) > 3 and args[3] is not None, kwargs.get("mean_only", False)))
        return self.module(*args, **kwargs)

    def backward(self, loss) -> None:
        loss.backward()

    def step(self) -> None:
        pass


class OneBatch:
    """A batch stream that yields the same batch every time."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def next(self) -> dict:
        return self.batch


def train_env(**extra: str) -> dict:
    env = cli_env(MASTER_PORT=str(free_port()), **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(key, None)
    env.setdefault("OMP_NUM_THREADS", "1")  # the same arithmetic in every run, whatever the launcher
    return env


def train_command(launcher: str, nproc: int, *args: str) -> list[str]:
    """The command line of ``asteroid-hpc train ARGS`` under ``launcher`` with ``nproc`` processes."""
    exe = shutil.which("asteroid-hpc") or pytest.fail("asteroid-hpc is not installed in this environment")
    if launcher == "single":
        assert nproc == 1
        return [sys.executable, "-m", "asteroid_hpc", "train", *args]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), "--", exe, "train", *args]
    if launcher == "mpiexec":
        mpiexec = shutil.which("mpiexec") or pytest.fail("mpiexec not found")
        return [mpiexec, "-n", str(nproc), sys.executable, "-m", "asteroid_hpc", "train", *args]
    if launcher == "deepspeed":
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--no_local_rank", "--num_gpus", str(nproc),
                "--master_port", str(free_port()), exe, "train", *args]
    raise ValueError(launcher)


def run_train(dataset: Path, run_dir: Path, *overrides: str, launcher: str = "single", nproc: int = 1,
              resume: str = "auto", timeout: float = 300, check: bool = True,
              env: dict | None = None) -> subprocess.CompletedProcess:
    args = [str(TINY_CONFIG), f"data.dataset={dataset}", f"train.run_dir={run_dir}", *overrides, "--resume", resume]
    proc = subprocess.run(train_command(launcher, nproc, *args), capture_output=True, text=True, timeout=timeout,
                          env=train_env(**(env or {})), cwd=str(run_dir.parent))
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def wait_for_steps(process: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 180) -> None:
    """Wait until a running training has logged ``steps`` steps (fails if it exits first)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training exited early ({process.returncode}): {process.communicate()[1][-3000:]}")
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"training logged fewer than {steps} steps in {timeout} s")


def train_losses(run_dir: Path) -> dict[int, float]:
    from asteroid_hpc.train import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", kind="train")}


def trained_run(basetemp: Path) -> tuple[Path, Path]:
    """(dataset, run_dir) of a real 3-step tiny training run (one checkpoint, step_000003); cached per session."""
    dataset = make_tiny_dataset(basetemp / "train-data")
    run_dir = basetemp / "reliability-run" / "run"
    if not (run_dir / "checkpoints" / "step_000003" / "COMPLETE").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_train(dataset, run_dir, "train.max_steps=3", "train.checkpoint_every=3", "train.val_every=3")
    return dataset, run_dir


def assert_same_losses(got: dict[int, float], expected: dict[int, float], *, abs_tol: float) -> None:
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for step in expected:
        assert abs(got[step] - expected[step]) <= abs_tol, (step, got[step], expected[step])


__all__ = ["TINY_CONFIG", "assert_same_losses", "free_port", "make_tiny_dataset", "run_train", "tiny_dataset",
           "trained_run", "train_command", "train_env", "train_losses", "wait_for_steps"]
