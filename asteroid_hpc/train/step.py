"""One optimizer step (micro-batches, STI losses, gradient norm) and what the training loop needs around it:
the learning-rate schedule, seeding, memory use."""

from __future__ import annotations

import math
from typing import Optional

from .batches import BatchStream, box_keywords

# nll: 0 for deterministic models; energy_score: 0 unless train.stochastic_loss is an energy score (then the
# forecast term is logged, unweighted, as the MSE of one sampled rollout)
LOSS_TERMS = ("primary", "conjugate", "consistency", "forecast", "nll", "energy_score")


def lr_lambda(warmup_steps: int, decay_steps: int):
    """Linear warm-up, then cosine decay to 10 % of the peak at ``decay_steps`` (constant after)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def memory_mb(device: str) -> dict:
    """This process's resident memory (and the CUDA peak on a GPU), MB."""
    import psutil
    import torch

    out = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def optimizer_step(engine, stream: BatchStream, t, device: str, dtype, want_grad_norm: bool):
    """One optimizer step over ``t.grad_accum_steps`` micro-batches.

    Returns this rank's mean [total, *LOSS_TERMS] (float64, CPU) and, when asked and DeepSpeed does not
    record it, the gradient norm before clipping.
    """
    import torch

    sums = torch.zeros(len(LOSS_TERMS) + 1, dtype=torch.float64)
    own_norm = None
    for micro in range(t.grad_accum_steps):
        batch = stream.next()
        history = batch["history"].to(device=device, dtype=dtype)
        if t.input_noise_angstrom > 0:  # the targets stay the true frames: the model learns to correct the window
            history = history + t.input_noise_angstrom * torch.randn_like(history)
        target = batch["target"].to(device=device, dtype=dtype)
        numbers = batch["atomic_numbers"].to(device)
        box = box_keywords(batch, history.shape[1], device, dtype)
        total, parts = _losses(engine, history, numbers, target, box, t)
        engine.backward(total)
        if want_grad_norm and micro == t.grad_accum_steps - 1:
            own_norm = _plain_grad_norm(engine)
        engine.step()
        sums += torch.tensor([float(total.detach())] + [float(parts.get(k, 0.0)) for k in LOSS_TERMS],
                             dtype=torch.float64)
    return sums / t.grad_accum_steps, own_norm


def _losses(engine, history, numbers, target, box: dict, t):
    """The weighted loss and its detached parts for one micro-batch (``t``: the train config)."""
    from ..model import sti_losses

    teacher = target if t.teacher_forcing else None  # None: the loss sees the model's own rollout
    if not is_stochastic(engine):
        return sti_losses(engine(history, numbers, target.shape[1], teacher, **box), history, target, t.loss_weights)
    if t.stochastic_loss != "nll":
        return _energy_score_losses(engine, history, numbers, target, box, t)
    # free-running: the path of the means; the NLL needs teacher-forced steps
    output = engine(history, numbers, target.shape[1], teacher, mean_only=True, **box)
    conditional = output if teacher is not None else engine(history, numbers, target.shape[1], target, **box)
    return sti_losses(output, history, target, t.loss_weights, conditional)


def _energy_score_losses(engine, history, numbers, target, box: dict, t):
    """``train.stochastic_loss`` "energy_score*": two sampled free-running rollouts of every window (the batch
    doubled, independent noise per row, gradients through the samples fed forward), scored by the fair energy
    score (:func:`~asteroid_hpc.model.thermal.rollout_energy_score`, weight ``loss_weights.forecast``); the STI
    terms from the first pass as ever; the NLL of the teacher-forced steps only when its weight is > 0 (one more
    pass)."""
    import dataclasses

    from ..model import AsteroidOutput, sti_losses
    from ..model.thermal import rollout_energy_score

    batch, horizon = history.shape[0], target.shape[1]
    doubled_box = {key: value.repeat(2, *([1] * (value.dim() - 1))) for key, value in box.items()}
    doubled_numbers = numbers.repeat(2, 1) if numbers.dim() == 2 else numbers
    sampled = engine(history.repeat(2, 1, 1, 1), doubled_numbers, horizon, **doubled_box)
    first, second = sampled.forecast[:batch], sampled.forecast[batch:]
    # the first pass (Hankel tensor, reconstruction) sees only the history: the first half's, as a plain output
    # (no σ: the NLL must never score a sampled rollout)
    output = AsteroidOutput(first, *(part[:batch] for part in sampled[1:4]))
    use_nll = t.loss_weights.nll > 0
    conditional = engine(history, numbers, horizon, target, **box) if use_nll else None
    weights = dataclasses.replace(t.loss_weights, forecast=0.0)  # the MSE of a sample: logged only
    total, parts = sti_losses(output, history, target, weights, conditional)
    score = rollout_energy_score(first, second, target, history[:, -1:], t.stochastic_loss)
    parts["energy_score"] = score.detach()
    return total + t.loss_weights.forecast * score, parts


def is_stochastic(engine) -> bool:
    """Whether the engine's (or plain) module is a ``model.stochastic`` model."""
    return bool(getattr(getattr(_module(engine), "cfg", None), "stochastic", False))


def samples(engine) -> bool:
    """Whether the engine's (or plain) module draws random numbers free-running (stochastic, local geometry)."""
    return bool(getattr(_module(engine), "samples", False))


def _module(engine):
    return getattr(engine, "module", engine)


def _plain_grad_norm(engine) -> Optional[float]:
    """Global gradient 2-norm before clipping, for ZeRO-0 in fp32 (where DeepSpeed does not record it):
    its gradients are whole and already averaged over ranks after the boundary ``backward``."""
    import torch

    if engine.zero_optimization_stage() != 0:
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
