"""One way to open a model, whatever form MODEL takes (the same in every command and tool).

MODEL is exported weights (a ``.safetensors`` file, or an export folder holding one), a complete training
checkpoint folder (``step_NNNNNN`` with its ``COMPLETE`` marker), or a run (or ``checkpoints``) folder: its
best-validation checkpoint, else its newest complete one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import user_error
from .checkpoint import COMPLETE, TAG_PATTERN, CheckpointManager
from .export import best_checkpoint, checkpoint_model

WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ModelFile:
    """Where a model's weights are: a weights file, or a complete checkpoint folder."""

    path: Path
    is_checkpoint: bool


def locate_model(path: str | os.PathLike) -> ModelFile:
    """The weights file or the checkpoint folder that MODEL ``path`` names (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        return ModelFile(path, is_checkpoint=False)
    if not path.is_dir():
        raise user_error(path, "model not found (expected exported weights, a checkpoint folder or a run folder)")
    weights = sorted(path.glob(f"*{WEIGHTS_SUFFIX}"))
    if weights:  # an export folder: model.safetensors when there are several
        preferred = path / f"model{WEIGHTS_SUFFIX}"
        if preferred in weights:
            return ModelFile(preferred, is_checkpoint=False)
        if len(weights) != 1:
            raise user_error(path, f"expected one {WEIGHTS_SUFFIX} file in the model folder, found {len(weights)}")
        return ModelFile(weights[0], is_checkpoint=False)
    if TAG_PATTERN.match(path.name):
        if not CheckpointManager.is_complete(path):
            raise user_error(path, f"checkpoint is incomplete (no {COMPLETE} marker): its save was interrupted")
        return ModelFile(path, is_checkpoint=True)
    for directory in (path / "checkpoints", path):
        manager = CheckpointManager(directory, keep_last=2)
        if manager.best() is not None:
            return ModelFile(best_checkpoint(directory), is_checkpoint=True)
        newest = manager.latest()
        if newest is not None:
            return ModelFile(newest, is_checkpoint=True)
    raise user_error(path, f"no model here: no {WEIGHTS_SUFFIX} file and no complete checkpoint")


def open_model(path: str | os.PathLike, device: str = "cpu"):
    """The ASTEROID model that MODEL ``path`` names, on ``device``, in eval mode."""
    found = locate_model(path)
    if found.is_checkpoint:
        model, _ = checkpoint_model(found.path)
    else:
        from ..model import load_weights

        model = load_weights(found.path, device=device)
    return model.to(device).eval()
