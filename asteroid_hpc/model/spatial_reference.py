"""The einsum formulation of the spatial attention, kept as the definition of the model's FLOPs.

:meth:`SpatialBlock._attend <asteroid_hpc.model.spatial.SpatialBlock._attend>` computes the local path's
small contractions (q·k over a head's channels, Σ_k α_k v_k, Σ_k α_k (x_k − x_i)) as element-wise products
and sums, which ``torch.utils.flop_counter.FlopCounterMode`` does not see. :func:`reference_attend` is the
formulation it replaced, with every contraction an einsum (a counted batched product); it computes the same
function (tests/test_spatial_fast.py). A decoding step's one-query temporal attention is element-wise too
(``temporal._one_query``), and a short sequence's attention two batched products (``temporal._short_attention``).
:func:`counted_formulation` swaps them all back, so that a FLOP count is
the count of the model's mathematical operations whichever way they are executed; :func:`count_flops`
counts one call that way, with the temporal attention too (torch's counter has no formula for the CPU
flash-attention kernel that ``scaled_dot_product_attention`` runs on, and counted it as zero).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from . import temporal
from .graph import NeighborGraph
from .spatial import FullPairs, SpatialBlock


def reference_attend(block: SpatialBlock, query: Tensor, keys: Tensor, values: Tensor, positions: Tensor,
                     graph: Optional[NeighborGraph], global_kv: Optional[tuple[Tensor, Tensor]], atoms: slice,
                     return_vectors: bool, packed: Tensor | FullPairs) -> tuple[Tensor, Optional[Tensor]]:
    """``SpatialBlock._attend`` as einsums: attention output [S, n, H, Dh] (and vectors [S, n, H, 3]). Full
    attention takes the pairs' relative vectors (minimum images) from ``packed`` and nothing else; the local
    path does not use ``packed`` (the fast path's gather source)."""
    frames, n_atoms = keys.shape[:2]
    scale = 1.0 / math.sqrt(block.head_dim)
    query = query[:, atoms]
    if graph is None:  # full attention: every atom j of the frame is a neighbour of i
        relative = packed.relative[:, atoms]
        logits = torch.einsum("snhd,skhd->snkh", query, keys) * scale
        mix_equation, mix_values = "snkh,skhd->snhd", values
    else:  # gather the K listed neighbours of every atom: [S, n, K, ...]
        index = graph.index[:, atoms]
        flat = (index + torch.arange(frames, device=keys.device).view(-1, 1, 1) * n_atoms).reshape(-1)
        shape = (frames, index.shape[1], index.shape[2], block.num_heads, block.head_dim)
        relative = positions.reshape(-1, 3)[flat].view(*shape[:3], 3) - positions[:, atoms].unsqueeze(2)
        if graph.shift is not None:
            relative = relative + graph.shift[:, atoms]
        nb_keys = keys.reshape(frames * n_atoms, block.num_heads, -1)[flat].view(shape)
        nb_values = values.reshape(frames * n_atoms, block.num_heads, -1)[flat].view(shape)
        logits = torch.einsum("snhd,snkhd->snkh", query, nb_keys) * scale
        logits = logits.masked_fill(~graph.mask[:, atoms].unsqueeze(-1), float("-inf"))
        mix_equation, mix_values = "snkh,snkhd->snhd", nb_values
    distance = torch.sqrt(relative.pow(2).sum(-1) + 1e-12)
    logits = logits + block.rbf_bias(block.rbf(distance))
    if global_kv is not None:
        g_keys, g_values = global_kv
        g_logits = torch.einsum("snhd,sghd->sngh", query, g_keys) * scale
        attn = torch.softmax(torch.cat([logits, g_logits], dim=2), dim=2)
        local_attn, global_attn = attn[:, :, :-block.num_global_tokens], attn[:, :, -block.num_global_tokens:]
        mixed = (torch.einsum(mix_equation, local_attn, mix_values)
                 + torch.einsum("sngh,sghd->snhd", global_attn, g_values))
    else:
        local_attn = torch.softmax(logits, dim=2)
        mixed = torch.einsum(mix_equation, local_attn, mix_values)
    vectors = torch.einsum("snkh,snkc->snhc", local_attn, relative) if return_vectors else None
    return mixed, vectors


@contextlib.contextmanager
def counted_formulation() -> Iterator[None]:
    """Every :class:`SpatialBlock` runs :func:`reference_attend` inside the block and the temporal attention
    runs torch's attention kernel at inference too (its element-wise and batched-product forms would be
    counted in part or not at all); not thread-safe: for counting FLOPs and for tests."""
    fast = SpatialBlock._attend, temporal._one_query, temporal._short_attention
    SpatialBlock._attend = reference_attend
    temporal._one_query = F.scaled_dot_product_attention
    temporal._short_attention = lambda query, keys, values, causal: F.scaled_dot_product_attention(
        query, keys, values, is_causal=causal)
    try:
        yield
    finally:
        SpatialBlock._attend, temporal._one_query, temporal._short_attention = fast


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Torch's count for its other attention kernels: q·kᵀ and α·v (causal masks not discounted)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(run: Callable[[], Any]) -> int:
    """The FLOPs (matrix products and attention) of ``run()``, every contraction of the spatial attention and
    the temporal attention's products included; run it outside ``no_grad`` (the counter's module tracker
    fails there)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    with counted_formulation(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops()
