"""ASTEROID: STI head + local-global spatial attention + temporal encoder-decoder (docs/method.md §2).

One *pass* over a history window of m frames:

1. Features. Coordinates are centred on the window centroid c and expressed as displacements
   d_t = x_t − x_last from the last observed frame, so translations cancel exactly. Per atom, the
   "atom basis" is {d_0 … d_{m−2}, x_last − c}; a frame token t carries {d_t, v_t = x_t − x_{t−1}}.
   With ``model.reference_structure``, the basis also holds r − x_last, r being the training frames'
   mean structure superposed onto the last frame (Kabsch): where each atom would sit in the mean shape.
   With ``model.rotation_basis``, it also holds the step each atom would make if the molecule kept turning
   at the window's mean rigid rotation per frame (Kabsch from the first to the last frame).
   In "equivariant" mode tokens see only inner products of these vectors; in "augment" mode their
   components (and training applies a random rotation per window, undone on the outputs).
2. Encoder: ``encoder_layers`` × (spatial block within each frame → temporal self-attention per atom
   across the m frames).
3. STI head: from encoder token t, the primary map Φ predicts the delay vector of frames t … t+L−1
   (Hankel tensor [B, m, L, N, 3]); the conjugate map Ψ reconstructs frame t from that delay vector
   alone; the anti-diagonal means of the unknown triangle are the read-off of the next L−1 frames.
4. Decoder: token k (k = 0 … L−2) starts from the read-off guess s_k for frame k and the previous frame
   p_k (the last observed frame for k = 0; the teacher frame k−1 when a target is given, else the
   generated one), then ``decoder_layers`` × (spatial block within step k → causal self-attention over
   the steps → cross-attention to the encoder memory of the same atom). Output: s_k + a correction.
   With ``model.stochastic`` also a scale σ_k per atom (:mod:`asteroid_hpc.model.thermal`): when not
   teacher-forced each step then samples x_k = μ_k + σ_k ε and feeds the sample forward (``mean_only``: μ).
   With ``model.local_geometry=sampled`` each such step's stiff geometry is drawn (:mod:`.local_geometry`).

Horizons longer than L−1 frames roll the window forward (iterative extended horizon). Outputs are absolute
coordinates in Å. The neighbour list is built once per window from its last frame unless the caller gives one.

Periodic boxes (``cell``, :mod:`.periodic`): relative vectors are minimum images, neighbour lists cross the
faces, each window frame is moved by lattice vectors to be continuous with the last (wrapped input is safe),
and x_last − c is zero: nothing depends on where the atoms sit in the box (c only a numerical origin that
cancels). Whole-molecule vectors (reference structure, rotation basis) refuse a cell; a model refuses the kind
of system (periodic or not) it was not trained on (its data signature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..config.schema import AsteroidConfig, ModelConfig
from ..errors import UserError
from ..geometry import superpose_onto
from .constraints import Constraints
from .decoding import Decoding
from .domain import WHOLE_SYSTEM, Domain
from .graph import NeighborGraph, radius_graph, spatial_order
from .inputs import check_cell, check_domain, check_inputs
from .local_geometry import LocalGeometry, free_step
from .periodic import minimum_image_shift
from .spatial import FullPairs, SpatialBlock, full_pairs
from .sti import readoff
from .symmetry import (VectorHead, frame_vector_features, random_rotations, rotate_about, rotation_step,
                       vector_feature_size)
from .temporal import TemporalBlock, use_short_kernels
from .thermal import Generators, ScaleHead

# From this many atoms on, local attention runs on the atoms in spatial (k-d tree) order (the caller's order
# restored on the outputs): neighbour gathers hit the cache; at 2·10^5 atoms 14% less CPU (BENCHMARKS.md).
LOCALITY_SORT_MIN_ATOMS = 4096
TOKEN_VECTORS = 2  # vectors per token: (d_t, v_t) in the encoder, (s_k, p_k) in the decoder
# Preconditioning of the output basis: geometry vectors (x_last − c, Σ α (x_j − x_i), a few Å) scaled to the
# size of per-frame displacements (~0.05 Å), so one coefficient step moves every basis vector alike (ethanol,
# xTB, 2.5 fs: 4× less error reproducing the known Hankel entries after 300 Adam steps).
GEOMETRY_BASIS_SCALE = 0.03


class AsteroidOutput(NamedTuple):
    """Model outputs, all absolute coordinates in Å (a NamedTuple, so ZeRO-3's hooks find the tensors).

    ``forecast`` [B, H, N, 3]; from the first pass over the given history: ``hankel`` [B, m, L, N, 3]
    (entry [t, i] predicts frame t+i), ``reconstruction`` [B, m, N, 3] (conjugate Ψ of the observed
    frames) and ``readoff`` [B, L−1, N, 3] (anti-diagonal means: the STI forecast). ``hankel`` and
    ``reconstruction`` (what only the STI losses read) are None for a ``forecast_only`` call.
    """

    forecast: Tensor
    hankel: Optional[Tensor]
    reconstruction: Optional[Tensor]
    readoff: Tensor

    def mapped(self, fn: Callable[[Tensor], Tensor]) -> "AsteroidOutput":
        """``fn`` applied to every tensor (the None ones stay None)."""
        return AsteroidOutput(*(None if t is None else fn(t) for t in self))


class ThermalOutput(NamedTuple):
    """A ``model.stochastic`` model's outputs: :class:`AsteroidOutput`'s, then each step's σ ``scale`` [B, H, N] Å;
    ``forecast``: the teacher-forced means, the sampled steps or (``mean_only``) the path of the means."""

    forecast: Tensor
    hankel: Tensor
    reconstruction: Tensor
    readoff: Tensor
    scale: Tensor


@dataclass
class _Window:
    """Geometry of one history window, shared by the encoder and the decoder."""

    last: Tensor  # x_last [B, 1, N, 3]
    centre: Tensor  # c [B, 1, 1, 3]
    atom_basis: Tensor  # [B, N, m (+1 per optional vector: reference, rotation), 3]
    elements: Tensor  # element embedding [B, N, D]
    graph: Optional[NeighborGraph]
    domain: Domain
    cell: Optional[Tensor]  # [B, 3, 3] Å in a periodic box, else None
    short_kernels: bool  # the temporal attention's kernels (temporal.use_short_kernels)


class Asteroid(Decoding, nn.Module):
    """The ASTEROID forecaster; all sizes come from :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig, reference_coordinates=None, local_geometry: Optional[dict] = None):
        """``reference_coordinates`` [N, 3] Å: the reference structure, with and only with reference_structure=
        training_mean; ``local_geometry``: a fitted :class:`~.local_geometry.LocalGeometry`'s state, with and only
        with local_geometry=sampled (train computes both; saved weights carry them)."""
        super().__init__()
        self.cfg = cfg
        self.data_signature: Optional[dict] = None  # what it was trained on (data/signature.py), set on loading
        d, m, length = cfg.hidden_size, cfg.history_frames, cfg.delay_length
        self.equivariant = cfg.symmetry == "equivariant"
        self.steps_per_pass = length - 1
        num_vectors = cfg.num_heads if self.equivariant else 0  # attention-weighted relative vectors
        self.uses_reference = cfg.reference_structure != "none"
        atom_vectors = m + int(self.uses_reference) + int(cfg.rotation_basis)
        self.num_basis = atom_vectors + TOKEN_VECTORS + num_vectors
        feature_size = vector_feature_size(TOKEN_VECTORS, atom_vectors, self.equivariant)
        if self.uses_reference and reference_coordinates is None:
            raise UserError("model.reference_structure=training_mean needs the reference coordinates [N, 3] "
                            "(train takes them from the dataset; saved weights carry them)")
        if not self.uses_reference and reference_coordinates is not None:
            raise UserError("reference coordinates apply only with model.reference_structure=training_mean")
        if self.uses_reference:  # derived from the training data: part of the state, never of the config
            reference = torch.as_tensor(reference_coordinates, dtype=torch.float32).detach().cpu().clone()
            if reference.dim() != 2 or reference.shape[1] != 3 or len(reference) == 0:
                raise UserError(f"the reference coordinates must be [N, 3], got {list(reference.shape)}")
            self.register_buffer("reference", reference)

        def spatial() -> SpatialBlock:
            return SpatialBlock(d, cfg.num_heads, cfg.num_rbf, cfg.cutoff_angstrom, cfg.num_global_tokens, cfg.dropout)

        self.element_embedding = nn.Embedding(cfg.num_elements, d)
        self.encoder_input = nn.Sequential(nn.Linear(feature_size, d), nn.LayerNorm(d))
        self.frame_embedding = nn.Parameter(torch.randn(m, d))
        self.encoder_spatial = nn.ModuleList(spatial() for _ in range(cfg.encoder_layers))
        self.encoder_temporal = nn.ModuleList(TemporalBlock(d, cfg.num_heads, cfg.dropout, causal=False, cross=False)
                                              for _ in range(cfg.encoder_layers))
        self.encoder_norm = nn.LayerNorm(d)
        self.primary_head = VectorHead(d, length, self.num_basis, self.equivariant)  # Φ
        conjugate_features = length * length if self.equivariant else 3 * length
        self.conjugate_input = nn.Linear(conjugate_features, d)  # Ψ
        self.conjugate_hidden = nn.Sequential(nn.LayerNorm(d), nn.GELU(), nn.Linear(d, d), nn.GELU())
        self.conjugate_head = VectorHead(d, 1, length, self.equivariant)
        self.decoder_input = nn.Sequential(nn.Linear(feature_size, d), nn.LayerNorm(d))
        self.step_embedding = nn.Parameter(torch.randn(self.steps_per_pass, d))
        self.decoder_spatial = nn.ModuleList(spatial() for _ in range(cfg.decoder_layers))
        self.decoder_temporal = nn.ModuleList(TemporalBlock(d, cfg.num_heads, cfg.dropout, causal=True, cross=True)
                                              for _ in range(cfg.decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.decoder_head = VectorHead(d, 1, self.num_basis, self.equivariant)
        if cfg.stochastic:  # absent otherwise: deterministic models keep their parameters and outputs exactly
            self.scale_head = ScaleHead(d)
        self.local_geometry = LocalGeometry.of(cfg, local_geometry)

    @property
    def samples(self) -> bool:  # whether its free-running forecasts draw random numbers
        return self.cfg.stochastic or self.local_geometry is not None

    # ----------------------------------------------------------------------------------- public API
    def forward(self, history: Tensor, atomic_numbers: Tensor, horizon: int, target: Optional[Tensor] = None, *,
                graph: Optional[NeighborGraph] = None, domain: Optional[Domain] = None,
                cell: Optional[Tensor] = None, mean_only: bool = False,
                generator: Generators = None, constraints: Optional[Constraints] = None,
                forecast_only: bool = False) -> AsteroidOutput | ThermalOutput:
        """Forecast ``horizon`` frames after ``history`` [B, m, N, 3] (raw Å).

        ``target`` [B, ≥horizon, N, 3] enables teacher forcing (the decoder and the rolled windows see the
        true previous frames). ``graph`` overrides the neighbour list (used for every pass). ``domain``
        says which part of the system ``history`` holds and how it meets the rest
        (:mod:`asteroid_hpc.model.domain`); the default is the whole system. ``cell`` [B, 3, 3] or [3, 3]:
        the periodic box vectors as rows in Å, the same for every frame (module doc); None: open boundaries.
        A stochastic model without ``target`` samples every step from ``generator`` (torch's global one when
        None; a sequence: one per batch row, :func:`~.thermal.row_generators`) unless ``mean_only``: then it
        follows its means. Deterministic models ignore both.
        ``constraints`` (:mod:`.constraints`): distances each free-running step is projected onto (after its local
        geometry is sampled, ``model.local_geometry``: never for ``mean_only`` or teacher-forced steps).
        ``forecast_only``: skip what only the STI losses read (the Hankel tensor's entries the read-off does not
        use, the conjugate reconstruction); passes after the first always skip them."""
        check_inputs(self, history, atomic_numbers, horizon, target)
        sample = self.cfg.stochastic and target is None and not mean_only
        cell = check_cell(self, cell, history, graph)
        if cell is not None:  # each frame continuous with the last observed one (wrapped input is safe)
            last = history[:, -1:]
            history = history + minimum_image_shift(history - last, cell)
            target = None if target is None else target + minimum_image_shift(target - last, cell)
        hold = None if constraints is None or target is not None else (constraints, cell)
        geometry = None if target is not None or mean_only or self.training else self.local_geometry
        domain = check_domain(self, WHOLE_SYSTEM if domain is None else domain, sample or geometry is not None,
                              hold is not None, geometry is not None and cell is not None)
        batch, _, n_atoms, _ = history.shape
        elements = atomic_numbers.expand(batch, n_atoms) if atomic_numbers.dim() == 1 else atomic_numbers
        rotation = None
        if self.training and not self.equivariant:  # "augment": a random rotation per window
            rotation = random_rotations(batch, dtype=history.dtype, device=history.device)
            centre = history.mean(dim=(1, 2), keepdim=True)
            history = rotate_about(history, rotation, centre)
            target = None if target is None else rotate_about(target, rotation, centre)
            cell = None if cell is None else cell @ rotation.transpose(1, 2)  # the box turns with its atoms
        order = self._locality_order(history, graph, domain.owned_mask, cell)
        if order is not None:
            history, elements = history[:, :, order], elements[:, order]
            target = None if target is None else target[:, :, order]
        if hold is not None:  # as the atoms now stand (turned by "augment", in locality order)
            hold = (hold[0] if order is None else hold[0].reordered(order), cell)
        output, scale = self._passes(history, elements, horizon, target, graph, domain, cell, sample, generator,
                                     (hold, geometry), forecast_only)
        if order is not None:
            inverse = torch.argsort(order)
            output = output.mapped(lambda t: t[..., inverse, :])
            scale = None if scale is None else scale[..., inverse]
        if rotation is not None:
            undo = rotation.transpose(1, 2)
            output = output.mapped(lambda t: rotate_about(t, undo, centre.view(batch, *([1] * (t.dim() - 2)), 3)))
        return output if scale is None else ThermalOutput(*output, scale)  # σ is rotation invariant

    @torch.no_grad()
    def forecast(self, history: Tensor, atomic_numbers: Tensor, n_frames: int, cell: Optional[Tensor] = None, *,
                 mean_only: bool = False, generator: Generators = None,
                 constraints: Optional[Constraints] = None) -> Tensor:
        """``n_frames`` forecast frames [B, n_frames, N, 3] (eval mode, no gradients, iterative), arguments as in
        :meth:`forward`: a model that samples does (``generator`` seeds it) unless ``mean_only``."""
        was_training = self.training
        self.eval()
        try:
            return self(history, atomic_numbers, n_frames, cell=cell, mean_only=mean_only, generator=generator,
                        constraints=constraints, forecast_only=True).forecast
        finally:
            self.train(was_training)

    # ----------------------------------------------------------------------------------- internals
    def _locality_order(self, history: Tensor, graph: Optional[NeighborGraph],
                        owned_mask: Optional[Tensor], cell: Optional[Tensor] = None) -> Optional[Tensor]:
        """Spatial order of the atoms for large local-attention systems; None to keep the caller's order
        (full attention, small systems, or a caller that indexes atoms itself: own graph or domains)."""
        if (self.cfg.attention == "full" or graph is not None or owned_mask is not None
                or history.shape[2] < LOCALITY_SORT_MIN_ATOMS or self.uses_reference):
            return None
        return spatial_order(history[0, -1], None if cell is None else cell[0])

    def _geometry(self, window: Tensor, elements: Tensor, graph: Optional[NeighborGraph], domain: Domain,
                  cell: Optional[Tensor]) -> _Window:
        last = window[:, -1:]
        centre = domain.centroid(window)  # periodic: only the numerical origin of the positions
        displacements = (window[:, :-1] - last).permute(0, 2, 1, 3)  # [B, N, m-1, 3]
        parts = [displacements]
        if self.uses_reference:
            parts.append((superpose_onto(self.reference, last[:, 0]) - last[:, 0]).unsqueeze(2))
        if self.cfg.rotation_basis:
            parts.append(rotation_step(window).unsqueeze(2))
        arm = (last - centre).permute(0, 2, 1, 3)  # last: _basis scales it; zero in a box (no centre there)
        parts.append(arm if cell is None else torch.zeros_like(arm))
        atom_basis = torch.cat(parts, dim=2)
        if self.cfg.attention == "full":
            graph = None
        elif graph is None:
            graph = radius_graph(window[:, -1], self.cfg.cutoff_angstrom, self.cfg.max_neighbors, cell)
        system_atoms = domain.n_atoms_total or window.shape[2]  # the whole system's, in a domain too
        short = use_short_kernels(window.shape[0], system_atoms, self.cfg.num_heads)
        return _Window(last, centre, atom_basis, self.element_embedding(elements), graph, domain, cell, short)

    def _full_pairs(self, positions: Tensor, geo: _Window) -> Optional[FullPairs]:
        """Full attention: the pair geometry of positions [B, T, N, 3], shared by the blocks that see them."""
        if geo.graph is not None:
            return None
        batch, frames, n_atoms, _ = positions.shape
        cell = None if geo.cell is None else geo.cell.repeat_interleave(frames, dim=0)
        return full_pairs(positions.reshape(batch * frames, n_atoms, 3), cell, self.encoder_spatial[0].rbf)

    def _spatial(self, block: SpatialBlock, h: Tensor, positions: Tensor, geo: _Window, want_vectors: bool,
                 pairs: Optional[FullPairs]) -> tuple[Tensor, Optional[Tensor]]:
        """Run a spatial block on every frame of h [B, T, N, D], then the domain's step after it; vectors
        [B, T, N, H, 3] when wanted. ``pairs``: :meth:`_full_pairs` of ``positions`` (full attention)."""
        batch, frames, n_atoms, d = h.shape
        graph = None if geo.graph is None else geo.graph.repeat_frames(frames)
        domain = geo.domain
        out, vectors = block(h.reshape(batch * frames, n_atoms, d), positions.reshape(batch * frames, n_atoms, 3),
                             graph, owned_mask=domain.owned_mask, reduce=domain.global_reduce,
                             return_vectors=want_vectors, pairs=pairs)
        out, vectors = domain.after_spatial_block(out, vectors)
        vectors = None if vectors is None else vectors.view(batch, frames, n_atoms, -1, 3)
        return out.view(batch, frames, n_atoms, d), vectors

    @staticmethod
    def _per_atom(h: Tensor) -> Tensor:
        """[B, T, N, D] -> [B·N, T, D] (one temporal sequence per atom)."""
        batch, frames, n_atoms, d = h.shape
        return h.permute(0, 2, 1, 3).reshape(batch * n_atoms, frames, d)

    @staticmethod
    def _per_frame(h: Tensor, batch: int) -> Tensor:
        """[B·N, T, D] -> [B, T, N, D]."""
        _, frames, d = h.shape
        return h.view(batch, -1, frames, d).permute(0, 2, 1, 3)

    def _tokens(self, embed: nn.Module, token_vectors: Tensor, geo: _Window, position: Tensor) -> Tensor:
        """Token features from per-token vectors [B, T, N, 2, 3], the atom basis, element and position."""
        frames = token_vectors.shape[1]
        features = frame_vector_features(token_vectors, geo.atom_basis, self.equivariant)
        return embed(features) + geo.elements.unsqueeze(1) + position[:frames].view(1, frames, 1, -1)

    def _basis(self, token_vectors: Tensor, geo: _Window, vectors: Optional[Tensor]) -> Tensor:
        """Output basis [B, T, N, num_basis, 3]: atom basis, token vectors, attention vectors (equivariant)."""
        frames = token_vectors.shape[1]
        atom_basis = torch.cat([geo.atom_basis[:, :, :-1], GEOMETRY_BASIS_SCALE * geo.atom_basis[:, :, -1:]], dim=2)
        parts = [atom_basis.unsqueeze(1).expand(-1, frames, -1, -1, -1), token_vectors]
        if vectors is not None:
            parts.append(GEOMETRY_BASIS_SCALE * vectors)
        return torch.cat(parts, dim=3)

    def _encode(self, window: Tensor, geo: _Window) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        displacements = window - geo.last
        velocities = torch.cat([torch.zeros_like(window[:, :1]), window[:, 1:] - window[:, :-1]], dim=1)
        token_vectors = torch.stack([displacements, velocities], dim=3)  # [B, m, N, 2, 3]
        h = self._tokens(self.encoder_input, token_vectors, geo, self.frame_embedding)
        positions = window - geo.centre
        pairs = self._full_pairs(positions, geo)
        vectors = None
        for index, (spatial, temporal) in enumerate(zip(self.encoder_spatial, self.encoder_temporal)):
            last_layer = index == len(self.encoder_spatial) - 1
            h, vectors = self._spatial(spatial, h, positions, geo, self.equivariant and last_layer, pairs)
            h = self._per_frame(temporal(self._per_atom(h), short_kernels=geo.short_kernels), window.shape[0])
        return self.encoder_norm(h), token_vectors, vectors

    def _conjugate(self, delay: Tensor, geo: _Window) -> Tensor:
        """Ψ: each atom's delay vector [B, m, N, L, 3] -> its displacement at frame t [B, m, N, 3]."""
        features = (delay @ delay.transpose(-1, -2)).flatten(-2) if self.equivariant else delay.flatten(-2)
        h = self.conjugate_hidden(self.conjugate_input(features) + geo.elements.unsqueeze(1))
        return self.conjugate_head(h, delay).squeeze(-2)

    def _passes(self, history: Tensor, elements: Tensor, horizon: int, target: Optional[Tensor],
                graph: Optional[NeighborGraph], domain: Domain, cell: Optional[Tensor], sample: bool,
                generator: Generators, hold: Optional[tuple],
                forecast_only: bool) -> tuple[AsteroidOutput, Optional[Tensor]]:
        """Passes until ``horizon`` frames, each rolling its forecast (or the teacher's frames) into the window;
        the first pass's Hankel, reconstruction and read-off, and the σ of every step (stochastic models)."""
        m = self.cfg.history_frames
        window, forecasts, scales, first = history, [], [], None
        produced = 0
        while produced < horizon:
            steps = min(self.steps_per_pass, horizon - produced)
            teacher = None if target is None else target[:, produced:produced + steps]
            result, scale = self._pass(window, elements, steps, teacher, graph, domain, cell, sample, generator, hold,
                                       sti_outputs=first is None and not forecast_only)
            first = result if first is None else first
            forecasts.append(result.forecast)
            scales.append(scale)
            produced += steps
            if produced < horizon:  # a sampled pass rolls its samples into the window
                window = torch.cat([window, result.forecast if teacher is None else teacher], dim=1)[:, -m:]
        scale = torch.cat(scales, dim=1) if self.cfg.stochastic else None
        return AsteroidOutput(torch.cat(forecasts, dim=1), first.hankel, first.reconstruction, first.readoff), scale

    def _pass(self, window: Tensor, elements: Tensor, steps: int, teacher: Optional[Tensor],
              graph: Optional[NeighborGraph], domain: Domain, cell: Optional[Tensor], sample: bool = False,
              generator: Generators = None, hold: Optional[tuple] = None,
              sti_outputs: bool = True) -> tuple[AsteroidOutput, Optional[Tensor]]:
        """One pass; ``hold`` = ((constraints, cell) or None, local geometry or None): what each free-running step
        becomes (forward's doc, :func:`~.local_geometry.free_step`). Without
        ``sti_outputs`` the delay vectors of the last L−1 frames only (all the read-off uses), no conjugate."""
        geo = self._geometry(window, elements, graph, domain, cell)
        held = free_step(window, geo.last, *(hold or (None, None)), generator)
        h, token_vectors, vectors = self._encode(window, geo)
        read = slice(None) if sti_outputs else slice(-(self.cfg.delay_length - 1), None)
        delay = self.primary_head(h[:, read], self._basis(token_vectors[:, read], geo,
                                                          None if vectors is None else vectors[:, read]))
        reconstruction = self._conjugate(delay, geo) if sti_outputs else None  # delay: [B, m (or L−1), N, L, 3]
        hankel = delay.permute(0, 1, 3, 2, 4)  # [B, m, L, N, 3] displacements
        seeds = readoff(hankel)
        memory = self._per_atom(h)
        if teacher is None:
            forecast, scale = self._free_run(seeds, memory, geo, steps, sample, generator, held)
        else:  # teacher forcing: one parallel pass, each step after the true previous frame
            previous = torch.cat([torch.zeros_like(seeds[:, :1]), teacher[:, :steps - 1] - geo.last], dim=1)
            forecast, scale = self._decode(seeds[:, :steps], previous, memory, geo)
        last = geo.last
        if not sti_outputs:
            return AsteroidOutput(forecast + last, None, None, seeds + last), scale
        return AsteroidOutput(forecast + last, hankel + last.unsqueeze(1), reconstruction + last, seeds + last), scale


def build_model(cfg: ModelConfig | AsteroidConfig, reference_coordinates=None,
                local_geometry: Optional[dict] = None) -> Asteroid:
    """An :class:`Asteroid` (its arguments) for a config's ``model`` section (or a whole :class:`AsteroidConfig`)."""
    return Asteroid(cfg.model if isinstance(cfg, AsteroidConfig) else cfg, reference_coordinates, local_geometry)
