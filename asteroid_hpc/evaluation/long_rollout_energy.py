"""Protocol L's GFN2-xTB energies: of sampled forecast frames, of MD frames, and of the relaxed minimum.

The thermal excess of an ensemble is its mean potential energy above the minimum of its basin: for a
molecule at 300 K about (3N − 6)·k_BT/2 plus the anharmonic rest. MD's is ⟨E_MD⟩ − E_min; a forecast's,
⟨E_forecast⟩ − E_min over its sampled frames. E_min: the lowest sampled MD frame relaxed by BFGS.
"""

from __future__ import annotations

import time

import numpy as np

from ..logs import get_logger

log = get_logger(__name__)

MIN_MD_ENERGY_FRAMES = 64
BROKEN_BOND_FACTOR = 2.0  # a frame with a bond beyond this times its MD mean length is broken: no xTB energy
RELAX_STEPS = 300
RELAX_FMAX_EV_PER_ANGSTROM = 0.01


def sampled_leads(n_frames: int, count: int) -> np.ndarray:
    """At most ``count`` lead-time indices (0-based) spaced evenly in log time from the first to the last, as
    the plots are: early leads, where a forecast usually leaves MD, are sampled densely."""
    return np.unique(np.geomspace(1, n_frames, min(count, n_frames)).round().astype(np.int64)) - 1


def thermal_excess(md_eV, forecast_eV, minimum_eV: float) -> dict:
    """MD's and the forecast's mean energy above ``minimum_eV`` (NaN frames ignored) and their ratio."""
    md, forecast = float(np.nanmean(md_eV)) - minimum_eV, float(np.nanmean(forecast_eV)) - minimum_eV
    return {"md_eV": md, "forecast_eV": forecast, "ratio": forecast / md if md > 0 else float("nan")}


def xtb_energies(forecast: np.ndarray, broken: np.ndarray, md_frames: np.ndarray, atomic_numbers: np.ndarray,
                 samples: int, molecule: str | None, frame_fs: float, notes: list[str]) -> dict | None:
    """GFN2-xTB energies of ``samples`` log-spaced lead times of every rollout (NaN where the frame is
    ``broken`` [S, H]: an SCF on a molecule in pieces is slow and meaningless), of MD frames and the relaxed
    minimum (module doc); None (with a note) where none are computed."""
    if samples == 0:
        notes.append("potential energy: not computed (evaluate.energy_samples = 0)")
        return None
    if molecule is None:
        notes.append("potential energy: not computed (not a molecule of the xTB generator's table, in its atom "
                     "order)")
        return None
    from ..datagen.xtb import xtb_minimum_energy, xtb_potential_energies

    began = time.perf_counter()
    n_rollouts, n_frames = forecast.shape[:2]
    lead_index = sampled_leads(n_frames, samples)
    sampled = forecast[:, lead_index].reshape(-1, *forecast.shape[2:])
    whole = ~broken[:, lead_index].reshape(-1)
    forecast_eV = np.full(len(sampled), np.nan)
    forecast_eV[whole] = xtb_potential_energies(sampled[whole], atomic_numbers)
    n_md = max(MIN_MD_ENERGY_FRAMES, len(lead_index) * n_rollouts)
    md_index = np.unique(np.linspace(0, len(md_frames) - 1, min(n_md, len(md_frames))).round().astype(np.int64))
    md_eV = xtb_potential_energies(md_frames[md_index], atomic_numbers)
    lowest = md_frames[md_index][int(np.nanargmin(md_eV))]
    minimum_eV = xtb_minimum_energy(lowest, atomic_numbers, RELAX_STEPS, RELAX_FMAX_EV_PER_ANGSTROM)
    seconds = time.perf_counter() - began
    failed = int(np.isnan(forecast_eV[whole]).sum())
    if (~whole).any() or failed:
        notes.append(f"potential energy: of {len(forecast_eV)} sampled forecast frames, {int((~whole).sum())} were "
                     f"broken (a bond beyond {BROKEN_BOND_FACTOR:g}× its MD mean length; no energy computed) and the "
                     f"SCF failed on {failed}; both count as out of MD's range")
    log.info("protocol L: %d GFN2-xTB energies in %.1f s", int(whole.sum()) + len(md_eV), seconds)
    return {"lead_index": lead_index, "lead_fs": (lead_index + 1) * frame_fs,
            "forecast_eV": forecast_eV.reshape(n_rollouts, len(lead_index)), "md_eV": md_eV, "minimum_eV": minimum_eV,
            "seconds": seconds}
