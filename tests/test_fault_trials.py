"""Fault trials in the suite: tools/fault_trials.py with 2 seeded trials of each command (the full tool
run, 10 of each, is recorded in RELIABILITY.md). A trial SIGKILLs the real command at a random moment,
checks every complete-looking file, resumes, and compares with an uninterrupted run."""

from __future__ import annotations

import importlib.util
import random
import sys

import pytest

from tests.support.cli import REPO

TRIALS = 2


def _tool():
    spec = importlib.util.spec_from_file_location("fault_trials", REPO / "tools" / "fault_trials.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_trials"] = module
    spec.loader.exec_module(module)
    return module


def _check(stats) -> None:
    assert stats.trials == TRIALS
    assert stats.resumes >= TRIALS
    assert stats.kills + stats.exited_before_kill >= TRIALS
    assert stats.mismatches == 0, stats.problems
    assert stats.invalid_complete_files == 0, stats.problems
    assert not stats.problems


@pytest.mark.slow  # ~20 s
def test_preprocess_survives_sigkill(tmp_path):
    tool = _tool()
    stats = tool.run_trials(tool.PreprocessSubject(), tmp_path, TRIALS, random.Random(1))
    _check(stats)
    assert stats.kills >= 1 and stats.complete_files_checked > 0


@pytest.mark.slow  # ~2 min: a reference training run and 2 killed + resumed ones
def test_train_survives_sigkill(tmp_path):
    tool = _tool()
    _check(tool.run_trials(tool.TrainSubject(), tmp_path, TRIALS, random.Random(2)))


@pytest.mark.slow  # ~1.5 min
def test_ensemble_forecast_survives_sigkill(tmp_path):
    tool = _tool()
    _check(tool.run_trials(tool.EnsembleSubject(), tmp_path, TRIALS, random.Random(3)))


def test_a_half_written_shard_is_detected(tmp_path):
    """The scan can fail: a truncated copy of a reference shard, named as complete, is reported."""
    tool = _tool()
    subject = tool.PreprocessSubject()
    subject.FRAMES, subject.FRAMES_PER_SHARD = 20_000, 5_000
    subject.setup(tmp_path)
    out = tmp_path / "damaged"
    (out / "shards").mkdir(parents=True)
    good = subject.reference / "shards" / "shard-00000.nc"
    (out / "shards" / "shard-00000.nc").write_bytes(good.read_bytes()[:-100])
    checked, problems = subject.scan(out)
    assert checked == 1 and len(problems) == 1 and "differs from the reference" in problems[0]


def test_a_checkpoint_being_deleted_stops_counting_as_complete_first(tmp_path, monkeypatch):
    """Pruning killed right at the start of the deletion must not leave a COMPLETE folder with files missing."""
    from asteroid_hpc.train import checkpoint

    folder = tmp_path / "step_000001"
    folder.mkdir()
    (folder / checkpoint.COMPLETE).write_text("1\n")
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"")
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *args, **kwargs: None)  # the kill: nothing deleted
    checkpoint.remove_checkpoint(folder)
    assert not checkpoint.CheckpointManager.is_complete(folder)
