"""The checks of the model's forward arguments: shapes, atomic numbers, the periodic cell, the domain. Each
refusal is a one-line :class:`asteroid_hpc.errors.UserError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import Tensor

from ..errors import UserError
from .domain import Domain
from .graph import NeighborGraph
from .periodic import as_cells, check_radius

if TYPE_CHECKING:  # pragma: no cover
    from .asteroid import Asteroid


def check_inputs(model: "Asteroid", history: Tensor, atomic_numbers: Tensor, horizon: int,
                 target: Optional[Tensor]) -> None:
    """Refuses a history, atomic numbers, horizon or target the model cannot take."""
    m = model.cfg.history_frames
    if history.dim() != 4 or history.shape[1] != m or history.shape[-1] != 3:
        raise UserError(f"history must be [B, {m}, N, 3] (model.history_frames={m}), got {list(history.shape)}")
    if horizon < 1:
        raise UserError(f"horizon must be >= 1 frame, got {horizon}")
    if atomic_numbers.shape[-1] != history.shape[2]:
        raise UserError(f"atomic_numbers has {atomic_numbers.shape[-1]} atoms, history has {history.shape[2]}")
    elements = model.cfg.num_elements
    if atomic_numbers.numel() and (int(atomic_numbers.min()) < 0 or int(atomic_numbers.max()) >= elements):
        raise UserError(f"atomic numbers must lie in [0, model.num_elements={model.cfg.num_elements})")
    if target is not None and (target.shape[1] < horizon or target.shape[2:] != history.shape[2:]):
        raise UserError(f"target must be [B, >= {horizon}, N, 3], got {list(target.shape)}")
    if model.uses_reference and len(model.reference) != history.shape[2]:
        raise UserError(f"the model's reference structure has {len(model.reference)} atoms, the input "
                        f"{history.shape[2]} (a reference model forecasts the whole molecule it was trained on)")


def check_cell(model: "Asteroid", cell, history: Tensor, graph: Optional[NeighborGraph]) -> Optional[Tensor]:
    """The periodic cell as [B, 3, 3] in the history's dtype, or None (open); refuses, in one line, a cell
    this model cannot take or the lack of one it needs."""
    if model.data_signature and bool(model.data_signature.get("periodic", False)) != (cell is not None):
        raise UserError("this model was trained on periodic systems: it needs the input's cell (box vectors)"
                        if cell is None else "this model was trained on open systems (no periodic box): it "
                        "cannot forecast a periodic system; train one on periodic data")
    if cell is None:
        if graph is not None and graph.shift is not None:
            raise UserError("the neighbour list has periodic image shifts but no cell was given")
        return None
    if model.uses_reference or model.cfg.rotation_basis:
        raise UserError("model.reference_structure and model.rotation_basis are vectors of a whole molecule: "
                        "they do not apply to a periodic box")
    cell = as_cells(cell, history.shape[0], dtype=history.dtype, device=history.device)
    if model.cfg.attention != "full":
        check_radius(cell, model.cfg.cutoff_angstrom)
        if graph is not None and graph.shift is None:
            raise UserError("a periodic input needs a neighbour list with image shifts (radius_graph(..., cell))")
    return cell


def check_domain(model: "Asteroid", domain: Domain, sample: bool, constrained: bool = False,
                 periodic_geometry: bool = False) -> Domain:
    """``domain``, unless the model cannot run on part of a system: whole-molecule vectors, sampling (each
    rank would draw its own noise for the halo atoms it shares with another) or constraint projection on
    a domain whose halo may cut a constrained group (the ranks holding it would project it differently;
    a domain with ``whole_groups`` completed them). A sampled local geometry (``periodic_geometry``) is never
    periodic."""
    if periodic_geometry:
        raise UserError("model.local_geometry=sampled is for isolated molecules: this input is periodic")
    if domain.owned_mask is None:
        return domain
    if constrained and not getattr(domain, "whole_groups", False):
        raise UserError("constraint projection on a system split into spatial domains needs each domain to hold "
                        "whole constraint groups (ensemble/domains.decompose(groups=...))")
    if model.uses_reference or model.cfg.rotation_basis:
        raise UserError("model.reference_structure and model.rotation_basis are vectors of the whole molecule: "
                        "they cannot be split into spatial domains (use one rank per member)")
    if sample:
        raise UserError("a model that samples (model.stochastic, model.local_geometry=sampled) cannot sample a system "
                        "split into spatial domains yet (each rank would draw its own noise for halo atoms): use one "
                        "rank per member, or mean_only")
    return domain
