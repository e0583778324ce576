"""``run_ensemble``: the whole ensemble forecast on any number of ranks (see the package docstring)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch

from ..atomic import write_json_atomic
from ..checksum import file_digest
from ..config.schema import AsteroidConfig, EnsembleConfig, ModelConfig
from ..runtime.launch import detect_launch
from ..logs import get_logger
from ..runtime.mpi import world
from ..errors import UserError, user_error
from ..geometry import cell_matrix
from .grid import ProcessGrid, split_group
from .batch import run_members
from .member import MemberJob, output_wrap
from .periodic import check_box, describe_box
from .perturb import InitialCondition, inspect_initial, model_bonds, select_initial, starting_window
from .progress import POLL_SECONDS, Progress
from .rollout import MemberForecaster
from .sizing import batch_members
from .store import COMPLETE_FILE, TRAJECTORY_KEYS, claim_run
from .summary import Reference, open_reference, write_summary
from .watch import Watch, initial_watch

log = get_logger(__name__)


def resolve_model(model_path: str | os.PathLike, outdir: Path, w) -> Path:
    """The weights file of MODEL (:func:`~asteroid_hpc.train.model_files.locate_model`); a training
    checkpoint is exported once, by rank 0, into OUTDIR (the file's digest identifies the run)."""
    from ..train.model_files import locate_model

    found = locate_model(model_path)
    if found.is_checkpoint:
        exported = outdir / "model.safetensors"
        if w.rank == 0:
            from ..train.export import export_checkpoint

            outdir.mkdir(parents=True, exist_ok=True)
            export_checkpoint(found.path, exported)
        w.barrier()
        return exported
    return found.path


def _quiet_barrier(w) -> None:
    """A barrier that sleeps instead of spinning (idle ranks must not steal a shared core)."""
    if w.comm is None:
        return
    request = w.comm.Ibarrier()
    while not request.Test():
        time.sleep(POLL_SECONDS)


def run_ensemble(cfg: AsteroidConfig, model_path: str | os.PathLike, initial_path: str | os.PathLike,
                 outdir: str | os.PathLike, *, reference: Optional[Reference] = None,
                 domains: Optional[int] = None, device: Optional[str] = None, topology: Optional[str] = None,
                 allow_mismatch: bool = False) -> Optional[dict]:
    """Forecast ``cfg.ensemble.members`` members from ``initial_path`` into ``outdir``; returns the summary
    on rank 0 (None elsewhere). Collective over all ranks of the job. ``device`` overrides
    ``ensemble.device``; ``topology`` gives the elements of an initial trajectory without them; an initial
    trajectory of other atoms or frame spacing than the model's training inputs is refused unless
    ``allow_mismatch``."""
    import torch

    from ..config import config_hash
    from ..runtime.device import inference_dtype
    from ..provenance import startup_summary

    w, info = world(), detect_launch()
    ens = cfg.ensemble
    grid = ProcessGrid(w.size, w.rank, domains or ens.domains)
    outdir, threads, device = _set_up_process(ens, Path(outdir), device, info)
    weights = resolve_model(model_path, outdir, w)
    model = _open_model(weights, device, ens.compile)
    m = model.cfg.history_frames
    initial = _initial_condition(initial_path, ens, m, cfg.data.frame_stride, model, model_path, topology,
                                 allow_mismatch)
    if reference is not None:  # the whole system's atom count, for a reference file that does not hold its own
        reference = replace(reference, file_atoms=initial.file_atoms)
    _check_inputs(initial, model.cfg, reference)
    watch = initial_watch(initial, ens, m)
    autocast_dtype = inference_dtype(ens.precision, device)
    identity = _run_identity(weights, initial, ens, autocast_dtype)
    continuing = claim_run(outdir, identity) if w.rank == 0 else None
    continuing = w.bcast(continuing, root=0)
    forecaster = MemberForecaster(model, initial.atomic_numbers, split_group(w, grid), device,
                                  skin_angstrom=ens.neighbor_skin_angstrom, autocast_dtype=autocast_dtype,
                                  cell=None if initial.cell is None else cell_matrix(initial.cell),
                                  constraints=_held_distances(initial, ens, m, w.rank == 0))
    batch = batch_members(ens, model.cfg, initial.n_atoms, len(grid.members_of(grid.group, ens.members)))
    if w.rank == 0:
        log.info(startup_summary(info, device=device, config_hash=config_hash(cfg), run_dir=outdir,
                                 extra=_startup_lines(ens, grid, threads, initial, weights, model.cfg, continuing,
                                                      batch)))
    if w.rank == 0 and grid.groups > ens.members:
        log.warning("%d member groups for %d members: %d groups stay idle", grid.groups, ens.members,
                    grid.groups - ens.members)
    started = time.monotonic()
    with torch.no_grad():
        _forecast_members(w, grid, forecaster, initial, ens, outdir, identity["model_sha256"], watch, batch)
    _quiet_barrier(w)
    passes = w.gather(_pass_counts(forecaster, batch, device), root=0)
    if w.rank != 0:
        return None
    forecast_seconds = time.monotonic() - started
    extra = {"world_size": w.size, "process_grid": [grid.groups, grid.domains],
             "forecast_wall_seconds": round(forecast_seconds, 3), "run": identity,
             "forecast_passes": _merge_pass_counts(passes, ens.neighbor_skin_angstrom)}
    summary = _finish(outdir, ens, initial, m, reference, watch, extra)
    log.info("ensemble complete: %s (forecast %.1f s)", outdir, forecast_seconds)
    return summary


def _set_up_process(ens: EnsembleConfig, outdir: Path, device: Optional[str], info) -> tuple[Path, int, str]:
    """The checked output folder, this rank's torch threads and device; freed memory kept if asked."""
    from ..runtime.allocator import keep_freed_memory
    from ..runtime.device import setup_torch_threads

    if outdir.exists() and not outdir.is_dir():
        raise user_error(outdir, "exists and is not a directory")
    threads = setup_torch_threads(info)
    device = device or _device(ens, info)
    if ens.keep_freed_memory:  # every pass reallocates the same large activations
        keep_freed_memory()
    return outdir, threads, device


def _device(ens: EnsembleConfig, info) -> str:
    from ..runtime.device import inference_device

    device = inference_device(ens.device, info)
    if device is None:
        raise UserError("ensemble.device=cuda but this rank sees no CUDA device (use auto or cpu)")
    return device


def _pass_counts(forecaster: MemberForecaster, batch: int, device: str) -> dict:
    """This rank's share of summary.json's ``forecast_passes`` (group roots count, the others add 0)."""
    root = forecaster.group.rank == 0
    return {"passes": forecaster.passes if root else 0, "rebuilds": forecaster.rebuilds() if root else 0,
            "batch_members": batch, "device": device, "autocast": str(forecaster.autocast_dtype or "fp32")}


def _merge_pass_counts(counts: list[dict], skin_angstrom: float) -> dict:
    """Forwards run over all member groups, the batch sizes, and the neighbour-list builds with a skin."""
    merged = {"forwards": sum(c["passes"] for c in counts),
              "batch_members": sorted({c["batch_members"] for c in counts}),
              "devices": sorted({c["device"] for c in counts}), "precision": sorted({c["autocast"] for c in counts})}
    if skin_angstrom > 0:
        merged["neighbor_skin_angstrom"] = skin_angstrom
        merged["neighbor_list_builds"] = sum(c["rebuilds"] for c in counts)
    return merged


def _run_identity(weights: Path, initial: InitialCondition, ens: EnsembleConfig, autocast_dtype=None) -> dict:
    """What makes a run this run: a re-run into the same directory must agree on all of it (claim_run).
    Batch sizes, devices, torch.compile and the neighbour skin change trajectories within float rounding only; a reduced
    inference precision (autocast on CUDA) changes them more and is part of the identity."""
    identity = {"model_sha256": file_digest(weights), "initial": str(initial.path.resolve()),
                "initial_frames": initial.n_frames, "atoms": initial.n_atoms, "end_frame": initial.end_frame,
                "frame_stride": initial.frame_stride,
                **{key: getattr(ens, key) for key in TRAJECTORY_KEYS}}
    if initial.atom_indices is not None:  # a model of a selection of the file's atoms
        identity["input_atoms"] = initial.file_atoms
        identity["write_full_system"] = ens.write_full_system
    if autocast_dtype is not None:
        identity["precision"] = str(autocast_dtype).replace("torch.", "")
    if initial.cell is not None:  # what member files hold of a periodic system
        identity["cell"] = [round(float(v), 6) for v in initial.cell]
        identity["output_wrap"] = ens.output_wrap
    if ens.stop_on_blowup:  # the thresholds then decide where a member's file ends
        identity["stop_on_blowup"] = {"bond_angstrom": ens.blowup_bond_angstrom,
                                      "displacement_angstrom": ens.blowup_displacement_angstrom}
    return identity


def _finish(outdir: Path, ens: EnsembleConfig, initial: InitialCondition, history_frames: int,
            reference: Optional[Reference], watch: Watch, extra: dict) -> dict:
    """Rank 0 once every member is done: the summary (with ``extra`` in summary.json), then the run's
    completion marker."""
    summary = write_summary(outdir, ens.members, ens.horizon_frames, ens.chunk_frames, initial.atomic_numbers,
                            initial.timestep_ps, reference, extra=extra, watch=watch,
                            starting_frames=[starting_window(initial, ens, member, history_frames)[-1]
                                             for member in range(ens.members)], end_time_ps=initial.end_time_ps,
                            atom_indices=initial.atom_indices, wrap=output_wrap(initial, ens.output_wrap),
                            initial_frame=None if initial.cell is None else
                            initial.read(initial.end_frame, initial.end_frame + 1)[0])
    write_json_atomic(outdir / COMPLETE_FILE, {"members": ens.members, "horizon_frames": ens.horizon_frames},
                      indent=2)
    return summary


def _held_distances(initial: InitialCondition, ens: EnsembleConfig, history_frames: int, speak: bool):
    """The constraints of ``ensemble.constraints=auto`` (the topology's bonds and 1–3 distances the unperturbed
    starting window holds fixed), or None: off, no topology bonds, or none fixed."""
    bonds = model_bonds(initial)
    if ens.constraints == "none" or bonds is None or len(bonds) == 0:
        return None
    from ..model.constraints import held_distances

    end = initial.end_frame
    window = initial.read(end - (history_frames - 1) * initial.frame_stride, end + 1)
    cell = None if initial.cell is None else torch.as_tensor(cell_matrix(initial.cell)[None])
    held = held_distances(bonds, initial.atomic_numbers)(torch.as_tensor(window[None], dtype=torch.float64), cell)
    if held is not None and speak:
        log.info("constraints: %d bond and 1–3 distances fixed in the starting window are held at their lengths "
                 "after every forecast step (ensemble.constraints=auto)", len(held))
    return None if held is None else held.to(dtype=torch.float32)


def _initial_condition(path, ens: EnsembleConfig, history_frames: int, frame_stride: int, model, model_path,
                       topology: Optional[str], allow_mismatch: bool) -> InitialCondition:
    """The initial condition, its elements from the file, ``topology`` or the model's recorded topology, checked
    against the model's training inputs (atoms, frame spacing); of the model's atoms when it was trained on a
    selection of the file's."""
    from ..data.signature import check_against_model, input_topology_numbers, model_atoms, selection_note

    signature = getattr(model, "data_signature", None)
    trained_stride = (signature or {}).get("frame_stride")
    if trained_stride and trained_stride != frame_stride:  # the windows the model was trained on, not the config's
        log.info("%s: starting windows every %d input frames, the model's training stride (data.frame_stride=%d "
                 "not used)", path, trained_stride, frame_stride)
        frame_stride = int(trained_stride)
    initial = inspect_initial(path, ens, history_frames, frame_stride,
                              input_topology_numbers(Path(path), topology, signature))
    input_fs = None if initial.timestep_ps is None else initial.timestep_ps * 1000.0 / frame_stride
    check_against_model(signature, initial.atomic_numbers, input_fs, path, model_path, allow_mismatch)
    check_box(initial.cell, path, model)
    if initial.cell is not None:
        initial = replace(initial, bonds=_topology_bonds(topology, initial.file_atoms))
        log.info("%s: %s (frame %d), kept for the whole forecast; member files: output_wrap=%s%s", path,
                 describe_box(initial.cell), initial.end_frame, ens.output_wrap,
                 "" if ens.output_wrap == "none" or initial.bonds is not None else " (no topology: each atom alone)")
    elif topology is not None:  # an open input: no molecule of its topology may be cut by a box face
        from ..data.readers import read_frames
        from ..data.wrapped import check_bonds_whole

        end = read_frames(path, initial.end_frame, initial.end_frame + 1, n_atoms=initial.file_atoms)
        check_bonds_whole(path, end.coordinates[0], _topology_bonds(topology, initial.file_atoms), initial.end_frame)
    selected = model_atoms(signature, initial.n_atoms)
    if selected is not None:
        log.info("%s%s", selection_note(signature, path),
                 "; member files hold every atom (ensemble.write_full_system)" if ens.write_full_system else "")
    elif ens.write_full_system:
        log.warning("ensemble.write_full_system: the model takes every atom of %s; member files hold them all", path)
    return select_initial(initial, selected)


def _topology_bonds(topology: Optional[str], n_atoms: int):
    """The bonds [B, 2] of ``--topology`` (its molecules are wrapped whole), or None without one (or none in it)."""
    if topology is None:
        return None
    from ..data.topology import read_topology

    bonds = read_topology(topology).bonds
    if len(bonds) and int(bonds.max()) >= n_atoms:
        raise user_error(topology, f"has bonds between atoms beyond the {n_atoms} atoms of the initial trajectory")
    return bonds if len(bonds) else None


def _check_inputs(initial: InitialCondition, model_cfg: ModelConfig, reference: Optional[Reference]) -> None:
    """Fail now, not after the forecast: atomic numbers the model does not know, a reference of other atoms."""
    if int(initial.atomic_numbers.max()) >= model_cfg.num_elements or int(initial.atomic_numbers.min()) < 0:
        raise user_error(initial.path, f"atomic numbers outside the model's [0, {model_cfg.num_elements})")
    if reference is not None:
        open_reference(reference, initial.n_atoms, initial.atom_indices).close()


def _open_model(weights: Path, device: str, compiled: bool):
    """The model of ``weights`` on ``device``; ``compiled``: its attention blocks through torch.compile."""
    from ..train.model_files import open_model

    model = open_model(weights, device=device)
    if compiled:
        from ..model.compiled import compile_blocks

        compile_blocks(model)
    return model


def _startup_lines(ens: EnsembleConfig, grid: ProcessGrid, threads: int, initial: InitialCondition, weights: Path,
                   model_cfg: ModelConfig, continuing: bool, batch: int) -> dict[str, str]:
    """The ensemble's lines of the start-up summary."""
    return {
        "ensemble": f"{ens.members} members x {ens.horizon_frames} frames, {ens.perturbation} perturbation "
                    f"(noise {ens.noise_angstrom} A), seed {ens.seed}, {'continuing' if continuing else 'new run'}",
        "process grid": f"{grid.groups} member groups x {grid.domains} domains, {threads} torch threads per rank",
        "batching": f"{batch} members per forward (rank 0), precision {ens.precision}, neighbour lists "
                    + (f"kept with a {ens.neighbor_skin_angstrom} A skin" if ens.neighbor_skin_angstrom
                       else "rebuilt every pass") + (", blocks compiled (torch.compile)" if ens.compile else ""),
        "system": f"{initial.n_atoms} atoms{_of_file(initial)}"
                  f"{'' if initial.cell is None else ' in a ' + describe_box(initial.cell)}, window of "
                  f"{model_cfg.history_frames} frames "
                  f"{initial.frame_stride} "
                  f"apart ending at frame {initial.end_frame} of {initial.path}",
        "model": f"{weights} ({model_cfg.delay_length - 1} frames per pass, cutoff {model_cfg.cutoff_angstrom} A)"}


def _of_file(initial: InitialCondition) -> str:
    return "" if initial.atom_indices is None else f" (selected of {initial.file_atoms})"


def _forecast_members(w, grid: ProcessGrid, forecaster: MemberForecaster, initial: InitialCondition,
                      ens: EnsembleConfig, outdir: Path, model_sha256: str, watch, batch: int) -> None:
    """Run (or skip, or finish) this rank's members, then wait until every member of the job is done."""
    progress = Progress(w, ens.members, ens.horizon_frames)
    attributes = {"ensemble_seed": ens.seed, "perturbation": ens.perturbation, "noise_angstrom": ens.noise_angstrom,
                  "initial_condition": str(initial.path), "initial_end_frame": initial.end_frame,
                  "model_sha256": model_sha256}
    jobs = [MemberJob(outdir, member, ens.horizon_frames, ens.chunk_frames, {**attributes, "member": member},
                      ens.output_wrap) for member in grid.members_of(grid.group, ens.members)]
    run_members(jobs, forecaster, initial, ens, progress, watch, batch)
    progress.wait_all()

