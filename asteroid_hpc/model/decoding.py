"""The decoder over one pass's steps (docs/method.md §2, step 4): teacher-forced in parallel, or free-running
step by step. A free-running step k decodes token k alone; its attention reads the keys and values of
steps 0 … k−1 and of the encoder memory from a cache (:class:`~.temporal.StepCache`). Causal attention makes
this the same forecast as decoding steps 0 … k again at every step, for a third of the decoder's work at
5 steps per pass."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .temporal import StepCache
from .thermal import Generators, sample_step


class Decoding:
    """Decoder methods of :class:`~asteroid_hpc.model.asteroid.Asteroid` (a mixin: it uses the model's decoder
    modules and its ``_tokens``, ``_spatial``, ``_per_atom``, ``_per_frame`` and ``_basis`` helpers)."""

    def _decode(self, seeds: Tensor, previous: Tensor, memory: Tensor, geo,
                caches: Optional[list[StepCache]] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Seeds and previous-frame displacements [B, K, N, 3] of steps 0 … K−1 (with ``caches``: of the one
        step after those the caches hold) -> displacements [B, K, N, 3] and, for a stochastic model, their
        scales σ [B, K, N] (Å), else None."""
        batch = seeds.shape[0]
        token_vectors = torch.stack([seeds, previous], dim=3)
        first_step = 0 if caches is None else len(caches[0].keys)
        h = self._tokens(self.decoder_input, token_vectors, geo, self.step_embedding[first_step:])
        positions = geo.last + seeds - geo.centre
        pairs = self._full_pairs(positions, geo)
        vectors = None
        for index, (spatial, temporal) in enumerate(zip(self.decoder_spatial, self.decoder_temporal)):
            last_layer = index == len(self.decoder_spatial) - 1
            h, vectors = self._spatial(spatial, h, positions, geo, self.equivariant and last_layer, pairs)
            tokens = self._per_atom(h)
            tokens = (temporal(tokens, memory, geo.short_kernels) if caches is None
                      else temporal.step(tokens, memory, caches[index], geo.short_kernels))
            h = self._per_frame(tokens, batch)
        h = self.decoder_norm(h)
        correction = self.decoder_head(h, self._basis(token_vectors, geo, vectors))
        return seeds + correction.squeeze(-2), self.scale_head(h) if self.cfg.stochastic else None

    def _free_run(self, seeds: Tensor, memory: Tensor, geo, steps: int, sample: bool, generator: Generators,
                  held: Callable[[Tensor], Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Steps 0 … ``steps``−1, each decoded from the ones before it: sampled around its mean (``sample``) or
        the mean, then ``held`` (the constraint projection or identity); what later steps see is that.
        Displacements [B, steps, N, 3] and σ [B, steps, N] (stochastic models) or None."""
        caches = [StepCache() for _ in self.decoder_temporal]
        previous = torch.zeros_like(seeds[:, :1])  # step 0's previous frame: the last observed one
        generated, scales = [], []
        for k in range(steps):
            mean, scale = self._decode(seeds[:, k:k + 1], previous, memory, geo, caches)
            previous = held(sample_step(mean, scale, generator) if sample else mean)
            generated.append(previous)
            scales.append(scale)
        return torch.cat(generated, dim=1), None if scales[0] is None else torch.cat(scales, dim=1)
