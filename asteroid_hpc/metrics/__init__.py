"""Forecast metrics: per-lead-time errors (MSE, shape MSE after superposition, ADE/FDE) and ensemble scores
(spread, RMSD, CRPS)."""

from .ensemble import (coordinate_crps, crps_per_lead_time, ensemble_mean, ensemble_spread_per_atom,
                       rmsd_per_lead_time)
from .errors import (ade_fde, displacement_per_lead_time, mse_per_lead_time, mse_per_sample,
                     superposed_mse_per_lead_time)
from ..geometry import kabsch_rmsd, kabsch_superpose, rmsd

__all__ = [
    "ade_fde", "coordinate_crps", "crps_per_lead_time", "displacement_per_lead_time", "ensemble_mean", "ensemble_spread_per_atom",
    "kabsch_rmsd", "kabsch_superpose", "mse_per_lead_time", "mse_per_sample", "rmsd", "rmsd_per_lead_time",
    "superposed_mse_per_lead_time",
]
