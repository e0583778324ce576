"""Members' iterative rollouts, pass by pass (each pass forecasts the model's L−1 frames), several members
through one forward.

The loop is the model's own iterative forecast (``Asteroid.forward`` with a long horizon rolls the window
the same way), cut at pass boundaries so that frames can be streamed to disk and a killed run can continue
from any flushed pass exactly. A batch of members [B, m, N, 3] stays on the device between passes; only
the forecast frames come back to the host (to be written). With a group of several ranks each pass is
domain-decomposed (:mod:`asteroid_hpc.ensemble.domains`; a batch shares one decomposition whose halos
cover every member). With ``ensemble.neighbor_skin_angstrom`` the neighbour lists of a one-rank group are
Verlet lists (:mod:`asteroid_hpc.model.neighbors`), rebuilt only when an atom has moved half the skin.
In a periodic box every forward (batched, Verlet lists, domains) is given the box (minimum images across the
faces); the rollout stays continuous (:mod:`asteroid_hpc.ensemble.periodic`).
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..model.constraints import Constraints
from ..model.neighbors import VerletNeighbors
from ..model.thermal import row_generators
from ..runtime.device import autocast
from .domains import DomainContext, SingleDomain, decompose


class MemberForecaster:
    """Runs members of one group: ``group`` is its communicator (size = domains). ``skin_angstrom`` > 0:
    Verlet neighbour lists (one-rank groups); ``autocast_dtype``: the inference precision on CUDA
    (:func:`asteroid_hpc.runtime.device.inference_dtype`), None for fp32; ``constraints``: the distances every
    step is projected onto (lengths [1, C], the same for every member; domains hold whole groups)."""

    def __init__(self, model, atomic_numbers: np.ndarray, group, device: str = "cpu", *,
                 skin_angstrom: float = 0.0, autocast_dtype=None, cell: Optional[np.ndarray] = None,
                 constraints: Optional[Constraints] = None):
        self.model = model.eval()
        self.constraints = None if constraints is None else constraints.to(device=device, dtype=torch.float32)
        # domains complete these groups in their halos, so each rank projects whole ones
        self._constraint_groups = (None if constraints is None or group.size == 1
                                   else constraints.groups().cpu().numpy())
        # a periodic box: its vectors as rows [3, 3] Å (geometry.cell_matrix), given to every forward
        self.cell = None if cell is None else np.asarray(cell, dtype=np.float64)
        self._cell_on_device = None if cell is None else torch.as_tensor(self.cell, dtype=torch.float32).to(device)
        self.group = group
        self.device = device
        self.history_frames = model.cfg.history_frames
        self.steps_per_pass = model.cfg.delay_length - 1
        self.atomic_numbers = torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long)
        self._numbers_on_device = self.atomic_numbers.to(device)
        self.autocast_dtype = autocast_dtype
        self.skin_angstrom = skin_angstrom
        self.neighbors: Optional[VerletNeighbors] = None
        self.passes = 0  # forwards run (each over a batch of members)
        self.neighbor_rebuilds = 0  # Verlet candidate builds, over all batches
        if group.size > 1 and model.cfg.attention == "full":
            raise UserError("ensemble.domains > 1 needs a model with local attention (model.attention=local_global); "
                            "this model uses full attention")

    @property
    def uses_verlet_lists(self) -> bool:
        return self.skin_angstrom > 0 and self.group.size == 1 and self.model.cfg.attention != "full"

    def start_batch(self) -> None:
        """A new batch of members begins: forget the previous batch's neighbour lists."""
        if self.neighbors is not None:
            self.neighbor_rebuilds += self.neighbors.rebuilds
            self.neighbors = None
        if self.uses_verlet_lists:
            self.neighbors = VerletNeighbors(self.model.cfg.cutoff_angstrom, self.model.cfg.max_neighbors,
                                             self.skin_angstrom)

    def rollout(self, window: np.ndarray, n_frames: int) -> Iterator[np.ndarray]:
        """Yield the forecast frames of successive passes ([steps, N, 3] float32) after ``window`` [m, N, 3],
        ``n_frames`` in all (one member)."""
        if window.shape[0] != self.history_frames:
            raise ValueError(f"window has {window.shape[0]} frames, the model needs {self.history_frames}")
        self.start_batch()
        batch = self.to_device(window[None])
        produced = 0
        while produced < n_frames:
            steps = min(self.steps_per_pass, n_frames - produced)
            frames = self.pass_batch(batch, steps)
            batch = self.advance(batch, frames)
            produced += steps
            yield frames[0].cpu().numpy()

    def to_device(self, windows: np.ndarray) -> Tensor:
        """Windows [B, m, N, 3] as the float32 device tensor the passes take."""
        return torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device)

    def advance(self, windows: Tensor, frames: Tensor) -> Tensor:
        """The windows after a pass: the last m frames of (windows, frames), on the device."""
        return torch.cat([windows, frames], dim=1)[:, -self.history_frames:]

    def one_pass(self, window: np.ndarray, steps: int) -> np.ndarray:
        """One member's pass: ``steps`` frames [steps, N, 3] after ``window`` [m, N, 3]."""
        return self.pass_batch(self.to_device(window[None]), steps)[0].cpu().numpy()

    def generators(self, seed: int, members: list[int], produced: int) -> Optional[list[torch.Generator]]:
        """A stochastic model's noise for the pass after ``produced`` frames: member k's from a generator
        seeded (seed, k, pass index), so its trajectory depends on neither its batch, the ranks nor a resume
        (passes, resume points included, start at multiples of the pass); None for a model that draws nothing."""
        if not self.model.samples:
            return None
        index = produced // self.steps_per_pass
        return row_generators([(seed, member, index) for member in members], self.device)

    def rebuilds(self) -> int:
        """Verlet candidate builds so far (all batches)."""
        return self.neighbor_rebuilds + (self.neighbors.rebuilds if self.neighbors is not None else 0)

    @torch.no_grad()
    def pass_batch(self, windows: Tensor, steps: int, generators=None) -> Tensor:
        """``steps`` forecast frames [B, steps, N, 3] (float32, on the device) after ``windows`` [B, m, N, 3];
        a stochastic model draws row b's noise from ``generators[b]`` (torch's global generator when None)."""
        self.passes += 1
        with autocast(self.autocast_dtype, str(self.device)):
            if self.group.size == 1:
                cell = self._cell_on_device
                graph = self.neighbors.graph(windows[:, -1], cell) if self.neighbors is not None else None
                out = self.model(windows, self._numbers_on_device, steps, graph=graph, domain=SingleDomain(),
                                 cell=cell, constraints=self.constraints, generator=generators,
                                 forecast_only=True).forecast
                return out.float()
            return self._decomposed_pass(windows, steps)

    def _decomposed_pass(self, windows: Tensor, steps: int) -> Tensor:
        batch, _, n_atoms, _ = windows.shape
        parts = decompose(windows[:, -1].cpu().numpy(), self.group.size, self.model.cfg.cutoff_angstrom, self.cell,
                          self._constraint_groups)
        domain = DomainContext(self.group, parts, n_atoms, self.device, whole_groups=self.constraints is not None)
        local = parts.local[self.group.rank]
        index = torch.from_numpy(local).to(windows.device)
        history = windows.index_select(2, index)
        held = None if self.constraints is None else self.constraints.restricted(index)
        out = self.model(history, self.atomic_numbers[local].to(self.device), steps, domain=domain,
                         cell=self._cell_on_device, constraints=held, forecast_only=True).forecast
        owned_frames = out[:, :, :parts.n_owned[self.group.rank]].float().cpu().numpy()
        frames = np.empty((batch, steps, n_atoms, 3), dtype=np.float32)
        for rank, piece in enumerate(self.group.allgather(owned_frames)):
            frames[:, :, parts.owned(rank)] = piece
        return torch.from_numpy(frames).to(windows.device)
