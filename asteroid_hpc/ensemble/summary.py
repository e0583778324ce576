"""The ensemble summary, computed by streaming over lead times (memory bounded by a few lead times of all
members, not by the horizon).

- ``mean.nc``: the ensemble-mean trajectory (AMBER NetCDF, lead times 1 … H).
- ``summary.nc`` (classic NetCDF, dimension ``lead_time``): ``spread_per_atom`` [H, N] (RMS distance of the
  members from the mean, Å), ``spread_rms`` [H]; against a reference: ``rmsd`` [H, M] (each member, no
  superposition), ``rmsd_ensemble_mean`` [H], ``mse_members`` [H] (per-coordinate MSE averaged over
  members, Å²), ``mse_ensemble_mean`` [H], ``crps`` [H] (Å). Lead times the reference does not cover are NaN.
- ``summary.json``: sizes, files and headline numbers; ``watch``: the blown-up members (first frame and
  cause), members stopped early, and per member the largest bond deviation, the largest displacement and
  the frames with clashes (:mod:`asteroid_hpc.ensemble.watch`); ``summary.nc`` then also holds
  ``max_bond_deviation``, ``max_displacement`` and ``clashes`` [H, M].
- Members stopped early (``ensemble.stop_on_blowup``) stay out of the mean, spread and scores.

Reference alignment: frame ``reference_start + j − 1`` of the reference is the truth at lead time j, so the
reference must have the forecast's frame spacing (every ``data.frame_stride``-th frame of the raw trajectory).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..atomic import atomic_output, write_json_atomic
from ..data.amber import NETCDF3_FORMAT, AmberReader, AmberWriter
from ..data.readers import ReaderView
from ..errors import user_error
from ..metrics.ensemble import crps_per_lead_time, ensemble_mean, ensemble_spread_per_atom, rmsd_per_lead_time
from ..geometry import rmsd
from ..metrics.errors import mse_per_lead_time
from ..logs import get_logger
from .member import lead_times_ps
from .periodic import ContinuousReader, OutputWrap
from .store import marker_path, member_path
from .watch import Watch

log = get_logger(__name__)

SUMMARY_MEMORY_BYTES = 1 << 29  # float64 working copies of one block of lead times of all members


@dataclass
class Reference:
    """The true continuation: a trajectory in any format preprocess reads, of the ensemble's atoms or of the
    whole system the model's atoms were selected from (then cut to them). ``file_atoms``: the whole system's
    atom count, for formats that do not hold theirs (AMBER ASCII)."""

    path: Path
    start_frame: int = 0
    file_atoms: Optional[int] = None


def open_reference(reference: Reference, n_atoms: int, atom_indices: Optional[np.ndarray]):
    """A reader of the reference as the ensemble's ``n_atoms`` atoms; UserError when it holds other atoms."""
    from ..data.readers import TrajectoryReader, needs_atom_count

    reader = TrajectoryReader(reference.path, check_time=False,
                              n_atoms=reference.file_atoms if needs_atom_count(reference.path) else None)
    if reader.n_atoms != n_atoms and (atom_indices is None or reader.n_atoms != reference.file_atoms):
        reader.close()
        raise user_error(reference.path, f"has {reader.n_atoms} atoms, the ensemble has {n_atoms}"
                                         + (f" (of {reference.file_atoms} in the input)" if atom_indices is not None
                                            else ""))
    return _model_atoms(reader, n_atoms, atom_indices)


def lead_block_frames(members: int, n_atoms: int, chunk_frames: int) -> int:
    per_lead = members * n_atoms * 3 * 8 * 4  # the metrics hold a few float64 copies
    return max(1, min(chunk_frames, SUMMARY_MEMORY_BYTES // per_lead))


def write_summary(outdir: Path, members: int, horizon_frames: int, chunk_frames: int, atomic_numbers: np.ndarray,
                  timestep_ps: Optional[float], reference: Optional[Reference], extra: dict,
                  watch: Optional[Watch] = None, starting_frames: Optional[list] = None,
                  end_time_ps: float = 0.0, atom_indices: Optional[np.ndarray] = None,
                  wrap: Optional[OutputWrap] = None, initial_frame: Optional[np.ndarray] = None) -> dict:
    """Stream over lead times of every member file: mean.nc, summary.nc, summary.json (see the module
    docstring). With ``watch`` (and each member's last starting frame, ``starting_frames``) the members are
    checked for blow-ups, bonds and clashes; members stopped early (their marker says so) stay out of the
    ensemble statistics. Times continue from ``end_time_ps``, the initial window's last frame. Full-system
    member files (``ensemble.write_full_system``) are read as the model's atoms ``atom_indices``. A periodic
    system (``wrap``: how member files hold it): members are read as continuous trajectories from their starting
    frames, the reference from ``initial_frame`` (the unperturbed window's last frame), and mean.nc is written
    as the members are, with the cell."""
    import netCDF4

    n_atoms = len(atomic_numbers)
    block = lead_block_frames(members, n_atoms, chunk_frames)
    stopped = _stopped_members(outdir, members)
    healthy = [m for m in range(members) if m not in stopped]
    totals = {"spread_rms_sum": 0.0, "crps_sum": 0.0, "scored": 0}
    last = {}
    watched = _WatchTotals(members, watch, starting_frames) if watch is not None else None
    with ExitStack() as stack:
        nc_tmp = stack.enter_context(atomic_output(outdir / "summary.nc"))  # exits last: renamed when all is closed
        readers = [_model_atoms(stack.enter_context(AmberReader(member_path(outdir, m))), n_atoms, atom_indices)
                   for m in range(members)]
        _check_member_files(readers, stopped, horizon_frames, n_atoms)
        ref_reader = stack.enter_context(open_reference(reference, n_atoms, atom_indices)) if reference else None
        if wrap is not None:  # continuous in time: no jump across a face reaches the statistics
            readers = [ContinuousReader(r, starting_frames[m], wrap.cell) for m, r in enumerate(readers)]
            ref_reader = None if ref_reader is None else ContinuousReader(ref_reader, initial_frame, wrap.cell)
        mean_writer = stack.enter_context(AmberWriter(outdir / "mean.nc", n_atoms, atomic_numbers,
                                                      timestep_ps=timestep_ps, title="asteroid-hpc ensemble mean",
                                                      cell=wrap is not None)) if healthy else None
        nc = stack.enter_context(netCDF4.Dataset(nc_tmp, "w", format=NETCDF3_FORMAT))
        variables = _create_summary_variables(nc, members, n_atoms, reference is not None and bool(healthy),
                                              watch is not None)
        for first in range(0, horizon_frames, block):
            stop = min(first + block, horizon_frames)
            variables["lead_time_frames"][first:stop] = np.arange(first + 1, stop + 1)
            coords = np.stack([readers[m].read(first, stop).coordinates for m in healthy]) if healthy else None
            if watched is not None:
                watched.block(variables, readers, coords, healthy, first, stop)
            if not healthy:
                continue
            mean = _mean_and_spread_block(variables, coords, mean_writer, lead_times_ps(
                np.arange(first + 1, stop + 1), timestep_ps, end_time_ps), first, stop, totals, last, wrap)
            if ref_reader is not None:
                _score_block(variables, coords, mean, ref_reader, reference.start_frame, first, stop, totals, last,
                             healthy)
        nc.sync()
    summary = _summary_record(members, horizon_frames, n_atoms, timestep_ps, healthy, stopped, totals, last, extra)
    if watched is not None:
        summary["watch"] = watched.record(stopped, timestep_ps)
    if ref_reader is not None:
        _add_reference_scores(summary, reference, totals, last)
    write_json_atomic(outdir / "summary.json", summary, indent=2)
    return summary


class _SelectedReader(ReaderView):
    """A full-system member file read as the model's atoms."""

    def __init__(self, reader: AmberReader, atom_indices: np.ndarray):
        super().__init__(reader)
        self.atom_indices, self.n_atoms = atom_indices, len(atom_indices)

    def read(self, start: int, stop: int):
        from dataclasses import replace

        chunk = self.reader.read(start, stop)
        return replace(chunk, coordinates=chunk.coordinates[:, self.atom_indices])


def _model_atoms(reader: AmberReader, n_atoms: int, atom_indices: Optional[np.ndarray]):
    """``reader``, or its model's atoms when it holds the full system."""
    return _SelectedReader(reader, atom_indices) if atom_indices is not None and reader.n_atoms != n_atoms \
        else reader


def _check_member_files(readers: list[AmberReader], stopped: dict[int, dict], horizon_frames: int,
                        n_atoms: int) -> None:
    """Every member file holds the horizon's frames of the ensemble's atoms (a stopped member: at most that)."""
    for m, reader in enumerate(readers):
        expected = f"{horizon_frames}" if m not in stopped else f"at most {horizon_frames}"
        if (reader.n_frames != horizon_frames and m not in stopped) or reader.n_frames > horizon_frames \
                or reader.n_atoms != n_atoms:
            raise user_error(reader.path, f"has {reader.n_frames} frames of {reader.n_atoms} atoms, expected "
                                          f"{expected} of {n_atoms}")


def _mean_and_spread_block(variables: dict, coords: np.ndarray, mean_writer: AmberWriter, time_ps: np.ndarray,
                           first: int, stop: int, totals: dict, last: dict,
                           wrap: Optional[OutputWrap] = None) -> np.ndarray:
    """Ensemble mean (appended to mean.nc at ``time_ps``; in a periodic box as ``wrap`` puts it, with the cell)
    and spread of lead times first+1 … stop; returns the mean."""
    mean = ensemble_mean(coords)
    spread = ensemble_spread_per_atom(coords)
    if wrap is None:
        mean_writer.append(mean.astype(np.float32), time_ps)
    else:
        lengths, angles = wrap.cell_arrays(len(mean))
        mean_writer.append(wrap(mean), time_ps, cell_lengths=lengths, cell_angles=angles)
    variables["spread_per_atom"][first:stop] = spread
    spread_rms = np.sqrt((spread ** 2).mean(axis=1))
    variables["spread_rms"][first:stop] = spread_rms
    totals["spread_rms_sum"] += float(spread_rms.sum())
    last["spread_rms"] = float(spread_rms[-1])
    return mean


def _summary_record(members: int, horizon_frames: int, n_atoms: int, timestep_ps: Optional[float],
                    healthy: list[int], stopped: dict[int, dict], totals: dict, last: dict, extra: dict) -> dict:
    """summary.json's sizes, files and spread (the watch and the reference scores are added to it)."""
    summary = {
        "members": members, "horizon_frames": horizon_frames, "n_atoms": n_atoms, "timestep_ps": timestep_ps,
        "files": {"members": "members/member_NNNNN.nc", "mean": "mean.nc" if healthy else None,
                  "per_lead_time": "summary.nc"},
        "spread_rms_angstrom_final": last.get("spread_rms"),
        "spread_rms_angstrom_mean_over_lead_times": totals["spread_rms_sum"] / horizon_frames if healthy else None,
        "reference": None,
        **extra,
    }
    if stopped:
        summary["members_in_statistics"] = healthy
    return summary


def _add_reference_scores(summary: dict, reference: Reference, totals: dict, last: dict) -> None:
    """The reference and, when it covered any lead time, the headline scores against it."""
    summary["reference"] = {"path": str(reference.path), "start_frame": reference.start_frame,
                            "lead_times_scored": totals["scored"]}
    if totals["scored"]:
        summary.update({"crps_angstrom_mean_over_scored_lead_times": totals["crps_sum"] / totals["scored"],
                        "rmsd_ensemble_mean_angstrom_last_scored": last["rmsd_ensemble_mean"],
                        "mse_members_angstrom2_last_scored": last["mse_members"]})


def _stopped_members(outdir: Path, members: int) -> dict[int, dict]:
    """Members whose completion marker says they were stopped early (ensemble.stop_on_blowup)."""
    stopped = {}
    for m in range(members):
        path = marker_path(outdir, m)
        if path.is_file():
            marker = json.loads(path.read_text())
            if marker.get("stopped"):
                stopped[m] = marker["stopped"]
    return stopped


class _WatchTotals:
    """The watch's series per member and lead time, block by block, and what summary.json says of them."""

    def __init__(self, members: int, watch: Watch, starting_frames: list):
        self.watch = watch
        self.previous = [np.asarray(frame) for frame in starting_frames]
        self.blown_up: dict[int, dict] = {}
        self.max_bond = np.zeros(members)
        self.max_step = np.zeros(members)
        self.clash_frames = np.zeros(members, dtype=np.int64)
        self.frames = np.zeros(members, dtype=np.int64)

    def block(self, variables: dict, readers: list, coords: Optional[np.ndarray], healthy: list[int], first: int,
              stop: int) -> None:
        n_block = stop - first
        bond = np.full((n_block, len(readers)), np.nan)
        step = np.full((n_block, len(readers)), np.nan)
        clashes = np.full((n_block, len(readers)), -1, dtype=np.int32)
        position = {m: k for k, m in enumerate(healthy)}
        for m, reader in enumerate(readers):
            if m in position:
                frames = coords[position[m]]
            elif first < reader.n_frames:
                frames = reader.read(first, min(stop, reader.n_frames)).coordinates
            else:
                continue
            checks = self.watch.check(frames, self.previous[m])
            self.previous[m] = frames[-1]
            n = len(frames)
            bond[:n, m], step[:n, m] = checks.bond_deviation_angstrom, checks.displacement_angstrom
            clashes[:n, m] = np.nan_to_num(self.watch.clashes(frames), nan=-1)  # -1: not a structure
            self.max_bond[m] = max(self.max_bond[m], float(checks.bond_deviation_angstrom.max()))
            self.max_step[m] = max(self.max_step[m], float(checks.displacement_angstrom.max()))
            self.clash_frames[m] += int((clashes[:n, m] > 0).sum())
            self.frames[m] += n
            if m not in self.blown_up:
                found = self.watch.first_blowup(checks, first + 1)
                if found is not None:
                    self.blown_up[m] = found
        variables["max_bond_deviation"][first:stop] = bond
        variables["max_displacement"][first:stop] = step
        variables["clashes"][first:stop] = clashes

    def record(self, stopped: dict[int, dict], timestep_ps: Optional[float]) -> dict:
        blown_up = [{"member": m, **found, "stopped": m in stopped,
                     "lead_time_ps": round(found["first_frame"] * timestep_ps, 9) if timestep_ps else None}
                    for m, found in sorted(self.blown_up.items())]
        if blown_up:
            log.warning("watch: %d of %d members blew up (member at lead time frame: %s); causes in summary.json",
                        len(blown_up), len(self.frames),
                        ", ".join(f"{b['member']} at {b['first_frame']}{' (stopped)' if b['stopped'] else ''}"
                                  for b in blown_up))
        finite = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731 - JSON has no inf
        return {**self.watch.describe(), "blown_up": blown_up, "stopped": sorted(stopped),
                "per_member": [{"member": m, "frames": int(self.frames[m]),
                                "max_bond_deviation_angstrom": finite(self.max_bond[m]),
                                "max_displacement_angstrom": finite(self.max_step[m]),
                                "frames_with_clashes": int(self.clash_frames[m])} for m in range(len(self.frames))]}


def _create_summary_variables(nc, members: int, n_atoms: int, with_reference: bool, with_watch: bool) -> dict:
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
    if with_watch:  # per member; NaN (-1) after a stopped member's last frame
        spec.update({"max_bond_deviation": ("f8", ("lead_time", "member"), "angstrom"),
                     "max_displacement": ("f8", ("lead_time", "member"), "angstrom"),
                     "clashes": ("i4", ("lead_time", "member"), "non-bonded pairs closer than clash_angstrom (-1: not a structure)")})
    variables = {}
    for name, (dtype, dims, units) in spec.items():
        variables[name] = nc.createVariable(name, dtype, dims)
        variables[name].units = units
    return variables


def _score_block(variables: dict, coords: np.ndarray, mean: np.ndarray, ref_reader: AmberReader, ref_start: int,
                 first: int, stop: int, totals: dict, last: dict, healthy: list[int]) -> None:
    """Scores of lead times first+1 … stop against the reference frames they map to (NaN where it ends)."""
    n_block = stop - first
    truth = ref_reader.read(ref_start + first, ref_start + stop).coordinates  # clipped at the file's end
    covered = truth.shape[0]
    nan = np.full(n_block, np.nan)
    scores = {"rmsd": np.full((n_block, variables["rmsd"].shape[1]), np.nan), "rmsd_ensemble_mean": nan.copy(),
              "mse_members": nan.copy(), "mse_ensemble_mean": nan.copy(), "crps": nan.copy()}
    if covered:
        part, ref = coords[:, :covered], truth[:covered]
        scores["rmsd"][:covered, healthy] = rmsd_per_lead_time(part, ref, superpose=False).T
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
