"""Ensemble forecasts: perturbed members rolled out iteratively, two levels of parallelism.

Members are dealt round-robin to member groups; the ranks of a group share one member by spatial domain
decomposition (``ensemble.domains`` ranks per member). Each member streams its own AMBER NetCDF trajectory;
a re-run skips finished members and continues unfinished ones exactly; rank 0 writes the summary.

A rank forecasts its members in batches through one forward (``ensemble.batch_members``), each member
still streamed to its own file; a batch that would not fit ``ensemble.batch_memory_mb`` is split.

Modules: ``grid`` (process grid, member division), ``perturb`` (starting windows, per-member random
streams), ``domains`` (decomposition, halo exchange, global reductions), ``rollout`` (pass loop over a
batch on the device), ``batch`` (batches in lockstep, per-member streams), ``sizing`` (batch size and
memory), ``member`` (file helpers and resume points), ``progress``, ``summary``, ``store`` (output
layout), ``run``.
"""

from .grid import ProcessGrid, parse_grid
from .perturb import member_rng
from .run import run_ensemble
from .summary import Reference

__all__ = ["ProcessGrid", "Reference", "member_rng", "parse_grid", "run_ensemble"]
