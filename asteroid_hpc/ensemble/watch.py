"""The ensemble watches its own output: per member and lead time, the largest bond deviation, the largest
per-frame displacement and (in the summary) clashes; a member beyond a threshold has blown up.

Bonds come from covalent radii on the last frame of the unperturbed starting window, and each bond's
reference length is its mean over that window, so every member is checked against the same numbers
whatever rank runs it. The same checks run twice on the same float32 frames: on a group's root while the
member rolls out (a warning, and with ``ensemble.stop_on_blowup`` an early stop), and in the summary
from the member files (``summary.json`` lists blown-up members; ``summary.nc`` holds the series). In a periodic box
bonds, displacements and clashes are minimum-image distances, so wrapped files read as unwrapped ones do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config.schema import EnsembleConfig
from ..metrics import physics
from ..metrics.liquid import periodic_clash_counts, periodic_pair_lengths
from .periodic import minimum_image_steps, periodic_bonds


@dataclass
class FrameChecks:
    """Checks of consecutive frames: [F] each."""

    bond_deviation_angstrom: np.ndarray  # largest |bond − its starting length| (0 without bonds; inf: not finite)
    worst_bond: np.ndarray  # index into Watch.bonds of that bond (-1 without bonds)
    displacement_angstrom: np.ndarray  # largest distance an atom moved since the previous frame (inf: not finite)
    moving_atom: np.ndarray  # the atom that moved it


@dataclass
class Watch:
    bonds: np.ndarray  # [B, 2]
    reference_lengths: np.ndarray  # [B] Å
    symbols: list[str]
    bond_angstrom: float
    displacement_angstrom: float
    clash_angstrom: float
    cell: Optional[np.ndarray] = None  # a periodic box [6] (Å, °): every distance is a minimum image

    @classmethod
    def from_window(cls, window: np.ndarray, atomic_numbers, cfg: EnsembleConfig,
                    cell: Optional[np.ndarray] = None) -> "Watch":
        """The watch of a starting window [m, N, 3] (unperturbed) with ``cfg``'s thresholds, in the periodic box
        ``cell`` [6] if given."""
        from ase.data import chemical_symbols

        bonds = physics.detect_bonds(window[-1], atomic_numbers) if cell is None else \
            periodic_bonds(window[-1], atomic_numbers, cell)
        watch = cls(bonds, np.zeros(len(bonds)), [chemical_symbols[int(z)] for z in atomic_numbers],
                    cfg.blowup_bond_angstrom, cfg.blowup_displacement_angstrom, cfg.clash_angstrom, cell)
        watch.reference_lengths = watch.bond_lengths(window).mean(axis=0)
        return watch

    def bond_lengths(self, frames: np.ndarray) -> np.ndarray:
        """The lengths [F, B] of the watched bonds (minimum images in a box)."""
        if self.cell is None:
            return physics.bond_lengths(frames, self.bonds)
        return periodic_pair_lengths(frames, self.bonds, self.cell)

    def check(self, frames: np.ndarray, previous: np.ndarray) -> FrameChecks:
        """Checks of ``frames`` [F, N, 3], the first one measured from ``previous`` [N, 3]."""
        frames = np.asarray(frames, dtype=np.float64)
        if self.cell is None:
            before = np.concatenate([np.asarray(previous, dtype=np.float64)[None], frames[:-1]])
            step = np.linalg.norm(frames - before, axis=-1)
        else:
            step = minimum_image_steps(frames, previous, self.cell)
        step = np.where(np.isfinite(step), step, np.inf)
        if len(self.bonds):
            deviation = np.abs(self.bond_lengths(frames) - self.reference_lengths)
            deviation = np.where(np.isfinite(deviation), deviation, np.inf)
            worst = deviation.argmax(axis=1)
            largest = deviation[np.arange(len(frames)), worst]
        else:
            worst, largest = np.full(len(frames), -1), np.zeros(len(frames))
        return FrameChecks(largest, worst, step.max(axis=1), step.argmax(axis=1))

    def clashes(self, frames: np.ndarray) -> np.ndarray:
        if self.cell is None:
            return physics.clash_counts(frames, self.bonds, self.clash_angstrom)
        bonded = {(int(i), int(j)) for i, j in self.bonds}  # the same exclusions as in an open system
        return periodic_clash_counts(frames, self.cell, bonded, self.clash_angstrom)

    def first_blowup(self, checks: FrameChecks, first_lead: int) -> dict | None:
        """{"first_frame": lead time in frames, "cause": …} of the first blown-up frame (leads first_lead …)."""
        bad = (checks.bond_deviation_angstrom > self.bond_angstrom) | (checks.displacement_angstrom
                                                                      > self.displacement_angstrom)
        hits = np.flatnonzero(bad)
        if not len(hits):
            return None
        f = int(hits[0])
        if checks.bond_deviation_angstrom[f] > self.bond_angstrom:
            i, j = self.bonds[checks.worst_bond[f]]
            cause = (f"bond {i}-{j} ({self.symbols[i]}–{self.symbols[j]}) off by "
                     f"{checks.bond_deviation_angstrom[f]:.2f} Å (threshold {self.bond_angstrom:g})")
        else:
            atom = int(checks.moving_atom[f])
            cause = (f"atom {atom} ({self.symbols[atom]}) moved {checks.displacement_angstrom[f]:.2f} Å in one frame "
                     f"(threshold {self.displacement_angstrom:g})")
        return {"first_frame": first_lead + f, "cause": cause}

    def describe(self) -> dict:
        return {"bonds": len(self.bonds), "blowup_bond_angstrom": self.bond_angstrom,
                "blowup_displacement_angstrom": self.displacement_angstrom, "clash_angstrom": self.clash_angstrom}


def initial_watch(initial, cfg: EnsembleConfig, history_frames: int) -> Watch:
    """The watch of the unperturbed starting window of ``initial`` (an InitialCondition)."""
    first = initial.end_frame - (history_frames - 1) * initial.frame_stride
    window = initial.read(first, initial.end_frame + 1)
    return Watch.from_window(window, initial.atomic_numbers, cfg, initial.cell)
