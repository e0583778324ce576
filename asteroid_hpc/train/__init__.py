"""DeepSpeed training: engine set-up, the training loop, checkpoints, metrics and export.

Heavy imports (torch, deepspeed) happen inside the functions, so importing this package is cheap.
"""

from .checkpoint import CheckpointManager, resolve_resume
from .ds_config import build_deepspeed_config, deep_merge, resolve_backend, resolve_precision
from .export import export_checkpoint
from .metrics import read_metrics
from .trainer import TrainResult, train

__all__ = [
    "CheckpointManager", "TrainResult", "build_deepspeed_config", "deep_merge", "export_checkpoint",
    "read_metrics", "resolve_backend", "resolve_precision", "resolve_resume", "train",
]
