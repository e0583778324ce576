"""The STI (spatiotemporal information) head's tensor algebra and losses (docs/method.md §1-2).

A Hankel tensor ``hankel[b, t, i]`` ([B, m, L, N, 3]) holds, for each observed frame t, the predicted
coordinates of the absolute frame ``t + i`` (delay vector of frames t … t+L-1). All entries with the
same ``t + i`` lie on one anti-diagonal; a true Hankel tensor is constant along each of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from .thermal import gaussian_nll

if TYPE_CHECKING:  # pragma: no cover
    from ..config.schema import LossWeights
    from .asteroid import AsteroidOutput, ThermalOutput


def antidiagonal_means(hankel: Tensor) -> Tensor:
    """Mean of every anti-diagonal: [B, m, L, ...] -> [B, m+L-1, ...] (index = absolute frame t+i).

    Computed as one reference entry per anti-diagonal plus the mean deviation from it, so a true
    Hankel tensor gives back its values bit for bit.
    """
    m, length = hankel.shape[1], hankel.shape[2]
    rest = hankel.shape[3:]
    reference = torch.cat([hankel[:, :, 0], hankel[:, m - 1, 1:]], dim=1)  # entries (k, 0) and (m-1, k-m+1)
    deviation_sums = torch.zeros_like(reference)
    counts = hankel.new_zeros(m + length - 1)
    for i in range(length):  # L is small; each delay index i covers frames i … i+m-1
        deviation_sums[:, i:i + m] += hankel[:, :, i] - reference[:, i:i + m]
        counts[i:i + m] += 1
    return reference + deviation_sums / counts.view(1, -1, *([1] * len(rest)))


def readoff(hankel: Tensor) -> Tensor:
    """STI forecast of the L-1 frames after the window: anti-diagonal means of the unknown triangle.

    Frame m-1+j (j = 1 … L-1) is the mean of the L-j entries ``hankel[:, m-1+j-i, i]`` with i ≥ j.
    Returns [B, L-1, ...].
    """
    m = hankel.shape[1]
    return antidiagonal_means(hankel)[:, m:]


def consistency_loss(hankel: Tensor) -> Tensor:
    """Anti-diagonal variance: mean squared deviation of each entry from its anti-diagonal mean.

    Zero exactly when ``hankel`` is a Hankel tensor, positive otherwise.
    """
    means = antidiagonal_means(hankel)
    m, length = hankel.shape[1], hankel.shape[2]
    total = hankel.new_zeros(())
    for i in range(length):
        total = total + (hankel[:, :, i] - means[:, i:i + m]).pow(2).sum()
    return total / hankel.numel()


def primary_loss(hankel: Tensor, known_frames: Tensor) -> Tensor:
    """Masked primary STI loss: MSE of the entries whose absolute frame is in ``known_frames``.

    ``known_frames`` is [B, K, N, 3] (the history, followed by target frames when they are given);
    entries with t + i ≥ K are unknown and masked out.
    """
    m, length = hankel.shape[1], hankel.shape[2]
    n_known = known_frames.shape[1]
    total = hankel.new_zeros(())
    count = 0
    for i in range(length):
        rows = min(m, n_known - i)  # entries t with t + i < K
        if rows <= 0:
            break
        diff = hankel[:, :rows, i] - known_frames[:, i:i + rows]
        total = total + diff.pow(2).sum()
        count += diff.numel()
    return total / count


def sti_losses(output: "AsteroidOutput | ThermalOutput", history: Tensor, target: Optional[Tensor],
               weights: "LossWeights", conditional: Optional["ThermalOutput"] = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The four ASTEROID losses (Å², per coordinate), for a stochastic model a fifth, and their weighted sum.

    - ``primary``: masked MSE of the Hankel entries against every known frame (history, and the
      target frames when ``target`` is given);
    - ``conjugate``: MSE of the conjugate Ψ reconstruction against the observed frames;
    - ``consistency``: anti-diagonal variance of the Hankel tensor;
    - ``forecast``: MSE of the forecast against ``target`` (0 without a target);
    - ``nll`` (only for a :class:`ThermalOutput`, i.e. ``model.stochastic``, and when a target is given):
      Gaussian negative log-likelihood of the target under the teacher-forced steps (nats per coordinate,
      :func:`asteroid_hpc.model.thermal.gaussian_nll`), from ``conditional`` — the teacher-forced output
      when ``output`` is a free-running one — else from ``output`` (which must then be teacher-forced).

    Returns ``(total, parts)`` where ``parts`` holds detached scalar tensors.
    """
    known = history if target is None else torch.cat([history, target.to(history.dtype)], dim=1)
    parts = {
        "primary": primary_loss(output.hankel, known),
        "conjugate": (output.reconstruction - history).pow(2).mean(),
        "consistency": consistency_loss(output.hankel),
    }
    if target is None:
        parts["forecast"] = history.new_zeros(())
    else:
        horizon = min(target.shape[1], output.forecast.shape[1])
        parts["forecast"] = (output.forecast[:, :horizon] - target[:, :horizon]).pow(2).mean()
        conditional = output if conditional is None else conditional
        if getattr(conditional, "scale", None) is not None:  # a ThermalOutput
            parts["nll"] = gaussian_nll(conditional.forecast, conditional.scale, target)
    total = sum(getattr(weights, name) * value for name, value in parts.items())
    return total, {name: value.detach() for name, value in parts.items()}
