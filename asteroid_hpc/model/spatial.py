"""Local-global spatial self-attention within one frame (docs/method.md §2, "Spatial").

Each atom attends, in one softmax, to (a) its neighbours within the cutoff - with a learned bias on
radial basis functions of the distance - and (b) G learned global tokens. The global tokens first
gather from every atom of the frame (softmax over all atoms), so information crosses the whole system
in one block. Cost per frame: O(N·K·D) local + O(N·G·D) global, linear in N at fixed neighbour density.

``attention="full"`` replaces the neighbour list by all atoms (same parameters, same RBF bias): with
a cutoff larger than the system and ``max_neighbors >= N`` the local path is mathematically the full
path. In a periodic box every relative vector x_j − x_i is a minimum image: the local path adds each
pair's lattice shift from the neighbour list, the full path (given the ``cell``) takes the minimum image
of every pair (:mod:`asteroid_hpc.model.periodic`).

Domain decomposition: the global-token gather is a softmax over *all* atoms of the system. It is
computed from per-partition statistics - ``max_logit`` [S, G, H], ``sum_exp`` [S, G, H] (Σ exp(l - max))
and ``weighted_sum`` [S, G, H, Dh] (Σ exp(l - max)·v) - which are passed to ``reduce(max_logit,
sum_exp, weighted_sum) -> (max_logit, sum_exp, weighted_sum)``. The default is the identity (the
partition is the whole system); the model passes its domain's ``global_reduce`` (which combines the
statistics of all ranks, e.g. ``merge_softmax_partials(group.allgather(stats))``) and ``owned_mask``,
so that halo atoms are not counted twice (:mod:`asteroid_hpc.model.domain`). The statistics are float64,
so that 1 and D domains give the same gathered tokens to the last float32 bit (float32 partial sums
differ by rounding, and a long iterative rollout amplifies such differences).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .graph import NeighborGraph
from .periodic import minimum_image

SoftmaxStats = tuple[Tensor, Tensor, Tensor]
BLOCK_ROWS = 4096  # (frame, atom) rows per local-attention block: measured fastest of 1k/4k/16k/all
GlobalReduce = Callable[[Tensor, Tensor, Tensor], SoftmaxStats]


def local_reduce(max_logit: Tensor, sum_exp: Tensor, weighted_sum: Tensor) -> SoftmaxStats:
    """Default ``reduce`` hook: the statistics already cover the whole system."""
    return max_logit, sum_exp, weighted_sum


def merge_softmax_partials(partials: Sequence[SoftmaxStats]) -> SoftmaxStats:
    """Combine (max_logit, sum_exp, weighted_sum) of disjoint atom partitions into those of their union."""
    max_all = torch.stack([p[0] for p in partials]).amax(dim=0)
    sum_exp = torch.zeros_like(partials[0][1])
    weighted = torch.zeros_like(partials[0][2])
    for max_logit, part_sum, part_weighted in partials:
        scale = torch.exp(max_logit - max_all)
        sum_exp = sum_exp + part_sum * scale
        weighted = weighted + part_weighted * scale.unsqueeze(-1)
    return max_all, sum_exp, weighted


class RadialBasis(nn.Module):
    """Gaussian radial basis functions of distance, centres evenly spaced on [0, cutoff_angstrom]."""

    def __init__(self, num_rbf: int, cutoff_angstrom: float):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, cutoff_angstrom, num_rbf), persistent=False)
        self.gamma = 1.0 / (cutoff_angstrom / max(num_rbf - 1, 1)) ** 2 if num_rbf > 1 else 1.0 / cutoff_angstrom ** 2

    def forward(self, distance_angstrom: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (distance_angstrom.unsqueeze(-1) - self.centres.to(distance_angstrom.dtype)) ** 2)


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, 2 * hidden_size), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden_size, hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SpatialBlock(nn.Module):
    """Pre-norm local-global attention over the atoms of each frame, then a feed-forward layer.

    Input ``h`` [S, N, D] (S frames), ``positions`` [S, N, 3] in Å, a periodic ``cell`` [S, 3, 3] for full
    attention (local attention takes the shifts of the neighbour list). Returns the updated features and
    ``vectors`` [S, N, H, 3] = Σ_j α_ij (x_j − x_i) per head (rotation-equivariant, translation-invariant),
    or None when not requested.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_rbf: int, cutoff_angstrom: float,
                 num_global_tokens: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.norm = nn.LayerNorm(hidden_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)  # a key bias cancels in softmax
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.rbf = RadialBasis(num_rbf, cutoff_angstrom)
        self.rbf_bias = nn.Linear(num_rbf, num_heads, bias=False)  # a constant bias cancels in softmax
        self.num_global_tokens = num_global_tokens
        if num_global_tokens:
            self.global_tokens = nn.Parameter(torch.randn(num_global_tokens, hidden_size) * 0.02)
            self.global_query = nn.Linear(hidden_size, hidden_size)
            self.global_out = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = FeedForward(hidden_size, dropout)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim)

    def _gather_global(self, keys: Tensor, values: Tensor, owned_mask: Optional[Tensor],
                       reduce: GlobalReduce) -> tuple[Tensor, Tensor]:
        """Global tokens attend to all atoms; returns their keys and values [S, G, H, Dh]."""
        frames = keys.shape[0]
        tokens = self.global_tokens.unsqueeze(0).expand(frames, -1, -1)  # [S, G, D]
        query = self._heads(self.global_query(tokens))  # [S, G, H, Dh]
        logits = torch.einsum("sghd,snhd->sghn", query, keys) / math.sqrt(self.head_dim)
        if owned_mask is not None:  # [N] (every frame) or [S, N]
            logits = logits.masked_fill(~owned_mask.view(-1, 1, 1, owned_mask.shape[-1]), float("-inf"))
        max_logit = logits.amax(dim=-1).detach()
        max_logit = torch.where(torch.isfinite(max_logit), max_logit, torch.zeros_like(max_logit))
        # float64 sums: the same total whichever way the atoms are split into domains (then merged by reduce)
        weights = torch.exp(logits.double() - max_logit.double().unsqueeze(-1))
        stats = reduce(max_logit.double(), weights.sum(-1), torch.einsum("sghn,snhd->sghd", weights, values.double()))
        gathered = (stats[2] / stats[1].unsqueeze(-1)).to(values.dtype)
        tokens = tokens + self.global_out(gathered.flatten(-2))
        return self._heads(self.key(tokens)), self._heads(self.value(tokens))

    def forward(self, h: Tensor, positions: Tensor, graph: Optional[NeighborGraph], *,
                owned_mask: Optional[Tensor] = None, reduce: GlobalReduce = local_reduce,
                return_vectors: bool = False, cell: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        frames, n_atoms, _ = h.shape
        x = self.norm(h)
        query, keys, values = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        global_kv = self._gather_global(keys, values, owned_mask, reduce) if self.num_global_tokens else None
        # Local attention in blocks of atoms (all frames), so that the [S, atoms, K, ...] intermediates
        # stay cache-sized and the cost per atom does not grow with N (BENCHMARKS.md, model forward).
        step = n_atoms if graph is None else max(1, BLOCK_ROWS // frames)
        parts = [self._attend(query, keys, values, positions, graph, global_kv, slice(a, a + step), return_vectors,
                              cell) for a in range(0, n_atoms, step)]
        mixed = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts], dim=1)
        vectors = None
        if return_vectors:
            vectors = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts], dim=1)
        h = h + self.dropout(self.out(mixed.flatten(-2)))
        h = h + self.dropout(self.ffn(self.ffn_norm(h)))
        return h, vectors

    def _attend(self, query: Tensor, keys: Tensor, values: Tensor, positions: Tensor,
                graph: Optional[NeighborGraph], global_kv: Optional[tuple[Tensor, Tensor]], atoms: slice,
                return_vectors: bool, cell: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Attention output [S, n, H, Dh] (and vectors [S, n, H, 3]) of the atoms in ``atoms``."""
        frames, n_atoms = keys.shape[:2]
        scale = 1.0 / math.sqrt(self.head_dim)
        query = query[:, atoms]
        if graph is None:  # full attention: every atom j of the frame is a neighbour of i
            relative = minimum_image(positions.unsqueeze(1) - positions[:, atoms].unsqueeze(2), cell)  # [S, n(i), N(j), 3]
            logits = torch.einsum("snhd,skhd->snkh", query, keys) * scale
            mix_equation, mix_values = "snkh,skhd->snhd", values
        else:  # gather the K listed neighbours of every atom: [S, n, K, ...]
            index = graph.index[:, atoms]
            frames_offset = torch.arange(frames, device=keys.device).view(-1, 1, 1) * n_atoms
            flat = (index + frames_offset).reshape(-1)
            shape = (frames, index.shape[1], index.shape[2], self.num_heads, self.head_dim)
            relative = positions.reshape(-1, 3)[flat].view(*shape[:3], 3) - positions[:, atoms].unsqueeze(2)
            if graph.shift is not None:  # periodic: the minimum image of each pair
                relative = relative + graph.shift[:, atoms]
            nb_keys = keys.reshape(frames * n_atoms, self.num_heads, -1)[flat].view(shape)
            nb_values = values.reshape(frames * n_atoms, self.num_heads, -1)[flat].view(shape)
            logits = torch.einsum("snhd,snkhd->snkh", query, nb_keys) * scale
            logits = logits.masked_fill(~graph.mask[:, atoms].unsqueeze(-1), float("-inf"))
            mix_equation, mix_values = "snkh,snkhd->snhd", nb_values
        distance = torch.sqrt(relative.pow(2).sum(-1) + 1e-12)
        logits = logits + self.rbf_bias(self.rbf(distance))
        if global_kv is not None:
            g_keys, g_values = global_kv
            g_logits = torch.einsum("snhd,sghd->sngh", query, g_keys) * scale
            attn = torch.softmax(torch.cat([logits, g_logits], dim=2), dim=2)
            local_attn, global_attn = attn[:, :, :-self.num_global_tokens], attn[:, :, -self.num_global_tokens:]
            mixed = torch.einsum(mix_equation, local_attn, mix_values) + torch.einsum("sngh,sghd->snhd", global_attn, g_values)
        else:
            local_attn = torch.softmax(logits, dim=2)
            mixed = torch.einsum(mix_equation, local_attn, mix_values)
        vectors = torch.einsum("snkh,snkc->snhc", local_attn, relative) if return_vectors else None
        return mixed, vectors
