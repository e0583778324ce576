"""Ensemble forecasts: perturbed members rolled out iteratively, two levels of parallelism.

Members are dealt round-robin to member groups; the ranks of a group share one member by spatial domain
decomposition (``ensemble.domains`` ranks per member). Each member streams its own AMBER NetCDF trajectory;
a re-run skips finished members and continues unfinished ones exactly; rank 0 writes the summary.

Modules: ``grid`` (process grid, member division), ``perturb`` (starting windows, per-member random
streams), ``domains`` (decomposition, halo exchange, global reductions), ``rollout`` (pass loop),
``member`` (file streaming and resume), ``progress``, ``summary``, ``store`` (output layout), ``run``.
"""

from .grid import ProcessGrid, parse_grid
from .perturb import member_rng
from .run import run_ensemble
from .summary import Reference

__all__ = ["ProcessGrid", "Reference", "member_rng", "parse_grid", "run_ensemble"]
