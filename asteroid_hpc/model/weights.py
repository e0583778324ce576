"""Model weights as safetensors (no pickle), with the ModelConfig stored as JSON metadata.

Everything train derives from data (the reference structure) is part of the state, beside the weights;
the metadata holds the user's model config and, apart from it, a description of the training windows
(``model.training_data``, :mod:`asteroid_hpc.data.coverage`; None for models saved before it was recorded).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import atomic_output
from ..config.schema import LEGACY_REFERENCE_KEY, ModelConfig
from ..errors import UserError, user_error
from .asteroid import Asteroid

CONFIG_KEY = "asteroid_model_config"
SIGNATURE_KEY = "asteroid_data_signature"  # the training inputs' atoms and frame spacing (data/signature.py)
TRAINING_DATA_KEY = "asteroid_training_data"


def save_weights(model: Asteroid, path: str | os.PathLike) -> Path:
    """Write ``model``'s parameters to ``path`` (written as ``path.tmp-<pid>``, then renamed)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {CONFIG_KEY: json.dumps(asdict(model.cfg), sort_keys=True)}
    if getattr(model, "data_signature", None):
        metadata[SIGNATURE_KEY] = json.dumps(model.data_signature, sort_keys=True)
    if getattr(model, "training_data", None) is not None:
        metadata[TRAINING_DATA_KEY] = json.dumps(model.training_data, sort_keys=True)
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)


def model_config_of(stored: dict) -> tuple[ModelConfig, list | None]:
    """A stored model config dict → (ModelConfig, the reference coordinates of an older dict or None).

    Raises TypeError/ValueError for what is not a model config (callers name the file).
    """
    if not isinstance(stored, dict):
        raise TypeError(f"expected a mapping, got {type(stored).__name__}")
    stored = dict(stored)
    legacy = stored.pop(LEGACY_REFERENCE_KEY, None)
    return ModelConfig(**stored), legacy or None  # [] (a model without reference) counts as none


def model_from_state(stored_config: dict, state: dict, where: str | os.PathLike,
                     training_data: dict | None = None) -> Asteroid:
    """Build the model of a stored model config dict and load ``state`` into it.

    The reference structure comes from the state's ``reference`` tensor, or from an older config's
    coordinates; a sampled local geometry from its ``local_geometry.*`` tensors. A mismatch is a one-line user error naming ``where``. ``training_data`` (the description
    of the training windows, or None) becomes ``model.training_data``.
    """
    try:
        cfg, legacy_reference = model_config_of(stored_config)
    except (TypeError, ValueError) as exc:
        raise user_error(where, f"invalid model config ({exc})") from None
    state = dict(state)
    if legacy_reference is not None and "reference" not in state:
        state["reference"] = torch.tensor(legacy_reference, dtype=torch.float32)
    reference = state.get("reference") if cfg.reference_structure == "training_mean" else None
    if cfg.reference_structure == "training_mean" and reference is None:
        raise user_error(where, "model.reference_structure=training_mean but the state holds no reference structure")
    prefix = "local_geometry."
    local_geometry = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)} or None
    if cfg.local_geometry == "sampled" and local_geometry is None:
        raise user_error(where, "model.local_geometry=sampled but the state holds no fitted local geometry")
    try:
        model = Asteroid(cfg, reference, local_geometry if cfg.local_geometry == "sampled" else None)
    except UserError as exc:
        raise user_error(where, str(exc)) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise user_error(where, f"weights do not match the stored config ({first})") from None
    if missing or unexpected:
        raise user_error(where, f"weights do not match the stored config (missing {sorted(missing)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]})")
    model.training_data = training_data
    return model


def load_weights(path: str | os.PathLike, device: str = "cpu") -> Asteroid:
    """Rebuild the model stored at ``path`` by :func:`save_weights` (its config comes from the metadata)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise user_error(path, "model weights file not found")
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise user_error(path, f"not a readable safetensors file ({exc})") from exc
    if CONFIG_KEY not in metadata:
        raise user_error(path, f"no {CONFIG_KEY} metadata: not written by asteroid-hpc save_weights")
    try:
        stored = json.loads(metadata[CONFIG_KEY])
        training_data = json.loads(metadata[TRAINING_DATA_KEY]) if TRAINING_DATA_KEY in metadata else None
    except json.JSONDecodeError as exc:
        raise user_error(path, f"invalid model config metadata ({exc})") from exc
    model = model_from_state(stored, state, path, training_data).to(device)
    model.data_signature = json.loads(metadata[SIGNATURE_KEY]) if SIGNATURE_KEY in metadata else None
    return model
