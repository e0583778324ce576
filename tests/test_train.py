"""`asteroid-hpc train` and `export` on the real ASTEROID model and a real tiny xTB ethanol dataset, on CPU:
one process, torchrun with 2 processes at ZeRO 0-3, resume, preemption by a real signal, export."""

from __future__ import annotations

import json
import signal
import subprocess

import numpy as np
import pytest
import yaml

from tests.support.cli import assert_user_error, run_cli
from tests.support.train import (  # noqa: F401 (tiny_dataset is a fixture)
    TINY_CONFIG, assert_same_losses, run_train, tiny_dataset, train_command, train_env, train_losses, wait_for_steps,
)

LOSS_TOL = 1e-6


@pytest.fixture(scope="module")
def straight(tiny_dataset, tmp_path_factory):
    """One process, 6 steps, micro-batch 2 (the tiny config): the reference run."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    extensions = run_dir.parent / "torch_extensions"
    proc = run_train(tiny_dataset, run_dir, env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    assert not extensions.exists(), "DeepSpeed JIT-built an op (~1 min on first start); training needs none"
    return run_dir, proc


def test_single_process_run_writes_metrics_checkpoints_and_summary(straight):
    run_dir, proc = straight
    log = proc.stderr
    assert "STARTING FROM SCRATCH" in log
    assert log.count("config hash") == 1 and "launcher=single world_size=1" in log and "device=cpu" in log
    assert "backend gloo" in log
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert resolved["provenance"]["launcher"] == "single" and resolved["train"]["run_dir"] == str(run_dir)
    assert "parameters" in log and "FLOPs per forecast frame" in log and "deepspeed 0." in log
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for r in train:
        for key in ("loss", "primary", "conjugate", "consistency", "forecast", "lr", "samples_per_s", "rss_mb"):
            assert np.isfinite(r[key]) and r[key] >= 0, (key, r)
        assert r["grad_norm"] is not None and r["grad_norm"] > 0
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in val] == [3, 6] and all(len(r["mse_per_lead_angstrom2"]) == 2 for r in val)
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_000006"
    for step in (3, 6):
        folder = checkpoints / f"step_{step:06d}"
        assert (folder / "COMPLETE").is_file() and (folder / "rng_rank0.json").is_file()
        state = json.loads((folder / "client_state.json").read_text())
        assert state["step"] == step and state["sampler"]["position"] == 2 * step
        assert state["package_version"] and state["config_hash"] and state["config"]["model"]["hidden_size"] == 16
    best = json.loads((checkpoints / "best.json").read_text())
    assert best["step"] == min(val, key=lambda r: r["mse_angstrom2"])["step"]


def test_three_steps_resume_three_steps_equals_six_straight(straight, tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_dataset, run_dir, "train.max_steps=3")
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000003"
    proc = run_train(tiny_dataset, run_dir)  # --resume auto
    assert "resume: from" in proc.stderr and "step_000003" in proc.stderr
    assert_same_losses(train_losses(run_dir), train_losses(straight[0]), abs_tol=LOSS_TOL)


def test_resume_with_a_different_model_shape_is_refused(straight, tiny_dataset, tmp_path):
    proc = run_train(tiny_dataset, straight[0], "model.hidden_size=32", "train.max_steps=8", check=False)
    assert_user_error(proc, "step_000006", "model.hidden_size 16 -> 32", "cannot resume")


def _reference_hash(tiny_dataset, run_dir, *overrides: str) -> str:
    """The hash of the config as given (before any training)."""
    from asteroid_hpc.config import config_hash, load_config

    return config_hash(load_config(TINY_CONFIG, [f"data.dataset={tiny_dataset}", f"train.run_dir={run_dir}",
                                                 "model.reference_structure=training_mean", *overrides]))


def _as_older_checkpoint(step_dir, coordinates) -> None:
    """Rewrite a checkpoint as the code before the reference moved into the state wrote it: the coordinates
    in the config's model section, no ``reference`` in the module state."""
    import torch

    from asteroid_hpc.train.checkpoint import safe_torch_load

    states = step_dir / "mp_rank_00_model_states.pt"
    saved = safe_torch_load(states)
    del saved["module"]["reference"]
    torch.save(saved, states.with_suffix(".new"))
    states.with_suffix(".new").replace(states)  # a new file: the loaded tensors may map the old one
    client = json.loads((step_dir / "client_state.json").read_text())
    client["config"]["model"]["reference_coordinates"] = coordinates
    (step_dir / "client_state.json").write_text(json.dumps(client))


def test_reference_structure_goes_into_the_model_state_and_the_config_hash_never_changes(tiny_dataset, tmp_path):
    """model.reference_structure=training_mean: train puts the dataset's mean structure into the model's state,
    never into the config (the hash of the resolved config is the same before and after); a resumed run computes
    the same; export carries it; a checkpoint written before the change resumes and exports alike."""
    import shutil

    import torch

    from asteroid_hpc.data.reference import training_mean_structure
    from asteroid_hpc.model import load_weights

    run_dir = tmp_path / "run"
    expected_hash = {3: _reference_hash(tiny_dataset, run_dir, "train.max_steps=3"),
                     6: _reference_hash(tiny_dataset, run_dir)}
    run_train(tiny_dataset, run_dir, "model.reference_structure=training_mean", "train.max_steps=3")
    older = tmp_path / "older" / "run"
    shutil.copytree(run_dir, older)
    proc = run_train(tiny_dataset, run_dir, "model.reference_structure=training_mean")
    assert "resume: from" in proc.stderr and "reference structure: the mean of the training frames" in proc.stderr
    assert f"config hash: {expected_hash[6]}" in proc.stderr
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert "reference_coordinates" not in resolved["model"]
    for step in (3, 6):
        state = json.loads((run_dir / "checkpoints" / f"step_{step:06d}" / "client_state.json").read_text())
        assert state["config_hash"] == expected_hash[step] and "reference_coordinates" not in state["config"]["model"]
    assert run_cli("export", run_dir, tmp_path / "ref.safetensors").returncode == 0
    model = load_weights(tmp_path / "ref.safetensors")
    assert model.cfg.reference_structure == "training_mean" and model.reference.shape == (9, 3)  # ethanol
    np.testing.assert_allclose(model.reference.numpy(), training_mean_structure(tiny_dataset), atol=1e-6)

    # the older format: coordinates in the checkpoint's config, none in its module state
    computed = [[round(float(v), 6) for v in row] for row in training_mean_structure(tiny_dataset)]
    other = tmp_path / "other" / "run"
    shutil.copytree(older, other)
    _as_older_checkpoint(older / "checkpoints" / "step_000003", computed)
    _as_older_checkpoint(other / "checkpoints" / "step_000003", [[v + 0.1 for v in row] for row in computed])
    refused = run_train(tiny_dataset, other, "model.reference_structure=training_mean", check=False)
    assert_user_error(refused, "step_000003", "reference structure differs from the training mean")
    exported = run_cli("export", older / "checkpoints" / "step_000003", tmp_path / "older.safetensors")
    assert exported.returncode == 0, exported.stderr
    assert torch.equal(load_weights(tmp_path / "older.safetensors").reference, model.reference)
    run_train(tiny_dataset, older, "model.reference_structure=training_mean")
    assert_same_losses(train_losses(older), train_losses(run_dir), abs_tol=LOSS_TOL)


def test_training_with_other_windows_than_the_dataset_was_cut_for_is_refused(tiny_dataset, tmp_path):
    proc = run_train(tiny_dataset, tmp_path / "run", "model.history_frames=5", check=False)
    assert_user_error(proc, str(tiny_dataset / "manifest.json"), "preprocessed with model.history_frames=4",
                      "the config asks for model.history_frames=5")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stop_signal_checkpoints_and_exits_zero(tiny_dataset, tmp_path):
    """SIGUSR1 to a running training: a checkpoint at the next step boundary, exit 0, and `--resume auto`
    picks that checkpoint up."""
    run_dir = tmp_path / "run"
    args = [str(TINY_CONFIG), f"data.dataset={tiny_dataset}", f"train.run_dir={run_dir}", "train.max_steps=400",
            "train.checkpoint_every=1000", "train.val_every=1000"]
    process = subprocess.Popen(train_command("single", 1, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=train_env(), cwd=str(tmp_path))
    wait_for_steps(process, run_dir, 2)
    process.send_signal(signal.SIGUSR1)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "stop signal (SIGUSR1) received" in stderr
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().split("_")[1])
    assert 2 <= stopped_at < 400 and max(train_losses(run_dir)) == stopped_at
    state = json.loads((run_dir / "checkpoints" / f"step_{stopped_at:06d}" / "client_state.json").read_text())
    assert state["step"] == stopped_at and state["sampler"]["position"] == 2 * stopped_at


@pytest.mark.slow
def test_bf16_on_cpu_trains_close_to_fp32_and_exports(straight, tiny_dataset, tmp_path):
    from tests.support.cli import run_cli

    run_dir = tmp_path / "run"
    proc = run_train(tiny_dataset, run_dir, "train.precision=bf16")
    assert "precision bf16" in proc.stderr
    bf16, fp32 = train_losses(run_dir), train_losses(straight[0])
    assert all(abs(bf16[s] - fp32[s]) <= 0.1 * fp32[s] for s in fp32), (bf16, fp32)
    assert run_cli("export", run_dir, tmp_path / "bf16.safetensors").returncode == 0


def test_early_stopping_keeps_the_best_checkpoint(tiny_dataset, tmp_path):
    """Validation every step with patience 2 and a large learning rate: the run stops early, and the best
    checkpoint survives pruning even when it is older than the last keep_last=2."""
    run_dir = tmp_path / "run"
    proc = run_train(tiny_dataset, run_dir, "train.max_steps=30", "train.val_every=1", "train.checkpoint_every=1",
                     "train.early_stopping_patience=2", "train.lr=0.05", "train.lr_decay_steps=0")
    assert "(early_stopping)" in proc.stderr
    val = _val(run_dir)
    mses = [r["mse_angstrom2"] for r in val]
    last = val[-1]["step"]
    assert last < 30 and min(mses[:-2]) <= min(mses[-2:])  # the last two did not improve
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["step"] == val[int(np.argmin(mses))]["step"] and best["val_mse"] == pytest.approx(min(mses))
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert kept == sorted({f"step_{best['step']:06d}", f"step_{last - 1:06d}", f"step_{last:06d}"})
    exported = run_cli("export", run_dir, tmp_path / "best.safetensors", "--best")
    assert exported.returncode == 0, exported.stderr
    assert f"step_{best['step']:06d} (step {best['step']})" in exported.stderr


# ------------------------------------------------------------------------------ 2 processes, ZeRO 0-3
@pytest.fixture(scope="module")
def two_process_runs(tiny_dataset, tmp_path_factory):
    runs = {}

    def get(stage: int):
        if stage not in runs:
            run_dir = tmp_path_factory.mktemp(f"zero{stage}") / "run"
            proc = run_train(tiny_dataset, run_dir, "train.micro_batch_size=1", "train.val_batches=2",
                             f"train.zero_stage={stage}", launcher="torchrun", nproc=2)
            runs[stage] = (run_dir, proc)
        return runs[stage]

    return get


@pytest.mark.parametrize("stage", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow), 3])
def test_two_processes_with_b_match_one_process_with_2b(stage, straight, two_process_runs):
    reference_2b = straight[0]  # one process, micro-batch 2
    run_dir, proc = two_process_runs(stage)
    assert "launcher=torchrun world_size=2" in proc.stderr and f"ZeRO stage {stage}" in proc.stderr
    assert "1 per rank × 1 accumulation × 2 ranks = 2 windows per step" in proc.stderr
    expected = train_losses(reference_2b)
    assert_same_losses(train_losses(run_dir), expected, abs_tol=1e-5 * max(expected.values()))
    # every rank took the same steps and wrote its part of every checkpoint
    for step in (3, 6):
        folder = run_dir / "checkpoints" / f"step_{step:06d}"
        assert (folder / "COMPLETE").is_file()
        assert (folder / "rng_rank0.json").is_file() and (folder / "rng_rank1.json").is_file()
        assert json.loads((folder / "client_state.json").read_text())["world_size"] == 2
    ref_val = [r["mse_angstrom2"] for r in _val(reference_2b)]
    assert np.allclose([r["mse_angstrom2"] for r in _val(run_dir)], ref_val, rtol=1e-4)


def _val(run_dir):
    from asteroid_hpc.train import read_metrics

    return read_metrics(run_dir / "metrics.jsonl", kind="val")


def test_export_zero3_from_two_processes_loads_in_one(two_process_runs, tiny_dataset, tmp_path):
    """The consolidated fp32 weights reproduce the validation MSE the 2-rank ZeRO-3 run measured at step 6."""
    import torch

    from asteroid_hpc.config import load_config
    from asteroid_hpc.data import WindowDataset
    from asteroid_hpc.model import load_weights
    from asteroid_hpc.train.validate import validation_indices
    from tests.support.cli import run_cli

    run_dir, _ = two_process_runs(3)
    zero_files = list((run_dir / "checkpoints" / "step_000006").glob("*zero_pp_rank_*"))
    assert len(zero_files) >= 2, "ZeRO-3 partitions expected from both ranks"
    out = tmp_path / "model.safetensors"
    proc = run_cli("export", run_dir / "checkpoints" / "step_000006", out)
    assert proc.returncode == 0, proc.stderr
    model = load_weights(out)
    cfg = load_config(TINY_CONFIG, [f"data.dataset={tiny_dataset}"])
    val = WindowDataset(tiny_dataset, "val", cfg.model.history_frames, cfg.data.horizon_frames)
    indices = validation_indices(len(val), 2 * 2 * 1, rank=0, world_size=1)  # val_batches 2 × b 1 × 2 ranks
    windows = [val[i] for i in indices]
    history = torch.stack([torch.as_tensor(w["history"]) for w in windows])
    target = torch.stack([torch.as_tensor(w["target"]) for w in windows]).double()
    forecast = model.forecast(history, torch.as_tensor(windows[0]["atomic_numbers"]), 2).double()
    mse = float((forecast - target).pow(2).mean())
    recorded = [r for r in _val(run_dir) if r["step"] == 6][0]["mse_angstrom2"]
    assert mse == pytest.approx(recorded, rel=1e-5)
    # `export` also takes the run folder (its newest checkpoint) and refuses an incomplete one
    assert run_cli("export", run_dir, tmp_path / "again.safetensors").returncode == 0
    broken = tmp_path / "step_000009"
    broken.mkdir()
    assert_user_error(run_cli("export", broken, tmp_path / "x.safetensors"), "step_000009", "incomplete")
