"""`asteroid-hpc train` under `mpiexec -n 2` (and the deepspeed launcher): resume equivalence with 2 ranks,
a stop signal delivered to one rank only, and clean exits run after run."""

from __future__ import annotations

import json
import signal
import subprocess

import psutil
import pytest

from tests.support.train import (  # noqa: F401 (tiny_dataset is a fixture)
    TINY_CONFIG, assert_same_losses, run_train, tiny_dataset, train_command, train_env, train_losses, wait_for_steps,
)

pytestmark = pytest.mark.mpi

TWO_RANKS = ("train.micro_batch_size=1", "train.zero_stage=2")


@pytest.fixture(scope="module")
def straight_two_ranks(tiny_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mpi-straight") / "run"
    proc = run_train(tiny_dataset, run_dir, *TWO_RANKS, launcher="mpiexec", nproc=2)
    return run_dir, proc


def test_mpiexec_two_ranks_train(straight_two_ranks):
    run_dir, proc = straight_two_ranks
    assert "launcher=openmpi world_size=2" in proc.stderr
    assert proc.stderr.count("config hash") == 1  # the summary is printed once, by rank 0
    assert (run_dir / "logs" / "rank0.log").is_file() and (run_dir / "logs" / "rank1.log").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000006"


@pytest.mark.slow
def test_three_steps_resume_three_steps_equals_six_straight_two_ranks(straight_two_ranks, tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_dataset, run_dir, *TWO_RANKS, "train.max_steps=3", launcher="mpiexec", nproc=2)
    proc = run_train(tiny_dataset, run_dir, *TWO_RANKS, launcher="mpiexec", nproc=2)
    assert "resume: from" in proc.stderr
    assert_same_losses(train_losses(run_dir), train_losses(straight_two_ranks[0]), abs_tol=1e-6)


def test_signal_to_one_rank_stops_both_at_the_same_step(tiny_dataset, tmp_path):
    """SIGUSR1 reaches rank 1 only; the ranks agree at the next step boundary, checkpoint together, exit 0."""
    run_dir = tmp_path / "run"
    args = [str(TINY_CONFIG), f"data.dataset={tiny_dataset}", f"train.run_dir={run_dir}", *TWO_RANKS,
            "train.max_steps=400", "train.checkpoint_every=1000", "train.val_every=1000"]
    process = subprocess.Popen(train_command("mpiexec", 2, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=train_env(ASTEROID_LOG_ALL_RANKS="1"), cwd=str(tmp_path))
    wait_for_steps(process, run_dir, 2)
    ranks = [p for p in psutil.Process(process.pid).children(recursive=True)
             if p.environ().get("OMPI_COMM_WORLD_RANK") == "1"]
    assert len(ranks) == 1, ranks
    ranks[0].send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert "[rank 1/2" in stderr and "stop signal (SIGUSR1) received" in stderr
    assert "stop signal (on another rank) received" in stderr  # rank 0 got no signal, yet stopped
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().split("_")[1])
    folder = run_dir / "checkpoints" / f"step_{stopped_at:06d}"
    assert (folder / "COMPLETE").is_file() and len(list(folder.glob("*zero_pp_rank_*"))) == 2
    assert json.loads((folder / "client_state.json").read_text())["step"] == stopped_at
    assert max(train_losses(run_dir)) == stopped_at


@pytest.mark.slow
def test_repeated_mpiexec_runs_exit_cleanly(tiny_dataset, tmp_path):
    """The explicit teardown: five 2-rank trainings in a row, each exits 0 (no abort at exit)."""
    for attempt in range(5):
        run_dir = tmp_path / f"run{attempt}"
        proc = run_train(tiny_dataset, run_dir, *TWO_RANKS, "train.max_steps=2", "train.warmup_steps=1", "train.val_every=2",
                         "train.checkpoint_every=2", launcher="mpiexec", nproc=2, check=False)
        assert proc.returncode == 0, (attempt, proc.stderr[-3000:])
        assert "terminate called" not in proc.stderr


@pytest.mark.slow
def test_deepspeed_launcher_two_processes(straight_two_ranks, tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(tiny_dataset, run_dir, *TWO_RANKS, launcher="deepspeed", nproc=2)
    assert "world_size=2" in proc.stderr
    assert_same_losses(train_losses(run_dir), train_losses(straight_two_ranks[0]), abs_tol=1e-6)
