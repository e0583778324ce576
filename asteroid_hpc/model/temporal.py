"""Temporal attention per atom across frames: encoder self-attention, causal decoder self-attention,
decoder cross-attention to the encoder memory. Tokens are laid out [B·N, T, D] (one sequence per atom)."""

from __future__ import annotations

import math
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
                keys_values: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """Attention of ``x`` to itself, to ``memory``, or to given (cached) ``keys_values``."""
        if keys_values is None:
            keys_values = self.keys_values(x if memory is None else memory)
        query = self._split(self.query(x))
        if self.training or keys_values[0].shape[2] > SHORT_SEQUENCE:
            mixed = F.scaled_dot_product_attention(query, *keys_values, is_causal=causal,
                                                   dropout_p=self.dropout if self.training else 0.0)
        elif query.shape[2] == 1:  # a decoding step (causality is moot: the one query is the latest token)
            mixed = _one_query(query, *keys_values)
        else:
            mixed = _short_attention(query, *keys_values, causal)
        return self.out(mixed.transpose(1, 2).flatten(-2))


# Inference on sequences of at most this many frames (the model's windows: 4-20) runs the attention as below:
# torch's CPU flash kernel tiles each (sequence, head) pair on its own, and its softmax over rows of ~10
# entries is slow; on the aspirin C model's 1 344 × 4 sequences of 10 frames these ran 1.8× faster.
SHORT_SEQUENCE = 32
LOG2_E = 1.0 / math.log(2.0)


def _one_query(query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Attention of one query [batch, H, 1, Dh] to keys and values [batch, H, T, Dh], element-wise (1.2-6×
    faster than the flash kernel for the decoder's T ≤ 10 cached steps)."""
    weights = torch.softmax((keys * query).sum(-1, keepdim=True) * query.shape[-1] ** -0.5, dim=-2)  # [b, H, T, 1]
    return (weights * values).sum(-2, keepdim=True)


def _short_attention(query: Tensor, keys: Tensor, values: Tensor, causal: bool) -> Tensor:
    """Attention of queries [batch, H, T, Dh] to keys and values [batch, H, S, Dh] as two batched products, the
    logits laid out [keys, queries] so that the softmax reduces over a non-contiguous axis (vectorised
    across the queries) and exp runs as exp2."""
    batch, heads, frames, width = query.shape
    queries = query.reshape(batch * heads, frames, width).transpose(1, 2)
    logits = torch.bmm(keys.reshape(batch * heads, -1, width), queries)  # [batch·H, S, T]
    if causal:  # key s is hidden from the queries t < s
        logits = logits.masked_fill(torch.ones_like(logits[0], dtype=torch.bool).tril(-1), float("-inf"))
    weights = (logits - logits.amax(1, keepdim=True)).mul_(width ** -0.5 * LOG2_E).exp2_()
    weights = weights.div_(weights.sum(1, keepdim=True))  # [batch·H, S, T]
    return torch.bmm(weights.transpose(1, 2), values.reshape(batch * heads, -1, width)).view(batch, heads, frames, width)


@dataclass
class StepCache:
    """One decoder block's state during step-by-step decoding: the keys and values of the steps decoded so
    far (self-attention) and of the encoder memory (cross-attention), so that step k costs one token."""

    memory: Optional[tuple[Tensor, Tensor]] = None
    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)


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

    def forward(self, x: Tensor, memory: Optional[Tensor] = None) -> Tensor:
        x = x + self.dropout(self.self_attention(self.self_norm(x), causal=self.causal))
        if memory is not None:
            x = x + self.dropout(self.cross_attention(self.cross_norm(x), self.memory_norm(memory)))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))

    def step(self, x: Tensor, memory: Tensor, cache: StepCache) -> Tensor:
        """The causal decoder's next token x [B·N, 1, D], attending to the tokens before it through
        ``cache`` (which it extends): equal to the last token of :meth:`forward` over all of them."""
        normed = self.self_norm(x)
        keys, values = self.self_attention.keys_values(normed)
        cache.keys.append(keys)
        cache.values.append(values)
        x = x + self.dropout(self.self_attention(
            normed, keys_values=(torch.cat(cache.keys, dim=2), torch.cat(cache.values, dim=2))))
        if cache.memory is None:
            cache.memory = self.cross_attention.keys_values(self.memory_norm(memory))
        x = x + self.dropout(self.cross_attention(self.cross_norm(x), keys_values=cache.memory))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))
