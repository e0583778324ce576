"""The ensemble summary, computed by streaming over lead times (memory bounded by a few lead times of all
members, not by the horizon).

- ``mean.nc``: the ensemble-mean trajectory (AMBER NetCDF, lead times 1 … H).
- ``summary.nc`` (classic NetCDF, dimension ``lead_time``): ``spread_per_atom`` [H, N] (RMS distance of the
  members from the mean, Å), ``spread_rms`` [H]; against a reference: ``rmsd`` [H, M] (each member, no
  superposition), ``rmsd_ensemble_mean`` [H], ``mse_members`` [H] (per-coordinate MSE averaged over
  members, Å²), ``mse_ensemble_mean`` [H], ``crps`` [H] (Å). Lead times the reference does not cover are NaN.
- ``summary.json``: sizes, files and headline numbers.

Reference alignment: frame ``reference_start + j − 1`` of the reference is the truth at lead time j, so the
reference must have the forecast's frame spacing (every ``data.frame_stride``-th frame of the raw trajectory).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..atomic import atomic_output, write_json_atomic
from ..data.amber import NETCDF3_FORMAT, AmberReader, AmberWriter
from ..errors import user_error
from ..metrics.ensemble import crps_per_lead_time, ensemble_mean, ensemble_spread_per_atom, rmsd_per_lead_time
from ..geometry import rmsd
from ..metrics.errors import mse_per_lead_time
from .member import lead_times_ps
from .store import member_path

SUMMARY_MEMORY_BYTES = 1 << 29  # float64 working copies of one block of lead times of all members


@dataclass
class Reference:
    path: Path
    start_frame: int = 0


def lead_block_frames(members: int, n_atoms: int, chunk_frames: int) -> int:
    per_lead = members * n_atoms * 3 * 8 * 4  # the metrics hold a few float64 copies
    return max(1, min(chunk_frames, SUMMARY_MEMORY_BYTES // per_lead))


def write_summary(outdir: Path, members: int, horizon_frames: int, chunk_frames: int, atomic_numbers: np.ndarray,
                  timestep_ps: Optional[float], reference: Optional[Reference], extra: dict,
                  end_time_ps: float = 0.0) -> dict:
    import netCDF4

    n_atoms = len(atomic_numbers)
    block = lead_block_frames(members, n_atoms, chunk_frames)
    totals = {"spread_rms_sum": 0.0, "crps_sum": 0.0, "scored": 0}
    last = {}
    with ExitStack() as stack:
        nc_tmp = stack.enter_context(atomic_output(outdir / "summary.nc"))  # exits last: renamed when all is closed
        readers = [stack.enter_context(AmberReader(member_path(outdir, m))) for m in range(members)]
        for m, reader in enumerate(readers):
            if reader.n_frames != horizon_frames or reader.n_atoms != n_atoms:
                raise user_error(reader.path, f"has {reader.n_frames} frames of {reader.n_atoms} atoms, expected "
                                              f"{horizon_frames} of {n_atoms}")
        ref_reader = stack.enter_context(AmberReader(reference.path)) if reference else None
        if ref_reader is not None and ref_reader.n_atoms != n_atoms:
            raise user_error(reference.path, f"has {ref_reader.n_atoms} atoms, the ensemble has {n_atoms}")
        mean_writer = stack.enter_context(AmberWriter(outdir / "mean.nc", n_atoms, atomic_numbers,
                                                      timestep_ps=timestep_ps, title="asteroid-hpc ensemble mean"))
        nc = stack.enter_context(netCDF4.Dataset(nc_tmp, "w", format=NETCDF3_FORMAT))
        variables = _create_summary_variables(nc, members, n_atoms, reference is not None)
        for first in range(0, horizon_frames, block):
            stop = min(first + block, horizon_frames)
            coords = np.stack([r.read(first, stop).coordinates for r in readers])  # [M, F, N, 3]
            mean = ensemble_mean(coords)
            spread = ensemble_spread_per_atom(coords)
            lead = np.arange(first + 1, stop + 1)
            mean_writer.append(mean.astype(np.float32), lead_times_ps(lead, timestep_ps, end_time_ps))
            rows = slice(first, stop)
            variables["lead_time_frames"][rows] = lead
            variables["spread_per_atom"][rows] = spread
            spread_rms = np.sqrt((spread ** 2).mean(axis=1))
            variables["spread_rms"][rows] = spread_rms
            totals["spread_rms_sum"] += float(spread_rms.sum())
            last["spread_rms"] = float(spread_rms[-1])
            if ref_reader is not None:
                _score_block(variables, coords, mean, ref_reader, reference.start_frame, first, stop, totals, last)
        nc.sync()
    summary = {
        "members": members, "horizon_frames": horizon_frames, "n_atoms": n_atoms, "timestep_ps": timestep_ps,
        "files": {"members": "members/member_NNNNN.nc", "mean": "mean.nc", "per_lead_time": "summary.nc"},
        "spread_rms_angstrom_final": last["spread_rms"],
        "spread_rms_angstrom_mean_over_lead_times": totals["spread_rms_sum"] / horizon_frames,
        "reference": None,
        **extra,
    }
    if ref_reader is not None:
        summary["reference"] = {"path": str(reference.path), "start_frame": reference.start_frame,
                                "lead_times_scored": totals["scored"]}
        if totals["scored"]:
            summary.update({"crps_angstrom_mean_over_scored_lead_times": totals["crps_sum"] / totals["scored"],
                            "rmsd_ensemble_mean_angstrom_last_scored": last["rmsd_ensemble_mean"],
                            "mse_members_angstrom2_last_scored": last["mse_members"]})
    write_json_atomic(outdir / "summary.json", summary, indent=2)
    return summary


def _create_summary_variables(nc, members: int, n_atoms: int, with_reference: bool) -> dict:
    nc.title = "asteroid-hpc ensemble summary per lead time"
    nc.createDimension("lead_time", None)
    nc.createDimension("atom", n_atoms)
    nc.createDimension("member", members)
    spec = {"lead_time_frames": ("i4", ("lead_time",), "frames after the starting window"),
            "spread_per_atom": ("f4", ("lead_time", "atom"), "angstrom"),
            "spread_rms": ("f8", ("lead_time",), "angstrom")}
    if with_reference:
        spec.update({"rmsd": ("f8", ("lead_time", "member"), "angstrom"),
                     "rmsd_ensemble_mean": ("f8", ("lead_time",), "angstrom"),
                     "mse_members": ("f8", ("lead_time",), "angstrom2"),
                     "mse_ensemble_mean": ("f8", ("lead_time",), "angstrom2"),
                     "crps": ("f8", ("lead_time",), "angstrom")})
    variables = {}
    for name, (dtype, dims, units) in spec.items():
        variables[name] = nc.createVariable(name, dtype, dims)
        variables[name].units = units
    return variables


def _score_block(variables: dict, coords: np.ndarray, mean: np.ndarray, ref_reader: AmberReader, ref_start: int,
                 first: int, stop: int, totals: dict, last: dict) -> None:
    """Scores of lead times first+1 … stop against the reference frames they map to (NaN where it ends)."""
    n_block = stop - first
    truth = ref_reader.read(ref_start + first, ref_start + stop).coordinates  # clipped at the file's end
    covered = truth.shape[0]
    nan = np.full(n_block, np.nan)
    scores = {"rmsd": np.full((n_block, coords.shape[0]), np.nan), "rmsd_ensemble_mean": nan.copy(),
              "mse_members": nan.copy(), "mse_ensemble_mean": nan.copy(), "crps": nan.copy()}
    if covered:
        part, ref = coords[:, :covered], truth[:covered]
        scores["rmsd"][:covered] = rmsd_per_lead_time(part, ref, superpose=False).T
        scores["rmsd_ensemble_mean"][:covered] = rmsd(mean[:covered], ref)
        scores["mse_members"][:covered] = mse_per_lead_time(part, np.broadcast_to(ref, part.shape))
        scores["mse_ensemble_mean"][:covered] = mse_per_lead_time(mean[None, :covered], ref[None])
        scores["crps"][:covered] = crps_per_lead_time(part, ref)
        totals["scored"] += covered
        totals["crps_sum"] += float(scores["crps"][:covered].sum())
        last.update(rmsd_ensemble_mean=float(scores["rmsd_ensemble_mean"][covered - 1]),
                    mse_members=float(scores["mse_members"][covered - 1]))
    for name, values in scores.items():
        variables[name][first:stop] = values
