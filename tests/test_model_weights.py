"""Weights files: the reference structure travels in the state, never in the config; files written before
that change (tests/fixtures, made by the old code) still load and forecast exactly as they did."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from asteroid_hpc.config.schema import ModelConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.model import build_model, load_weights, save_weights
from asteroid_hpc.model.weights import CONFIG_KEY

FIXTURES = Path(__file__).parent / "fixtures"


def _fixture_input() -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(FIXTURES / "old_reference_model_forecast.npz")
    return torch.from_numpy(data["history"]), torch.from_numpy(data["atomic_numbers"])


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {"config": json.loads(handle.metadata()[CONFIG_KEY]), "tensors": set(handle.keys())}


@pytest.mark.parametrize("name", ["reference", "plain"])
def test_models_exported_before_the_reference_moved_into_the_state_forecast_as_before(name, tmp_path):
    old_file = FIXTURES / f"old_{name}_model.safetensors"
    old = _metadata(old_file)
    assert "reference_coordinates" in old["config"] and "reference" not in old["tensors"]  # the old format
    history, elements = _fixture_input()
    expected = torch.from_numpy(np.load(FIXTURES / f"old_{name}_model_forecast.npz")["forecast"])
    model = load_weights(old_file)
    # float32 tolerance, not bits: the spatial attention's fast path sums in another order (test_spatial_fast.py)
    forecast = model.forecast(history, elements, 4)
    assert (forecast - expected).abs().max() <= 1e-5
    assert not hasattr(model.cfg, "reference_coordinates")
    if name == "reference":
        coordinates = torch.tensor(old["config"]["reference_coordinates"], dtype=torch.float32)
        assert model.cfg.reference_structure == "training_mean" and torch.equal(model.reference, coordinates)
    # saved again, it is in the new format and still forecasts the same
    again = save_weights(model, tmp_path / "new.safetensors")
    new = _metadata(again)
    assert "reference_coordinates" not in new["config"]
    assert ("reference" in new["tensors"]) == (name == "reference")
    assert torch.equal(load_weights(again).forecast(history, elements, 4), forecast)


def _tiny_config(**overrides) -> ModelConfig:
    base = dict(history_frames=3, delay_length=3, hidden_size=8, num_heads=2, encoder_layers=1, decoder_layers=1,
                num_global_tokens=1, num_rbf=4, num_elements=10, symmetry="equivariant")
    return ModelConfig(**{**base, **overrides})


def test_a_reference_model_file_without_its_reference_is_refused(tmp_path):
    from safetensors.torch import save_file

    model = build_model(_tiny_config(reference_structure="training_mean"), torch.zeros(5, 3))
    state = {k: v for k, v in model.state_dict().items() if k != "reference"}
    path = tmp_path / "noref.safetensors"
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(asdict(model.cfg))})
    with pytest.raises(UserError, match="noref.safetensors: .*holds no reference structure"):
        load_weights(path)


def test_a_model_config_metadata_that_is_not_a_config_is_refused(tmp_path):
    from safetensors.torch import save_file

    model = build_model(_tiny_config())
    for name, metadata in (("list", "[1, 2]"), ("unknown", json.dumps({**asdict(model.cfg), "colour": "red"}))):
        path = tmp_path / f"{name}.safetensors"
        save_file(model.state_dict(), str(path), metadata={CONFIG_KEY: metadata})
        with pytest.raises(UserError, match=f"{name}.safetensors: invalid model config"):
            load_weights(path)
