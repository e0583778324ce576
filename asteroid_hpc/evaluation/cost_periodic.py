"""Simulated nanoseconds per day of the forecast against OpenMM on the same periodic system, in one run.

OpenMM runs the trajectory's own system (its PDB topology and box, with the generator's force field, PME,
constraints and 2 fs Langevin steps: :mod:`asteroid_hpc.datagen.openmm_systems`) on its CPU platform with one
thread; the model forecasts
from the last frames of a real trajectory of that system (unwrapped, with its box), one thread. Both are timed
as CPU seconds (``time.process_time``) in this process, so they share the machine's state.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..logs import get_logger

log = get_logger(__name__)

SECONDS_PER_DAY = 86400.0
OPENMM_STEP_FS = 2.0


def ns_per_day(cpu_seconds_per_step: float, step_fs: float) -> float:
    return SECONDS_PER_DAY / cpu_seconds_per_step * step_fs * 1e-6


@dataclass
class PeriodicCostReport:
    system: str
    n_atoms: int
    openmm_steps_timed: int
    openmm_cpu_seconds_per_step: float
    forecast_stride_fs: float
    forecast_frames_timed: int
    batch_size: int
    model_cpu_seconds_per_frame: float  # per frame of one trajectory
    model_parameters: int

    @property
    def openmm_ns_per_day(self) -> float:
        return ns_per_day(self.openmm_cpu_seconds_per_step, OPENMM_STEP_FS)

    @property
    def forecast_ns_per_day(self) -> float:
        return ns_per_day(self.model_cpu_seconds_per_frame, self.forecast_stride_fs)

    def as_dict(self) -> dict:
        return {**asdict(self), "openmm_ns_per_day": self.openmm_ns_per_day,
                "forecast_ns_per_day": self.forecast_ns_per_day,
                "speedup": self.forecast_ns_per_day / self.openmm_ns_per_day}

    def markdown(self) -> str:
        return "\n".join([
            f"{self.system} ({self.n_atoms} atoms, periodic); one CPU thread each; model batch {self.batch_size}", "",
            "| engine | CPU s per step/frame | simulated ns per day |", "|---|---:|---:|",
            f"| OpenMM (CPU platform, {OPENMM_STEP_FS:g} fs steps) | {self.openmm_cpu_seconds_per_step:.3e} | "
            f"{self.openmm_ns_per_day:.2f} |",
            f"| ASTEROID forecast ({self.forecast_stride_fs:g} fs frames) | {self.model_cpu_seconds_per_frame:.3e} | "
            f"{self.forecast_ns_per_day:.2f} |", "",
            f"forecast / OpenMM: {self.forecast_ns_per_day / self.openmm_ns_per_day:.2f}x"]) + "\n"


def _openmm_system(system_name: str, topology: str | None, box_nm: float | None):
    """(topology, positions, system) of ``system_name``: built from the trajectory's own PDB ``topology`` (the
    same atoms and box) with the generator's force field, else as the generator builds it."""
    from openmm import app, unit

    from ..datagen.openmm_systems import VILLIN_FORCE_FIELD, WATER_FORCE_FIELD, build_system

    if topology is None or not str(topology).lower().endswith(".pdb"):
        built = build_system(system_name, box_nm=box_nm if system_name == "water" else None, cutoff_nm=0.9)
        return built.topology, built.positions, built.system
    pdb = app.PDBFile(str(topology))
    files, constraints = (WATER_FORCE_FIELD, None) if system_name == "water" else (VILLIN_FORCE_FIELD, app.HBonds)
    system = app.ForceField(*files).createSystem(pdb.topology, nonbondedMethod=app.PME,
                                                 nonbondedCutoff=0.9 * unit.nanometer, constraints=constraints,
                                                 rigidWater=True)
    return pdb.topology, pdb.positions, system


def time_openmm(system_name: str, *, steps: int, topology: str | None = None, box_nm: float | None = None,
                warmup_steps: int = 20, seed: int = 1) -> tuple[int, float]:
    """(atoms, CPU seconds per 2 fs step) of OpenMM on one CPU thread for ``system_name``."""
    import openmm
    from openmm import app, unit

    top, positions, system = _openmm_system(system_name, topology, box_nm)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond,
                                                 OPENMM_STEP_FS * unit.femtoseconds)
    integrator.setRandomNumberSeed(seed)
    platform = openmm.Platform.getPlatformByName("CPU")
    simulation = app.Simulation(top, system, integrator, platform, {"Threads": "1"})
    simulation.context.setPositions(positions)
    simulation.minimizeEnergy(maxIterations=200)
    simulation.context.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    simulation.step(warmup_steps)
    started = time.process_time()
    simulation.step(steps)
    simulation.context.getState(getPositions=True)  # wait for the last step
    seconds = (time.process_time() - started) / steps
    log.info("OpenMM %s: %d steps, %.2f ms/step (CPU)", system_name, steps, 1e3 * seconds)
    return top.getNumAtoms(), seconds


def time_forecast(model_path: str | os.PathLike, trajectory: str | os.PathLike, topology: str | None, *,
                  frames: int, batch_size: int = 1, repeats: int = 2) -> tuple[object, float, float, np.ndarray]:
    """(model, its frame spacing in fs, CPU seconds per forecast frame of one trajectory, the box [6]) from the
    trajectory's last history window, in its box, holding the distances it holds fixed (``--topology``'s
    bonds), one thread (best of ``repeats``)."""
    import torch

    from ..geometry import cell_matrix
    from ..model.constraints import held_distances
    from ..train.model_files import open_model
    from .cost import time_forecast_frames
    from .trajectory import load_trajectory

    model = open_model(model_path)
    traj = load_trajectory(trajectory, topology=topology, signature=getattr(model, "data_signature", None),
                           model=model_path)
    stride = max(1, int(round((model.data_signature or {}).get("timestep_fs", traj.frame_fs) / traj.frame_fs)))
    m = model.cfg.history_frames
    window = traj.positions[len(traj.positions) - 1 - stride * np.arange(m - 1, -1, -1)]
    cell = None if traj.cell is None else torch.as_tensor(cell_matrix(traj.cell[-1:]), dtype=torch.float32)
    held = held_distances(traj.bonds, traj.atomic_numbers)(  # projected as evaluate and ensemble-forecast do
        torch.as_tensor(window[None], dtype=torch.float64), None if cell is None else cell.double())
    log.info("ASTEROID: %s", "no constraints" if held is None else f"{len(held)} distances held (constraints)")
    held = None if held is None else held.to(dtype=torch.float32)  # lengths [1, C]: every copy of the batch
    per_frame = time_forecast_frames(model, window, traj.atomic_numbers, frames=frames, batch_size=batch_size,
                                     repeats=repeats, cell=None if cell is None else cell[0],
                                     constraints=held).per_member_frame_s
    return model, stride * traj.frame_fs, per_frame, traj.cell[-1]


def measure_periodic_cost(model_path, system_name: str, trajectory, topology: str | None = None, *,
                          openmm_steps: int = 100, forecast_frames: int = 20,
                          batch_size: int = 1) -> PeriodicCostReport:
    """OpenMM's and the model's cost on ``system_name`` in this run (module docstring); the water box takes the
    trajectory's box edge."""
    from ..datagen.threads import set_single_thread_env
    from ..errors import UserError

    set_single_thread_env()
    model, stride_fs, model_seconds, box = time_forecast(model_path, trajectory, topology, frames=forecast_frames,
                                                         batch_size=batch_size)
    if box is None:
        raise UserError(f"{trajectory}: not a periodic trajectory (no unit cell)")
    n_atoms, openmm_seconds = time_openmm(system_name, steps=openmm_steps, topology=topology,
                                          box_nm=float(box[0]) / 10.0)
    return PeriodicCostReport(system_name, n_atoms, openmm_steps, openmm_seconds, stride_fs, forecast_frames,
                              batch_size, model_seconds, sum(p.numel() for p in model.parameters()))
