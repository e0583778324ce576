"""The DeepSpeed config, built in code from the typed :class:`TrainConfig`.

The global batch is derived from micro-batch × accumulation × the real world size, so the same
config runs on any number of ranks. ``train.deepspeed`` holds advanced DeepSpeed keys that are
deep-merged on top (it may not redefine the batch: that is what the typed fields are for).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from ..config.schema import TrainConfig
from ..errors import UserError

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
NEVER_PRINT = 2**31 - 1  # DeepSpeed's own periodic prints are replaced by ours


def resolve_backend(backend: str, device_type: str) -> str:
    """``auto`` → nccl on GPU, gloo on CPU. NCCL without a GPU is refused."""
    if backend == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise UserError("train.backend=nccl needs GPUs, and none is visible (use gloo or auto)")
    return backend


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` → bf16 on GPU, fp32 on CPU. fp16 on CPU is refused (DeepSpeed's loss scaler needs a GPU)."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise UserError("train.precision=fp16 needs a GPU; on CPU use fp32 or bf16")
    return precision


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    """``base`` with ``extra`` merged in recursively (``extra`` wins; neither input is modified)."""
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_deepspeed_config(train: TrainConfig, world_size: int, precision: str) -> dict:
    """The DeepSpeed config dict for ``world_size`` ranks and a resolved ``precision``."""
    fixed = [key for key in BATCH_KEYS if key in train.deepspeed]
    if fixed:
        raise UserError(f"train.deepspeed: {', '.join(fixed)} is derived from train.micro_batch_size, "
                        "train.grad_accum_steps and the world size; set those instead")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": train.micro_batch_size * train.grad_accum_steps * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # buffers (e.g. radial-basis centres) take the parameters' dtype; DeepSpeed keeps them fp32 otherwise
        "data_types": {"buffer_dtype": precision if precision != "fp32" else None},
        "zero_allow_untested_optimizer": True,  # our optimizer is torch.optim.AdamW (no fused-Adam JIT build)
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, train.deepspeed)
