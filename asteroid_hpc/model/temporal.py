"""Temporal attention per atom across frames: encoder self-attention, causal decoder self-attention,
decoder cross-attention to the encoder memory. Tokens are laid out [B·N, T, D] (one sequence per atom)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spatial import FeedForward


class Attention(nn.Module):
    """Multi-head scaled dot-product attention (self- or cross-) on [batch, T, D] sequences."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)  # a key bias cancels in softmax
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``source`` [batch, T, D], split into heads: what a cache keeps."""
        return self._split(self.key(source)), self._split(self.value(source))

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, causal: bool = False,
                keys_values: Optional[tuple[Tensor, Tensor]] = None, short_kernels: bool = False) -> Tensor:
        """Attention of ``x`` to itself, to ``memory``, or to given (cached) ``keys_values``; ``short_kernels``:
        see :func:`use_short_kernels`."""
        if keys_values is None:
            keys_values = self.keys_values(x if memory is None else memory)
        query = self._split(self.query(x))
        if (not short_kernels or self.training or query.device.type != "cpu"
                or keys_values[0].shape[2] > SHORT_SEQUENCE):
            mixed = F.scaled_dot_product_attention(query, *keys_values, is_causal=causal,
                                                   dropout_p=self.dropout if self.training else 0.0)
        elif query.shape[2] == 1:  # a decoding step (causality is moot: the one query is the latest token)
            mixed = _one_query(query, *keys_values)
        else:
            mixed = _short_attention(query, *keys_values, causal)
        return self.out(mixed.transpose(1, 2).flatten(-2))


# Inference on the CPU, on sequences of at most this many frames (the model's windows: 4-20), runs the attention
# as below when there are many of them: torch's CPU flash kernel tiles each (sequence, head) pair on its own, and
# its softmax over rows of ~10 entries is slow; on the aspirin C model's 1 344 × 4 sequences of 10 frames these
# ran 1.8× faster. Below SHORT_KERNELS_MIN (sequences × heads) the fixed cost of their extra operations wins
# (crossover measured at 336-672 on that model). Training and other devices keep torch's kernels.
SHORT_SEQUENCE = 32
SHORT_KERNELS_MIN = 512


def use_short_kernels(systems: int, atoms_per_system: int, heads: int) -> bool:
    """Whether a pass over ``systems`` × ``atoms_per_system`` atom sequences runs the short-sequence kernels.
    Decided from the whole system's atoms, never from a spatial domain's: every domain then decides alike,
    and 1 and D domains agree bit for bit (the two kernels agree to rounding only)."""
    return systems * atoms_per_system * heads >= SHORT_KERNELS_MIN


def _one_query(query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Attention of one query [batch, H, 1, Dh] to keys and values [batch, H, T, Dh], element-wise over frames
    first: the softmax and the weighted sum run over the outermost axis, vectorised across batch and heads,
    contiguous when the keys and values are laid out frames first (:func:`frames_first`, as the decoder's
    cache keeps them). 2.2-3× faster than the flash kernel for 3-10 cached steps (9× for one)."""
    keys, values = keys.permute(2, 0, 1, 3), values.permute(2, 0, 1, 3)  # [T, batch, H, Dh]
    weights = _softmax_first(keys * query.squeeze(2), query.shape[-1])
    return _sum_first(weights.unsqueeze(-1) * values).unsqueeze(2)


# Written out below: each sequence's result must not depend on the size of the batch it shares (spatial domains
# run batches of different sizes, and 1 and D domains agree bit for bit), which torch.softmax(dim=0) (another
# rounding past its last full vector), .sum(0) (another summation order from 5 terms on, by the batch's size)
# and exp2 (another rounding in its scalar tail) do not guarantee.

def _softmax_first(products: Tensor, width: int) -> Tensor:
    """softmax over axis 0 of the logits Σ_d ``products`` / √width."""
    logits = products.sum(-1)
    weights = (logits - logits.amax(0)).mul_(width ** -0.5).exp_()
    return weights.div_(_sum_first(weights))


def _sum_first(x: Tensor) -> Tensor:
    """The sum over axis 0 (a few frames), term by term in order."""
    total = x[0].clone()
    for term in x[1:]:
        total += term
    return total


def frames_first(x: Tensor) -> Tensor:
    """``x`` [batch, H, T, Dh] (the same values and shape) laid out in memory as [T, batch, H, Dh]."""
    return x.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)


def _short_attention(query: Tensor, keys: Tensor, values: Tensor, causal: bool) -> Tensor:
    """Attention of queries [batch, H, T, Dh] to keys and values [batch, H, S, Dh] as two batched products, the
    logits laid out [keys, queries] so that the softmax reduces over a non-contiguous axis (vectorised
    across the queries; written out, as in :func:`_softmax_first`)."""
    batch, heads, frames, width = query.shape
    queries = query.reshape(batch * heads, frames, width).transpose(1, 2)
    logits = torch.bmm(keys.reshape(batch * heads, -1, width), queries)  # [batch·H, S, T]
    if causal:  # key s is hidden from the queries t < s
        logits = logits.masked_fill(torch.ones_like(logits[0], dtype=torch.bool).tril(-1), float("-inf"))
    weights = (logits - logits.amax(1, keepdim=True)).mul_(width ** -0.5).exp_()
    weights = weights.div_(weights.sum(1, keepdim=True))  # [batch·H, S, T]
    mixed = torch.bmm(weights.transpose(1, 2), values.reshape(batch * heads, -1, width))  # [batch·H, T, Dh]
    return mixed.view(batch, heads, frames, width)


@dataclass
class StepCache:
    """One decoder block's state during step-by-step decoding: the keys and values of the steps decoded so
    far (self-attention) and of the encoder memory (cross-attention), so that step k costs one token."""

    memory: Optional[tuple[Tensor, Tensor]] = None  # [B·N, H, T, Dh] each, laid out frames first
    keys: list[Tensor] = field(default_factory=list)  # per step [1, B·N, H, Dh] (frames first)
    values: list[Tensor] = field(default_factory=list)

    def steps(self) -> tuple[Tensor, Tensor]:
        """The cached steps' keys and values [B·N, H, k, Dh] (laid out frames first)."""
        return torch.cat(self.keys).permute(1, 2, 0, 3), torch.cat(self.values).permute(1, 2, 0, 3)


class TemporalBlock(nn.Module):
    """Pre-norm self-attention across frames (causal in the decoder), optional cross-attention to the
    encoder memory, then a feed-forward layer."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, *, causal: bool, cross: bool):
        super().__init__()
        self.causal = causal
        self.self_norm = nn.LayerNorm(hidden_size)
        self.self_attention = Attention(hidden_size, num_heads, dropout)
        if cross:
            self.cross_norm = nn.LayerNorm(hidden_size)
            self.memory_norm = nn.LayerNorm(hidden_size)
            self.cross_attention = Attention(hidden_size, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForward(hidden_size, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Optional[Tensor] = None, short_kernels: bool = False) -> Tensor:
        x = x + self.dropout(self.self_attention(self.self_norm(x), causal=self.causal, short_kernels=short_kernels))
        if memory is not None:
            x = x + self.dropout(self.cross_attention(self.cross_norm(x), self.memory_norm(memory),
                                                      short_kernels=short_kernels))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))

    def step(self, x: Tensor, memory: Tensor, cache: StepCache, short_kernels: bool = False) -> Tensor:
        """The causal decoder's next token x [B·N, 1, D], attending to the tokens before it through
        ``cache`` (which it extends): equal to the last token of :meth:`forward` over all of them."""
        normed = self.self_norm(x)
        keys, values = self.self_attention.keys_values(normed)  # [B·N, H, 1, Dh]
        cache.keys.append(keys.permute(2, 0, 1, 3))
        cache.values.append(values.permute(2, 0, 1, 3))
        x = x + self.dropout(self.self_attention(normed, keys_values=cache.steps(), short_kernels=short_kernels))
        if cache.memory is None:
            cache.memory = tuple(frames_first(t) for t in self.cross_attention.keys_values(self.memory_norm(memory)))
        x = x + self.dropout(self.cross_attention(self.cross_norm(x), keys_values=cache.memory,
                                                  short_kernels=short_kernels))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))
