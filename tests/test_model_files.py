"""open_model: one way to open a model from exported weights, an export folder, a checkpoint or a run folder."""

import json
import shutil

import pytest

from tests.support.cli import assert_user_error, run_cli
from asteroid_hpc.errors import UserError
from asteroid_hpc.train.model_files import locate_model, open_model


def _checkpoint(run, step: int, complete: bool = True):
    folder = run / "checkpoints" / f"step_{step:06d}"
    folder.mkdir(parents=True)
    if complete:
        (folder / "COMPLETE").write_text(f"{step}\n")
    return folder


def test_locate_model_forms(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert locate_model(weights).path == weights and not locate_model(weights).is_checkpoint
    export = tmp_path / "export"
    export.mkdir()
    (export / "only.safetensors").write_bytes(b"x")
    assert locate_model(export).path == export / "only.safetensors"
    (export / "model.safetensors").write_bytes(b"x")
    assert locate_model(export).path == export / "model.safetensors"  # preferred among several

    run = tmp_path / "run"
    second, fourth = _checkpoint(run, 2), _checkpoint(run, 4)
    _checkpoint(run, 6, complete=False)  # an interrupted save never counts
    for form in (run, run / "checkpoints"):  # no validation yet: the newest complete checkpoint
        assert locate_model(form).path == fourth and locate_model(form).is_checkpoint
    (run / "checkpoints" / "best.json").write_text(json.dumps({"tag": "step_000002", "step": 2, "val_mse": 0.1}))
    for form in (run, run / "checkpoints"):  # validated: the best checkpoint
        assert locate_model(form).path == second
    assert locate_model(fourth).path == fourth


@pytest.mark.parametrize("form, fragment", [
    ("missing", "model not found"),
    ("empty", "no model here"),
    ("two_weights", "expected one .safetensors file"),
    ("incomplete_step", "checkpoint is incomplete"),
    ("best_incomplete", "not a complete checkpoint"),
    ("not_weights", "not a readable safetensors file"),
])
def test_bad_model_forms_are_user_errors(tmp_path, form, fragment):
    path = tmp_path / form
    if form == "empty":
        path.mkdir()
    elif form == "two_weights":
        path.mkdir()
        for name in ("a", "b"):
            (path / f"{name}.safetensors").write_bytes(b"x")
    elif form == "incomplete_step":
        path = _checkpoint(path, 3, complete=False)
    elif form == "best_incomplete":
        _checkpoint(path, 2)
        _checkpoint(path, 4, complete=False)
        (path / "checkpoints" / "best.json").write_text(json.dumps({"tag": "step_000004", "step": 4}))
    elif form == "not_weights":
        path.write_text("not a model")
    with pytest.raises(UserError, match=fragment) as info:
        open_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_every_form_of_one_model_forecasts_identically(tmp_path_factory):
    """A real 4-step training run (~15 s with its tiny dataset)."""
    import torch

    from tests.support.tiny import make_tiny_dataset
    from tests.support.train import run_train
    from asteroid_hpc.train.export import export_checkpoint

    root = tmp_path_factory.mktemp("open-model")
    dataset = make_tiny_dataset(tmp_path_factory.getbasetemp() / "train-data")
    run = root / "run"
    run_train(dataset, run, "train.max_steps=4", "train.checkpoint_every=2", "train.val_every=2")
    best = run / "checkpoints" / json.loads((run / "checkpoints" / "best.json").read_text())["tag"]
    exported = export_checkpoint(run, root / "best.safetensors", best=True)
    folder = root / "export"
    folder.mkdir()
    shutil.copy(exported, folder / "model.safetensors")

    torch.manual_seed(0)
    reference = open_model(exported)
    assert not reference.training
    history = 1.5 * torch.randn(2, reference.cfg.history_frames, 9, 3)
    numbers = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
    expected = reference.forecast(history, numbers, 4)
    for form in (folder, best, run, run / "checkpoints"):
        model = open_model(form)
        assert not model.training and model.cfg == reference.cfg, form
        assert torch.equal(model.forecast(history, numbers, 4), expected), form

    # a half-written checkpoint is refused in one line
    newest = run / "checkpoints" / "step_000004"
    (newest / "COMPLETE").unlink()
    assert_user_error(run_cli("evaluate", newest, dataset, "-o", root / "eval"), "step_000004", "incomplete")
