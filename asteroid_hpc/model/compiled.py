"""Optional ``torch.compile`` of the model's spatial and temporal blocks: off unless a caller asks.

Measured (BENCHMARKS.md, FLOP/s section): on the aspirin model × 64 members the compiled blocks made a pass
about 16 % cheaper, after about 70 s of compilation in the first pass, so it pays only in long rollouts
(thousands of passes), not in the CLI's usual runs. Each block falls back to its eager forward, with one
log line, if compilation fails when first called (no C++ compiler, an unsupported platform or operator).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import torch
from torch import nn

from .spatial import SpatialBlock
from .temporal import TemporalBlock

log = logging.getLogger(__name__)


def compile_blocks(model: nn.Module, compiler: Callable[..., Callable] | None = None) -> int:
    """Replace the forward of every :class:`SpatialBlock` and :class:`TemporalBlock` of ``model`` (and the
    decoder blocks' one-step ``step``) by a compiled one (dynamic shapes: batches, frames and atom counts
    change between passes) that falls back to the eager method if compiling fails; returns how many blocks
    were wrapped (0 where ``torch.compile`` is not supported). ``compiler`` replaces ``torch.compile`` (tests)."""
    if compiler is None:
        if not torch._dynamo.is_dynamo_supported():
            log.info("torch.compile is not supported here: the model runs eagerly")
            return 0
        compiler = functools.partial(torch.compile, dynamic=True)
    blocks = [m for m in model.modules() if isinstance(m, (SpatialBlock, TemporalBlock))]
    for block in blocks:
        methods = ("forward", "step") if isinstance(block, TemporalBlock) and block.causal else ("forward",)
        for name in methods:
            setattr(block, name, _with_fallback(block, name, compiler(getattr(block, name))))
    return len(blocks)


def _with_fallback(block: nn.Module, name: str, compiled: Callable) -> Callable:
    eager = getattr(block, name)

    def forward(*args: Any, **kwargs: Any):
        try:
            return compiled(*args, **kwargs)
        except Exception as error:  # a compiler failure: run eagerly from now on (a model error re-raises there)
            log.warning("torch.compile failed for %s.%s (%s: %s): running it eagerly", type(block).__name__, name,
                        type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")
            setattr(block, name, eager)
            return eager(*args, **kwargs)

    return forward
