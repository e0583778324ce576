"""A molecule's stiff local geometry, sampled: bonds, angles and stiff torsions drawn each forecast step from a
linear-Gaussian model of their motion fitted on the training frames, and imposed on the model's step.

Why: at a 5 fs stride a bond's or an angle's vibration loses its phase within a step or two, so its next value
is not predictable from the window beyond its autocorrelation. A forecast of its mean damps it (the molecule
freezes); noise drawn per atom breaks it (bonds drift apart, clashes follow). What is predictable about such a
coordinate is its distribution and how it forgets: a second-order autoregression of the C stiff distances
jointly, d_t = μ + A₁(d_{t−1} − μ) + A₂(d_{t−2} − μ) + L·ε, fitted by least squares on consecutive training
frames at the model's stride, reproduces their means, widths and correlations (a ring's distances move
together) and their oscillation at that stride. The stiff distances: the bonds (the topology's, else covalent
radii on the first training frame), 1–3 and 1–4 pairs whose training standard deviation is below
``STIFF_ANGSTROM`` (a ring's, a planar group's; not a rotor's, nor a bond that breaks and forms). The soft
motion (rotors, hopping protons, tumbling, slow collective modes) stays the model's.

Each free-running step (:meth:`LocalGeometry.stepper`): the model's proposal, targets drawn as above from the two
frames before, and the proposal moved onto them together with the excluded volume (every other pair closer than
any two atoms of its two elements came in the training frames is pulled out to that distance) by damped
Gauss–Newton steps, each the least mass-weighted move that meets the linearised distances (the centre of mass
stays), a least-squares compromise where a draw is not exactly realisable in three dimensions. Everything comes
from training frames only (``model.local_geometry=sampled``: train fits it; saved weights carry it).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from .constraints import held_steps

ORDER = 2  # autoregression order: two frames carry a vibration's phase at the stride
STIFF_ANGSTROM = 0.1  # a 1–2, 1–3 or 1–4 pair steadier than this (training std) is stiff geometry
MAX_ATOMS = 512  # every pair's excluded volume is kept: a molecule, not a box of them
SOLVE_ITERATIONS = 4  # Gauss–Newton steps at least (realisable targets: ~1e-3 Å after 3; SHAKE sweeps: ~50)
MAX_SOLVE_ITERATIONS = 30  # then a row goes on until its largest step is below CONVERGED_ANGSTROM: stopped
CONVERGED_ANGSTROM = 1e-4  # early, the drawn distances are not met and the stiff motion (its temperature) is damped
SOLVE_DAMPING = 1e-2  # × mass (amu): the least mass-weighted move along what the distances leave free
MAX_MOVE_ANGSTROM = 0.1  # no atom moves further in one Gauss–Newton step (a bad linearisation cannot run off)
MIN_FRAMES_PER_PARAMETER = 5  # consecutive training frames per column of the autoregression's design
CLOSEST_CHUNK_FRAMES = 256


def stiff_pairs(bonds: np.ndarray, runs: Sequence[np.ndarray]) -> np.ndarray:
    """[C, 2] (i < j): the bonds, their 1–3 and their 1–4 pairs that are steadier than ``STIFF_ANGSTROM`` (training
    standard deviation) over ``runs`` (training frames [T, N, 3] each); a rotor's 1–4 pairs, or a bond that
    breaks and forms (a proton hopping between two oxygens), are left to the model."""
    from ..metrics.liquid import excluded_pairs

    near = excluded_pairs(bonds)
    neighbours: dict[int, set[int]] = {}
    for i, j in np.asarray(bonds, dtype=np.int64).reshape(-1, 2).tolist():
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    torsions = {(min(a, d), max(a, d)) for b, c in near if c in neighbours.get(b, ())
                for a in neighbours[b] - {c} for d in neighbours[c] - {b} if a != d}
    candidates = np.array(sorted(near | torsions), dtype=np.int64).reshape(-1, 2)
    spread = np.concatenate([_lengths(run, candidates) for run in runs]).std(axis=0)
    return candidates[spread < STIFF_ANGSTROM]


def _lengths(frames: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.linalg.norm(frames[:, pairs[:, 1]] - frames[:, pairs[:, 0]], axis=-1)


def fit_local_geometry(runs: Sequence[np.ndarray], atomic_numbers, bonds: Optional[np.ndarray] = None,
                       where: str = "the training frames") -> dict[str, Tensor]:
    """The state of a :class:`LocalGeometry` fitted on ``runs``: lists of consecutive training frames [T, N, 3] Å
    at the model's stride. ``bonds`` [B, 2] from a topology, else from covalent radii on the first frame.
    A fit the data cannot support is a :class:`UserError` naming ``where``."""
    from ..metrics.physics import detect_bonds, masses_amu

    runs = [np.asarray(run, dtype=np.float64) for run in runs if len(run) > ORDER]
    n_atoms = runs[0].shape[1] if runs else 0
    if n_atoms > MAX_ATOMS:
        raise UserError(f"{where}: model.local_geometry=sampled is for molecules of up to {MAX_ATOMS} atoms "
                        f"(this system has {n_atoms})")
    bonds = detect_bonds(runs[0][0], atomic_numbers) if bonds is None and runs else bonds
    if bonds is None or len(bonds) == 0:
        raise UserError(f"{where}: model.local_geometry=sampled needs bonds (none found)")
    pairs = stiff_pairs(bonds, runs)
    lagged = [_lengths(run, pairs) for run in runs]
    design_rows = sum(len(d) - ORDER for d in lagged)
    if design_rows < MIN_FRAMES_PER_PARAMETER * ORDER * len(pairs):
        raise UserError(f"{where}: {design_rows} consecutive training frame pairs are too few to fit the motion of "
                        f"{len(pairs)} stiff distances (model.local_geometry=sampled needs "
                        f"{MIN_FRAMES_PER_PARAMETER * ORDER * len(pairs)})")
    mean = np.concatenate(lagged).mean(axis=0)
    now = np.concatenate([d[ORDER:] - mean for d in lagged])
    before = np.concatenate([np.concatenate([d[ORDER - k:len(d) - k] - mean for k in range(1, ORDER + 1)], axis=1)
                             for d in lagged])  # [rows, ORDER·C]: lag 1, then lag 2
    transition = np.linalg.lstsq(before, now, rcond=None)[0].T  # [C, ORDER·C]
    residual = now - before @ transition.T
    covariance = residual.T @ residual / len(residual)
    noise = np.linalg.cholesky(covariance + 1e-12 * np.trace(covariance) / len(pairs) * np.eye(len(pairs)))
    stiff = {tuple(p) for p in pairs.tolist()}
    others = np.array([(i, j) for i in range(n_atoms) for j in range(i + 1, n_atoms) if (i, j) not in stiff],
                      dtype=np.int64).reshape(-1, 2)
    closest = _closest_by_elements(runs, others, np.asarray(atomic_numbers))
    as_tensor = lambda a, dtype=torch.float64: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    return {"pairs": as_tensor(pairs, torch.long), "mean": as_tensor(mean), "transition": as_tensor(transition),
            "noise": as_tensor(noise), "excluded_pairs": as_tensor(others, torch.long),
            "closest": as_tensor(closest), "inverse_mass": as_tensor(1.0 / masses_amu(atomic_numbers))}


def _closest_by_elements(runs: Sequence[np.ndarray], pairs: np.ndarray, atomic_numbers: np.ndarray) -> np.ndarray:
    """[P]: for each pair, the closest any pair of the same two elements came in ``runs`` (an excluded volume by
    element pair: a conformation the training frames did not visit is not pushed apart as if it were a clash)."""
    if not len(pairs):
        return np.zeros(0)
    closest = np.full(len(pairs), np.inf)
    for run in runs:  # a few frames at a time: frames × pairs of a large molecule would not fit at once
        for first in range(0, len(run), CLOSEST_CHUNK_FRAMES):
            closest = np.minimum(closest, _lengths(run[first:first + CLOSEST_CHUNK_FRAMES], pairs).min(axis=0))
    kinds = np.sort(atomic_numbers[pairs], axis=1)
    _, kind = np.unique(kinds, axis=0, return_inverse=True)
    kind = kind.reshape(-1)
    by_kind = np.full(kind.max() + 1, np.inf)
    np.minimum.at(by_kind, kind, closest)
    return by_kind[kind]


class LocalGeometry(nn.Module):
    """The fitted model of the stiff distances (module doc), as buffers (float64: the state of a saved model)."""

    def __init__(self, state: dict[str, Tensor]):
        super().__init__()
        missing = {"pairs", "mean", "transition", "noise", "excluded_pairs", "closest", "inverse_mass"} - set(state)
        if missing:
            raise UserError(f"the local geometry state lacks {sorted(missing)}")
        for name, value in state.items():  # a checkpoint may have stored everything as float32
            value = torch.as_tensor(value)
            self.register_buffer(name, value.long() if name.endswith("pairs") else value.double())

    @classmethod
    def of(cls, cfg, state: Optional[dict]) -> Optional["LocalGeometry"]:
        """The local geometry a model of config ``cfg`` (:class:`~asteroid_hpc.config.schema.ModelConfig`) takes:
        ``state`` with ``model.local_geometry=sampled`` (required there, refused elsewhere), else None."""
        if (cfg.local_geometry == "sampled") != (state is not None):
            raise UserError("model.local_geometry=sampled needs, and only it takes, a fitted local geometry (train "
                            "fits it on the training frames; saved weights carry it)")
        return None if state is None else cls(state)

    @property
    def n_atoms(self) -> int:
        return len(self.inverse_mass)

    def targets(self, previous: Sequence[Tensor], noise: Tensor) -> Tensor:
        """Stiff distances [B, C] drawn after the frames ``previous`` (newest first, [B, N, 3] each) with the
        standard normal ``noise`` [B, C]."""
        lagged = torch.cat([self._lengths(frame) - self.mean for frame in previous[:ORDER]], dim=1)
        return self.mean + lagged @ self.transition.T + noise @ self.noise.T

    def _lengths(self, frames: Tensor) -> Tensor:
        x = frames.double()
        return torch.linalg.vector_norm(x[:, self.pairs[:, 1]] - x[:, self.pairs[:, 0]], dim=-1)

    def impose(self, proposal: Tensor, targets: Tensor) -> Tensor:
        """``proposal`` [B, N, 3] moved onto the stiff ``targets`` [B, C] with non-bonded pairs kept apart: damped
        Gauss–Newton on the distance residuals (the stiff ones, and each excluded pair closer than its floor,
        pulled to it), each step the least mass-weighted move (module doc). Rows are solved independently."""
        x = proposal.double()
        batch, n_atoms, _ = x.shape
        damping = SOLVE_DAMPING * torch.diag((1.0 / self.inverse_mass).repeat_interleave(3))
        moving = torch.ones(batch, dtype=torch.bool, device=x.device)  # a row stops on its own step only
        for iteration in range(MAX_SOLVE_ITERATIONS):
            apart = torch.linalg.vector_norm(x[:, self.excluded_pairs[:, 1]] - x[:, self.excluded_pairs[:, 0]], dim=-1)
            close = (apart < self.closest).any(dim=0)  # in any row; in the others these rows are zero
            pairs = torch.cat([self.pairs, self.excluded_pairs[close]])
            floors = self.closest[close]
            vectors = x[:, pairs[:, 1]] - x[:, pairs[:, 0]]
            lengths = torch.linalg.vector_norm(vectors, dim=-1).clamp_min(1e-9)
            active = torch.cat([torch.ones_like(targets), (lengths[:, len(self.pairs):] < floors).double()], dim=1)
            residual = (lengths - torch.cat([targets, floors.expand(batch, -1)], dim=1)) * active  # [B, P]
            units = vectors / lengths.unsqueeze(-1) * active.unsqueeze(-1)
            jacobian = x.new_zeros(batch, len(pairs), n_atoms, 3)  # d residual / d x
            rows = torch.arange(len(pairs), device=x.device)
            jacobian[:, rows, pairs[:, 1]] = units
            jacobian[:, rows, pairs[:, 0]] = -units
            jacobian = jacobian.view(batch, len(pairs), 3 * n_atoms)
            normal = jacobian.transpose(1, 2) @ jacobian + damping
            step = torch.linalg.solve(normal, -(jacobian.transpose(1, 2) @ residual.unsqueeze(-1)))
            step = step.view(batch, n_atoms, 3)
            largest = torch.linalg.vector_norm(step, dim=-1).amax(dim=1).clamp_min(1e-12)  # a trust region per row
            x = x + step * ((MAX_MOVE_ANGSTROM / largest).clamp(max=1.0) * moving).view(-1, 1, 1)
            if iteration + 1 >= SOLVE_ITERATIONS:
                moving &= largest >= CONVERGED_ANGSTROM
                if not bool(moving.any()):
                    break
        return x

    def stepper(self, window: Tensor, generator) -> Callable[[Tensor], Tensor]:
        """For one pass after ``window`` [B, m, N, 3]: a function of each free-running step's proposed frame
        [B, N, 3] giving the sampled one (it remembers the frames it gave). ``generator`` as in
        :func:`~.thermal.standard_normal`."""
        from .thermal import standard_normal

        if window.shape[2] != self.n_atoms:
            raise UserError(f"the model's local geometry is of {self.n_atoms} atoms, the input has {window.shape[2]}")
        previous = [window[:, -k] for k in range(1, ORDER + 1)]

        def step(proposal: Tensor) -> Tensor:
            noise = standard_normal((len(self.mean),), proposal.shape[0], generator, torch.float64, proposal.device)
            frame = self.impose(proposal, self.targets(previous, noise)).to(proposal.dtype)
            previous.insert(0, frame)
            del previous[ORDER:]
            return frame

        return step


def free_step(window: Tensor, last: Tensor, hold: Optional[tuple], geometry: Optional[LocalGeometry],
              generator) -> Callable[[Tensor], Tensor]:
    """What each free-running step of a pass after ``window`` (a displacement [B, 1, N, 3] from ``last``) becomes:
    its local geometry sampled (``geometry``), then projected onto the held distances (``hold`` = (constraints,
    cell), :func:`~.constraints.held_steps`); the identity without either."""
    sampled = None if geometry is None else geometry.stepper(window, generator)

    def held(step: Tensor) -> Tensor:
        if sampled is not None:
            step = sampled((step + last)[:, 0]).unsqueeze(1) - last
        return step if hold is None else held_steps(step, last, *hold)

    return held
