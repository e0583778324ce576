"""Training on a periodic dataset: every batch's box reaches the model (train step and validation), the model
is signed periodic, and the exported model refuses an open input and forecasts a periodic one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.data import preprocess
from tests.support.ensemble import water_box_frames, water_box_trajectory, wrap_atoms
from tests.support.tiny import TINY_CONFIG, tiny_config
from tests.support.train import run_train


@pytest.fixture(scope="module")
def periodic_dataset(tmp_path_factory) -> Path:
    """150 frames of a wrapped 192-atom water box, preprocessed with the tiny config."""
    root = tmp_path_factory.mktemp("periodic-train")
    trajectory = water_box_trajectory(root / "water.nc", n_frames=150)
    preprocess(trajectory, "-o", root / "ds", "--config", TINY_CONFIG)
    return root / "ds"


def test_window_cells_are_the_last_history_frames_box():
    from asteroid_hpc.geometry import cell_matrix
    from asteroid_hpc.train.batches import window_cells

    cells = torch.tensor([[10.0, 11.0, 12.0, 90.0, 90.0, 90.0]]).repeat(2, 6, 1)
    cells[:, 3, :3] = torch.tensor([20.0, 21.0, 22.0])  # an NPT box: the last history frame's (index m - 1 = 3)
    got = window_cells({"cell": cells.double()}, history_frames=4, dtype=torch.float32)
    assert got.shape == (2, 3, 3) and got.dtype == torch.float32
    assert np.allclose(got[0].numpy(), cell_matrix([20.0, 21.0, 22.0, 90.0, 90.0, 90.0]))
    assert window_cells({"history": torch.zeros(2, 4, 3, 3)}, 4) is None  # an open system's batch


class _Engine:
    """The part of DeepSpeed's engine that one optimizer step uses, around the real model."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.module.zero_grad()

    def zero_optimization_stage(self):
        return 0


def test_the_train_step_and_validation_give_the_model_the_box(periodic_dataset):
    from asteroid_hpc.data import DistributedWindowSampler, WindowDataset
    from asteroid_hpc.data.manifest import read_manifest
    from asteroid_hpc.data.signature import signature_of_manifest
    from asteroid_hpc.model import build_model
    from asteroid_hpc.train.batches import BatchStream
    from asteroid_hpc.train.step import optimizer_step
    from asteroid_hpc.train.validate import per_lead_mse

    cfg = tiny_config(f"data.dataset={periodic_dataset}")
    model = build_model(cfg.model)
    model.data_signature = signature_of_manifest(read_manifest(periodic_dataset))
    assert model.data_signature["periodic"] is True
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("cell")), with_kwargs=True)
    train_set = WindowDataset(periodic_dataset, "train", 4, 2)
    stream = BatchStream(train_set, DistributedWindowSampler(train_set, rank=0, world_size=1, seed=0), 2)
    optimizer_step(_Engine(model), stream, cfg.train, "cpu", torch.float32, want_grad_norm=False)
    per_lead_mse(model, WindowDataset(periodic_dataset, "val", 4, 2), [0, 1], 2, 2, "cpu", torch.float32)
    assert len(seen) == cfg.train.grad_accum_steps + 1
    assert all(cell is not None and cell.shape == (2, 3, 3) for cell in seen)
    assert torch.allclose(seen[0][0].diagonal(), torch.tensor([12.4, 12.4, 12.4]))


def test_periodic_training_exports_a_model_that_refuses_open_inputs(periodic_dataset, tmp_path):
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.geometry import cell_matrix
    from asteroid_hpc.model import load_weights
    from asteroid_hpc.train.export import export_checkpoint

    run_dir = tmp_path / "run"
    run_train(periodic_dataset, run_dir, "train.max_steps=3", "train.checkpoint_every=3", "train.val_every=3")
    model = load_weights(export_checkpoint(run_dir, tmp_path / "model.safetensors"))
    assert model.data_signature["periodic"] is True
    frames, numbers, _, cell = water_box_frames(n_frames=4)
    history = torch.from_numpy(wrap_atoms(frames, cell)[None].astype(np.float32))
    z = torch.from_numpy(numbers)
    with pytest.raises(UserError, match="trained on periodic systems"):
        model.forecast(history, z, 2)
    forecast = model.forecast(history, z, 2, cell=torch.from_numpy(cell_matrix(cell)).float())
    assert forecast.shape == (1, 2, len(numbers), 3) and torch.isfinite(forecast).all()
