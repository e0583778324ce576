"""Energy conservation of an NVE run: linear drift and fluctuation of the total energy."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


class EnergyConservationError(RuntimeError):
    """The total energy of an NVE run drifted or fluctuated absurdly: the trajectory is not usable."""


@dataclass(frozen=True)
class EnergyConservation:
    """Total-energy statistics of an NVE trajectory, per atom."""

    drift_meV_per_ps_per_atom: float  # slope of a linear fit of E_total(t)
    fluctuation_meV_per_atom: float  # standard deviation of E_total around that fit
    potential_std_meV_per_atom: float  # scale of the physical energy exchange, for comparison
    duration_ps: float
    n_frames: int

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"energy drift {self.drift_meV_per_ps_per_atom:+.4f} meV/ps/atom, "
                f"fluctuation {self.fluctuation_meV_per_atom:.4f} meV/atom "
                f"(potential energy std {self.potential_std_meV_per_atom:.2f} meV/atom) over "
                f"{self.duration_ps:.3f} ps")


def measure_conservation(potential_eV: np.ndarray, kinetic_eV: np.ndarray, time_ps: np.ndarray,
                         n_atoms: int) -> EnergyConservation:
    """Fit E_total = a + b t; report b and the residual standard deviation, per atom, in meV."""
    total = np.asarray(potential_eV, dtype=np.float64) + np.asarray(kinetic_eV, dtype=np.float64)
    time_ps = np.asarray(time_ps, dtype=np.float64)
    if len(total) < 3:
        raise ValueError("energy conservation needs at least 3 frames")
    slope, intercept = np.polyfit(time_ps, total, 1)
    residual = total - (intercept + slope * time_ps)
    per_atom_meV = 1000.0 / n_atoms
    return EnergyConservation(
        drift_meV_per_ps_per_atom=float(slope * per_atom_meV),
        fluctuation_meV_per_atom=float(residual.std() * per_atom_meV),
        potential_std_meV_per_atom=float(np.std(potential_eV) * per_atom_meV),
        duration_ps=float(time_ps[-1] - time_ps[0]),
        n_frames=len(total),
    )


def check_conservation(stats: EnergyConservation, *, max_drift_meV_per_ps_per_atom: float = 1.0,
                       max_fluctuation_meV_per_atom: float = 5.0) -> None:
    """Raise EnergyConservationError when the NVE run is absurd.

    The fluctuation must stay below its bound. A drift counts only when it is fast and has also
    accumulated beyond the fluctuation bound: over a few femtoseconds the fitted slope is noise.
    """
    if not np.isfinite(stats.fluctuation_meV_per_atom) or not np.isfinite(stats.drift_meV_per_ps_per_atom):
        raise EnergyConservationError(f"non-finite total energy: {stats.summary()}")
    if stats.fluctuation_meV_per_atom > max_fluctuation_meV_per_atom:
        raise EnergyConservationError(
            f"total energy fluctuates more than {max_fluctuation_meV_per_atom} meV/atom: {stats.summary()}")
    accumulated = abs(stats.drift_meV_per_ps_per_atom) * stats.duration_ps
    if (abs(stats.drift_meV_per_ps_per_atom) > max_drift_meV_per_ps_per_atom
            and accumulated > max_fluctuation_meV_per_atom):
        raise EnergyConservationError(
            f"total energy drifts faster than {max_drift_meV_per_ps_per_atom} meV/ps/atom: {stats.summary()}")
