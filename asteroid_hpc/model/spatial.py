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
differ by rounding, and a long iterative rollout amplifies such differences); full attention, which never runs
on domains, sums in float32.

Execution: the local path gathers each neighbour's key, value and position in one ``index_select`` and does
the per-head contractions over a few channels element-wise (batched products that small mostly move
data); :mod:`asteroid_hpc.model.spatial_reference` keeps the einsum formulation it replaced - the same
function, and what the FLOP count counts.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from .graph import NeighborGraph
from .periodic import minimum_image

SoftmaxStats = tuple[Tensor, Tensor, Tensor]
BLOCK_ROWS = 4096  # (frame, atom) rows per local-attention block: measured fastest of 1k/4k/16k/all
GlobalReduce = Callable[[Tensor, Tensor, Tensor], SoftmaxStats]
# The radial basis' exponents are clamped here: exp(-80) ≈ 2e-35 is far below what float32 resolves in any
# sum it joins, and exp of float32 arguments that underflow (most pairs at most centres) took 10× longer
# per element on the development CPU (AVX-512), a third of the aspirin model's spatial time.
RBF_MIN_EXPONENT = -80.0


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


def sum_last(x: Tensor) -> Tensor:
    """``x.sum(-1)`` as a product with a vector of ones: 2× faster than a sum over 3-16 contiguous entries."""
    return x @ torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)


class RadialBasis(nn.Module):
    """Gaussian radial basis functions of distance, centres evenly spaced on [0, cutoff_angstrom]."""

    def __init__(self, num_rbf: int, cutoff_angstrom: float):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, cutoff_angstrom, num_rbf), persistent=False)
        self.gamma = 1.0 / (cutoff_angstrom / max(num_rbf - 1, 1)) ** 2 if num_rbf > 1 else 1.0 / cutoff_angstrom ** 2

    def forward(self, distance_angstrom: Tensor, basis_first: bool = False) -> Tensor:
        """[..., num_rbf], or with ``basis_first`` [num_rbf, ...]."""
        centres = self.centres.to(distance_angstrom.dtype)
        if basis_first:
            shifted = distance_angstrom.unsqueeze(0) - centres.view(-1, *([1] * distance_angstrom.dim()))
        else:
            shifted = distance_angstrom.unsqueeze(-1) - centres
        if distance_angstrom.requires_grad:
            return torch.exp((-self.gamma * shifted ** 2).clamp_min(RBF_MIN_EXPONENT))
        return shifted.square_().mul_(-self.gamma).clamp_min_(RBF_MIN_EXPONENT).exp_()  # one buffer, in place


class RadialBias(nn.Linear):
    """Radial basis features -> one logit bias per head (no bias term: a constant cancels in the softmax).

    As ``nn.Linear`` ([..., num_rbf] -> [..., H]); with ``basis_first``, [num_rbf, ...] -> [H, ...]: one wide
    product weight × features instead of a product with H (2-4) output columns, 4× faster here.
    """

    def __init__(self, num_rbf: int, num_heads: int):
        super().__init__(num_rbf, num_heads, bias=False)

    def forward(self, features: Tensor, basis_first: bool = False) -> Tensor:
        if not basis_first:
            return super().forward(features)
        return (self.weight @ features.reshape(features.shape[0], -1)).view(-1, *features.shape[1:])


class FullPairs(NamedTuple):
    """Every pair's geometry in full attention, which depends on the positions alone: computed once for all
    the blocks that see the same frames (the encoder's layers), not once per block."""

    relative: Tensor  # [S, N, N, 3]: x_j − x_i (the minimum image in a periodic box)
    radial: Tensor  # [num_rbf, S, N, N]: the radial basis of |x_j − x_i|
    # open boundaries: the positions [S, N, 3], so that Σ_j α_ij (x_j − x_i) = Σ_j α_ij x_j − (Σ_j α_ij) x_i,
    # one product per frame instead of one per atom; None in a periodic box (minimum images are not differences)
    positions: Optional[Tensor] = None


def radial_of(relative: Tensor, rbf: RadialBasis) -> Tensor:
    """The radial basis [num_rbf, ...] of the lengths of pair vectors ``relative`` [..., 3]."""
    return rbf(torch.sqrt(sum_last(relative * relative) + 1e-12), basis_first=True)


def full_pairs(positions: Tensor, cell: Optional[Tensor], rbf: RadialBasis) -> FullPairs:
    """The pair geometry of ``positions`` [S, N, 3] (Å; periodic ``cell`` [S, 3, 3] or None)."""
    relative = minimum_image(positions.unsqueeze(1) - positions.unsqueeze(2), cell)
    return FullPairs(relative, radial_of(relative, rbf), positions if cell is None else None)


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
        self.rbf_bias = RadialBias(num_rbf, num_heads)
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
                       reduce: GlobalReduce, exact_sums: bool = True) -> tuple[Tensor, Tensor]:
        """Global tokens attend to all atoms; returns their keys and values [S, G, H, Dh]. ``exact_sums``: the
        softmax's sums in float64 (what a system split into domains needs)."""
        frames = keys.shape[0]
        tokens = self.global_tokens.unsqueeze(0).expand(frames, -1, -1)  # [S, G, D]
        query = self._heads(self.global_query(self.global_tokens))  # [G, H, Dh]: the same for every frame
        logits = torch.einsum("ghd,snhd->sghn", query, keys) / math.sqrt(self.head_dim)
        if owned_mask is not None:  # [N] (every frame) or [S, N]
            logits = logits.masked_fill(~owned_mask.view(-1, 1, 1, owned_mask.shape[-1]), float("-inf"))
        max_logit = logits.amax(dim=-1).detach()
        max_logit = torch.where(torch.isfinite(max_logit), max_logit, torch.zeros_like(max_logit))
        # float64 sums: the same total whichever way the atoms are split into domains (then merged by reduce);
        # full attention never runs on domains, and float64's exp cost it a tenth of a block
        dtype = torch.float64 if exact_sums else logits.dtype
        weights = torch.exp(logits.to(dtype) - max_logit.to(dtype).unsqueeze(-1))
        stats = reduce(max_logit.to(dtype), weights.sum(-1), torch.einsum("sghn,snhd->sghd", weights, values.to(dtype)))
        gathered = (stats[2] / stats[1].unsqueeze(-1)).to(values.dtype)
        tokens = tokens + self.global_out(gathered.flatten(-2))
        return self._heads(self.key(tokens)), self._heads(self.value(tokens))

    def forward(self, h: Tensor, positions: Tensor, graph: Optional[NeighborGraph], *,
                owned_mask: Optional[Tensor] = None, reduce: GlobalReduce = local_reduce,
                return_vectors: bool = False, cell: Optional[Tensor] = None,
                pairs: Optional[FullPairs] = None) -> tuple[Tensor, Optional[Tensor]]:
        frames, n_atoms, _ = h.shape
        x = self.norm(h)
        query, keys, values = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        global_kv = (self._gather_global(keys, values, owned_mask, reduce, exact_sums=graph is not None)
                     if self.num_global_tokens else None)
        # Local attention in blocks of atoms (all frames), so that the [S, atoms, K, ...] intermediates
        # stay cache-sized and the cost per atom does not grow with N (BENCHMARKS.md, model forward).
        if graph is None:  # full attention: one block of all atoms
            step, packed = n_atoms, pairs if pairs is not None else full_pairs(positions, cell, self.rbf)
        else:
            step, packed = max(1, BLOCK_ROWS // frames), self._pack(keys, values, positions)
        parts = [self._attend(query, keys, values, positions, graph, global_kv, slice(a, a + step), return_vectors,
                              packed) for a in range(0, n_atoms, step)]
        mixed = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts], dim=1)
        vectors = None
        if return_vectors:
            vectors = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts], dim=1)
        h = h + self.dropout(self.out(mixed.flatten(-2)))
        h = h + self.dropout(self.ffn(self.ffn_norm(h)))
        return h, vectors

    def _attend(self, query: Tensor, keys: Tensor, values: Tensor, positions: Tensor,
                graph: Optional[NeighborGraph], global_kv: Optional[tuple[Tensor, Tensor]], atoms: slice,
                return_vectors: bool, packed: Tensor | FullPairs) -> tuple[Tensor, Optional[Tensor]]:
        """Attention output [S, n, H, Dh] (and vectors [S, n, H, 3]) of the atoms in ``atoms``.

        Full attention (``graph`` None; ``atoms`` all of them) takes every pair's geometry from ``packed``
        (:class:`FullPairs`, :meth:`_attend_full`). The local path gathers each neighbour's key, value and
        position in one ``index_select`` from ``packed`` (:meth:`_pack`) and contracts over a head's few
        channels with element-wise products (batched products of 8-16 channels mostly move data); the softmax
        runs over contiguous [S, n, H, K + G]. The einsum formulation it replaces
        (:mod:`asteroid_hpc.model.spatial_reference`) is the same function.
        """
        query = query[:, atoms] * (1.0 / math.sqrt(self.head_dim))  # [S, n, H, Dh]
        if graph is None:
            return self._attend_full(query, keys, values, global_kv, return_vectors, packed)
        logits, relative, nb_values = self._local_logits(query, packed, positions, graph, atoms)
        bias = self.rbf_bias(radial_of(relative, self.rbf), basis_first=True)  # [H, S, n, K]
        logits = (logits + bias.permute(1, 2, 3, 0)).transpose(2, 3)  # [S, n, H, K]
        if global_kv is not None:
            g_keys, g_values = global_kv  # [S, G, H, Dh]
            g_logits = (query.transpose(1, 2) @ g_keys.permute(0, 2, 3, 1)).transpose(1, 2)  # [S, n, H, G]
            attn = torch.softmax(torch.cat([logits, g_logits], dim=-1), dim=-1)
            local_attn, global_attn = attn[..., :-self.num_global_tokens], attn[..., -self.num_global_tokens:]
            mixed = (global_attn.transpose(1, 2) @ g_values.transpose(1, 2)).transpose(1, 2)
        else:
            local_attn, mixed = torch.softmax(logits, dim=-1), None
        local_mixed = (local_attn.unsqueeze(-1) * nb_values).sum(3)  # per atom and head: Σ_k α_k v_k
        mixed = local_mixed if mixed is None else mixed + local_mixed
        vectors = local_attn @ relative if return_vectors else None  # Σ_k α_k (x_k − x_i): [S, n, H, 3]
        return mixed, vectors

    def _attend_full(self, query: Tensor, keys: Tensor, values: Tensor,
                     global_kv: Optional[tuple[Tensor, Tensor]], return_vectors: bool,
                     pairs: FullPairs) -> tuple[Tensor, Optional[Tensor]]:
        """Full attention of scaled ``query`` [S, N, H, Dh]: every atom j of the frame is a neighbour of i.
        Laid out [S, H, N, ·] throughout, so that each product is one batched matmul per frame and head and
        the softmax runs over contiguous rows (no transposing copies of the [S, N, N] logits)."""
        n_atoms = keys.shape[1]
        query = query.transpose(1, 2)  # [S, H, N, Dh]
        logits = query @ keys.permute(0, 2, 3, 1)  # [S, H, N, N]
        logits = logits + self.rbf_bias(pairs.radial, basis_first=True).transpose(0, 1)  # bias [H, S, N, N]
        if global_kv is not None:
            g_keys, g_values = global_kv  # [S, G, H, Dh]
            attn = torch.softmax(torch.cat([logits, query @ g_keys.permute(0, 2, 3, 1)], dim=-1), dim=-1)
            local_attn = attn[..., :n_atoms]
            mixed = local_attn @ values.transpose(1, 2) + attn[..., n_atoms:] @ g_values.transpose(1, 2)
        else:
            local_attn = torch.softmax(logits, dim=-1)
            mixed = local_attn @ values.transpose(1, 2)
        vectors = self._full_vectors(local_attn, pairs) if return_vectors else None
        return mixed.transpose(1, 2), vectors

    @staticmethod
    def _full_vectors(local_attn: Tensor, pairs: FullPairs) -> Tensor:
        """Σ_j α_ij (x_j − x_i) [S, N, H, 3] of full attention's weights ``local_attn`` [S, H, N, N]."""
        if pairs.positions is None:  # periodic: the minimum images themselves, per atom [H, N] x [N, 3]
            return local_attn.transpose(1, 2) @ pairs.relative
        frames, heads, n_atoms = local_attn.shape[:3]
        positions = pairs.positions  # Σ_j α_ij x_j − (Σ_j α_ij) x_i: one [H·N, N] x [N, 3] product per frame
        weighted = (local_attn.reshape(frames, heads * n_atoms, n_atoms) @ positions).view(frames, heads, n_atoms, 3)
        return (weighted - local_attn.sum(-1, keepdim=True) * positions.unsqueeze(1)).transpose(1, 2)

    @staticmethod
    def _pack(keys: Tensor, values: Tensor, positions: Tensor) -> Tensor:
        """What the local path gathers per neighbour, side by side: [S·N, 2·H·Dh + 3] (keys, values, Å)."""
        frames, n_atoms = keys.shape[:2]
        return torch.cat([keys.reshape(frames * n_atoms, -1), values.reshape(frames * n_atoms, -1),
                          positions.reshape(frames * n_atoms, 3)], dim=1)

    def _local_logits(self, query: Tensor, packed: Tensor, positions: Tensor, graph: NeighborGraph,
                      atoms: slice) -> tuple[Tensor, Tensor, Tensor]:
        """Local attention over the K listed neighbours: logits [S, n, K, H] (padding at -inf), relative
        vectors [S, n, K, 3] (with the lattice shifts in a periodic box), the neighbours' values
        [S, n, H, K, Dh] (a view of the gathered rows)."""
        frames, n_atoms = positions.shape[:2]
        index = graph.index[:, atoms]
        n, k = index.shape[1:]
        flat = (index + torch.arange(frames, device=index.device).view(-1, 1, 1) * n_atoms).reshape(-1)
        gathered = packed.index_select(0, flat).view(frames, n, k, -1)  # one gather: [S, n, K, 2·H·Dh + 3]
        width, heads = self.num_heads * self.head_dim, self.num_heads
        relative = gathered[..., 2 * width:] - positions[:, atoms].unsqueeze(2)
        if graph.shift is not None:  # periodic: the minimum image of each pair
            relative = relative + graph.shift[:, atoms]
        nb_keys = gathered[..., :width].unflatten(-1, (heads, self.head_dim))  # [S, n, K, H, Dh]
        nb_values = gathered[..., width:2 * width].unflatten(-1, (heads, self.head_dim)).transpose(2, 3)
        logits = sum_last(query.unsqueeze(2) * nb_keys)  # [S, n, K, H]
        logits = logits.masked_fill(~graph.mask[:, atoms].unsqueeze(-1), float("-inf"))
        return logits, relative, nb_values
