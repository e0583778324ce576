"""Safe loading: no file the project reads is ever unpickled into arbitrary objects.

Each test plants a live payload — a pickle whose ``__reduce__`` calls ``open(marker, "w")`` — where the
project loads a file (weights, the DeepSpeed files of a training checkpoint, our JSON state files,
manifests, preprocess sidecars, npz members), checks that the load fails with a clear one-line error (or
ignores the file), and that the marker file never appears. ``test_payload_is_live`` proves the payload
does run under an unrestricted unpickler, so the other tests can fail.

Also here: manifest paths cannot leave the dataset directory (absolute, ``..``, symlinks out), and every
shell script passes shellcheck with quoting enforced. YAML is read with the safe loader: see
tests/test_config.py::test_yaml_is_read_with_the_safe_loader.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import REPO, assert_user_error, run_cli
from tests.support.data import ATOMIC_NUMBERS, preprocess_walk_dataset, random_walk, write_traj
from tests.support.tiny import tiny_model_file
from tests.support.train import trained_run

from asteroid_hpc.errors import UserError



class Payload:
    """Unpickling this creates ``marker`` (a stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a planted pickle was executed"


def _torch_pickle(path: Path, marker: Path, **extra) -> Path:
    import torch

    torch.save({"module": {}, "payload": Payload(marker), **extra}, path)
    return path


def _raw_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"schema_version": 1, "payload": Payload(marker)}))
    return path


def _in_process(capsys, *argv) -> subprocess.CompletedProcess:
    from asteroid_hpc.cli.main import main

    capsys.readouterr()  # drop what building the input printed
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_info.value.code, captured.out, captured.err)


def test_payload_is_live(tmp_path):
    import torch

    for name, load in (("pickle", pickle.loads), ("torch", None)):
        marker = tmp_path / f"live-{name}"
        if load is None:
            torch.load(_torch_pickle(tmp_path / "x.pt", marker), weights_only=False)
        else:
            load(pickle.dumps(Payload(marker)))
        assert marker.exists()


# ----------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_load_weights_never_unpickles(tmp_path, marker, kind):
    from asteroid_hpc.model import load_weights

    path = tmp_path / "model.safetensors"
    _torch_pickle(path, marker) if kind == "torch-zip" else _raw_pickle(path, marker)
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file"):
        load_weights(path)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_deepspeed_pickles_are_opened_with_the_weights_only_unpickler(tmp_path, marker):
    """check_pickles_safe guards every *.pt DeepSpeed would load (model and ZeRO optimizer states)."""
    from asteroid_hpc.train.checkpoint import check_pickles_safe

    folder = tmp_path / "step_000003"
    folder.mkdir()
    _torch_pickle(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(UserError, match=r"optim_states\.pt: refusing to unpickle.*needs (io|builtins)\.open"):
        check_pickles_safe(folder)
    (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    _raw_pickle(folder / "mp_rank_00_model_states.pt", marker)  # a bare (non-zip) pickle
    with pytest.raises(UserError, match=r"mp_rank_00_model_states\.pt: not a torch zip checkpoint"):
        check_pickles_safe(folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory.getbasetemp())


def _evil_checkpoint(trained, tmp_path: Path, marker: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained[1], run)
    states = run / "checkpoints" / "step_000003" / "mp_rank_00_model_states.pt"
    import torch

    good = torch.load(states, weights_only=True)
    _torch_pickle(states, marker, **{k: v for k, v in good.items() if k != "module"})
    return run


@pytest.mark.slow  # needs a real training run (shared, ~25 s once per session)
def test_export_refuses_a_planted_model_states_pickle(trained, tmp_path, marker, capsys):
    run = _evil_checkpoint(trained, tmp_path, marker)
    out = tmp_path / "exported.safetensors"
    proc = _in_process(capsys, "export", run, out)
    assert_user_error(proc, "mp_rank_00_model_states.pt", "refusing to unpickle", "io.open")
    assert not out.exists() and not list(tmp_path.glob("exported*"))


@pytest.mark.slow
def test_train_resume_refuses_a_planted_model_states_pickle(trained, tmp_path, marker):
    from tests.support.train import TINY_CONFIG

    run = _evil_checkpoint(trained, tmp_path, marker)
    proc = run_cli("train", TINY_CONFIG, f"data.dataset={trained[0]}", f"train.run_dir={run}", "train.max_steps=4",
                   cwd=tmp_path)
    assert_user_error(proc, "mp_rank_00_model_states.pt", "refusing to unpickle")
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000003"]


@pytest.mark.parametrize("name", ["client_state.json", "rng_rank0.json", "best.json"])
def test_checkpoint_json_state_is_never_unpickled(tmp_path, marker, name):
    from asteroid_hpc.train.checkpoint import read_json

    path = _raw_pickle(tmp_path / name, marker)
    with pytest.raises(UserError, match=rf"{name}: unreadable checkpoint state"):
        read_json(path)


# ----------------------------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return preprocess_walk_dataset(tmp_path_factory.mktemp("safe-ds"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_model_file(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def _evaluate(capsys, weights: Path, ds: Path, out: Path) -> subprocess.CompletedProcess:
    return _in_process(capsys, "evaluate", weights, ds, "-o", out, "--protocol", "window", "--split", "train",
                       "--horizon-frames", "2")


def test_a_pickled_manifest_is_never_unpickled(dataset, weights, tmp_path, marker, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    _raw_pickle(ds / "manifest.json", marker)
    assert_user_error(_evaluate(capsys, weights, ds, tmp_path / "eval"), "manifest.json", "invalid JSON")
    assert not (tmp_path / "eval").exists()


def test_pickled_preprocess_sidecars_are_ignored_and_rewritten(tmp_path, marker, capsys):
    """A resumed preprocess reads its plan file and shard sidecars as JSON only: pickles there are not
    trusted (the shard is written again) and never executed."""
    from asteroid_hpc.data.preprocess import PLAN_FILE

    traj = write_traj(tmp_path / "walk.nc", random_walk(300))
    out = tmp_path / "ds"
    args = ["preprocess", "--no-progress", traj, "-o", out, "data.frames_per_shard=100"]
    assert _in_process(capsys, *args).returncode == 0
    reference = {p.name: p.read_bytes() for p in (out / "shards").glob("*.nc")}
    plan = json.loads((out / PLAN_FILE).read_text())
    (out / "manifest.json").unlink()  # as if killed before the manifest: the next run resumes
    _raw_pickle(out / "shards" / "shard-00001.json", marker)
    assert _in_process(capsys, *args).returncode == 0
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.nc")} == reference
    assert json.loads((out / "shards" / "shard-00001.json").read_text())["plan_key"] == plan["plan_key"]
    # a pickled plan file is not a plan of this run: refused without --overwrite, never unpickled
    (out / "manifest.json").unlink()
    _raw_pickle(out / PLAN_FILE, marker)
    assert_user_error(_in_process(capsys, *args), str(out), "unfinished preprocess run")


@pytest.mark.parametrize("member", ["z", "R"])
def test_npz_object_arrays_are_never_unpickled(tmp_path, marker, capsys, member):
    path = tmp_path / "evil.npz"
    arrays = {"R": random_walk(300), "z": np.asarray(ATOMIC_NUMBERS)}
    arrays[member] = np.array([Payload(marker)] * (8 if member == "z" else 1), dtype=object)
    np.savez(path, **arrays)
    with zipfile.ZipFile(path) as zf:
        assert f"{member}.npy" in zf.namelist()
    proc = _in_process(capsys, "preprocess", "--no-progress", path, "-o", tmp_path / "out", "data.timestep_fs=0.5")
    assert_user_error(proc, "evil.npz")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- manifest paths
def _escape_absolute(m, ds, outside):
    m["shards"][0]["file"] = str(outside)


def _escape_dotdot(m, ds, outside):
    m["shards"][0]["file"] = f"../{outside.name}"


def _escape_symlinked_dir(m, ds, outside):
    moved = outside.parent / "elsewhere"
    shutil.move(str(ds / "shards"), moved)
    (ds / "shards").symlink_to(moved)


def _escape_symlinked_file(m, ds, outside):
    shard = ds / m["shards"][0]["file"]
    shard.unlink()
    shard.symlink_to(outside)


@pytest.mark.parametrize("escape, fragment", [
    (_escape_absolute, "leaves the dataset directory"),
    (_escape_dotdot, "leaves the dataset directory"),
    (_escape_symlinked_dir, "resolves outside the dataset directory"),
    (_escape_symlinked_file, "resolves outside the dataset directory"),
], ids=["absolute", "dotdot", "symlinked-dir", "symlinked-file"])
def test_manifest_paths_cannot_leave_the_dataset(dataset, weights, tmp_path, capsys, escape, fragment):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    outside = tmp_path / "outside.nc"
    shutil.copy(ds / "shards" / "shard-00000.nc", outside)  # a perfectly readable file, but not ours
    manifest = json.loads((ds / "manifest.json").read_text())
    escape(manifest, ds, outside)
    (ds / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(_evaluate(capsys, weights, ds, tmp_path / "eval"), "manifest.json", fragment)


# ----------------------------------------------------------------------------------------------- shell scripts
def _shell_scripts() -> list[Path]:
    return sorted([*REPO.glob("slurm/*.sh"), *REPO.glob("tools/*.sh")])


def test_every_shell_script_passes_shellcheck_with_quoting_enforced():
    """shellcheck (default checks + SC2248 quote-safe-variables): every variable expansion is quoted."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: tools/bootstrap.sh installs it (Debian package shellcheck)")
    scripts = _shell_scripts()
    assert any(p.parent.name == "slurm" for p in scripts) and any(p.parent.name == "tools" for p in scripts)
    for script in scripts:  # no directive switches the quoting checks off
        text = script.read_text()
        assert "SC2086" not in text and "SC2248" not in text, f"{script}: disables a quoting check"
    proc = subprocess.run([shellcheck, "-x", "-o", "quote-safe-variables", *map(str, scripts)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- ensemble state
@pytest.fixture(scope="module")
def ensemble_inputs(tmp_path_factory):
    from tests.support.ensemble import ensemble_model_file, molecule_trajectory

    root = tmp_path_factory.mktemp("ens")
    return ensemble_model_file(root / "tiny.safetensors"), molecule_trajectory(root / "ic.nc", n_frames=8)


def _ensemble(capsys, model, initial, out) -> subprocess.CompletedProcess:
    return _in_process(capsys, "ensemble-forecast", model, initial, "-o", out, "ensemble.members=2",
                       "ensemble.horizon_frames=4", "ensemble.chunk_frames=2")


def test_ensemble_resume_state_is_never_unpickled(ensemble_inputs, tmp_path, marker, capsys):
    """run.json (what the directory holds) is JSON only; a planted pickle there is refused in one line."""
    model, initial = ensemble_inputs
    out = tmp_path / "ens"
    assert _ensemble(capsys, model, initial, out).returncode == 0
    shutil.rmtree(out / "members")
    (out / "COMPLETE").unlink()
    _raw_pickle(out / "run.json", marker)
    assert_user_error(_ensemble(capsys, model, initial, out), "run.json")
    assert not list(out.rglob("member_*.nc"))


@pytest.mark.slow
def test_ensemble_from_a_planted_checkpoint_is_refused(ensemble_inputs, trained, tmp_path, marker, capsys):
    """A training checkpoint folder as the ensemble's MODEL goes through export's safe unpickler."""
    run = _evil_checkpoint(trained, tmp_path, marker)
    out = tmp_path / "ens"
    proc = _ensemble(capsys, run / "checkpoints" / "step_000003", ensemble_inputs[1], out)
    assert_user_error(proc, "mp_rank_00_model_states.pt", "refusing to unpickle")
    assert not (out / "model.safetensors").exists()
