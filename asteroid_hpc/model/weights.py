"""Model weights as safetensors (no pickle), with the ModelConfig stored as JSON metadata."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..atomic import atomic_output
from ..config.schema import ModelConfig
from ..errors import user_error
from .asteroid import Asteroid

CONFIG_KEY = "asteroid_model_config"


def save_weights(model: Asteroid, path: str | os.PathLike) -> Path:
    """Write ``model``'s parameters to ``path`` (written as ``path.tmp-<pid>``, then renamed)."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={CONFIG_KEY: json.dumps(asdict(model.cfg), sort_keys=True)})
    return Path(path)


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
        cfg = ModelConfig(**json.loads(metadata[CONFIG_KEY]))
    except (TypeError, json.JSONDecodeError) as exc:
        raise user_error(path, f"invalid model config metadata ({exc})") from exc
    model = Asteroid(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise user_error(path, f"weights do not match the stored config ({first})") from None
    if missing or unexpected:
        raise user_error(path, f"weights do not match the stored config (missing {sorted(missing)[:3]}, "
                               f"unexpected {sorted(unexpected)[:3]})")
    return model.to(device)
