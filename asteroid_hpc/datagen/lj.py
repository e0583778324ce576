"""Lennard-Jones liquid argon boxes from OpenMM (CPU platform), for scaling benchmarks.

Argon: σ = 3.405 Å, ε/k_B = 119.8 K, m = 39.948 u; liquid at 0.021 atoms/Å^3 (ρσ³ ≈ 0.83) and 94.4 K.
The box starts as a jittered simple-cubic lattice that melts during a Langevin equilibration; frames
are then taken every `stride` steps of the same Langevin dynamics, wrapped into the periodic box.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

ARGON_ATOMIC_NUMBER = 18
ARGON_MASS_DALTON = 39.948
ARGON_SIGMA_ANGSTROM = 3.405
ARGON_EPSILON_KJ_PER_MOL = 0.99605  # 119.8 K · k_B
LIQUID_ARGON_DENSITY_PER_A3 = 0.021
LIQUID_ARGON_TEMPERATURE_K = 94.4
CUTOFF_SIGMA = 2.5


@dataclass
class LJBox:
    positions_angstrom: np.ndarray  # [F, N, 3] float32, wrapped into [0, L)
    atomic_numbers: np.ndarray  # [N] int32, all 18
    box_length_angstrom: float
    time_ps: np.ndarray  # [F]
    ms_per_step: float  # production steps, wall time
    seconds_equilibration: float

    @property
    def n_atoms(self) -> int:
        return self.positions_angstrom.shape[1]

    @property
    def density_per_A3(self) -> float:
        return self.n_atoms / self.box_length_angstrom**3


def box_length_angstrom(n_atoms: int, density_per_A3: float) -> float:
    return (n_atoms / density_per_A3) ** (1.0 / 3.0)


def lattice_positions(n_atoms: int, box_length: float, rng: np.random.Generator, jitter_angstrom: float = 0.05):
    """The first n_atoms sites of a simple-cubic lattice filling the box, slightly jittered (Å)."""
    per_side = math.ceil(n_atoms ** (1.0 / 3.0) - 1e-9)
    spacing = box_length / per_side
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)[:n_atoms]
    return (grid + 0.5) * spacing + rng.normal(scale=jitter_angstrom, size=(n_atoms, 3))


def lj_argon_box(n_atoms: int, n_frames: int, *, seed: int = 0, density_per_A3: float = LIQUID_ARGON_DENSITY_PER_A3,
                 temperature_K: float = LIQUID_ARGON_TEMPERATURE_K, timestep_fs: float = 5.0,
                 equilibration_steps: int = 500, stride: int = 20, friction_per_ps: float = 1.0,
                 threads: int | None = None) -> LJBox:
    """Simulate an argon box of n_atoms and return n_frames frames `stride` steps apart."""
    import openmm
    from openmm import unit

    box = box_length_angstrom(n_atoms, density_per_A3)
    cutoff = CUTOFF_SIGMA * ARGON_SIGMA_ANGSTROM
    if box < 2.0 * cutoff:
        raise UserError(f"n_atoms={n_atoms}: box of {box:.1f} Å is shorter than twice the {cutoff:.2f} Å cutoff; "
                        f"use at least {math.ceil(density_per_A3 * (2 * cutoff) ** 3)} atoms")
    if n_frames < 1 or stride < 1:
        raise UserError(f"n_frames={n_frames}, stride={stride}: both must be positive")

    system = openmm.System()
    nm = 0.1  # Å → nm
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(box * nm, 0, 0), openmm.Vec3(0, box * nm, 0),
                                        openmm.Vec3(0, 0, box * nm))
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(cutoff * nm)
    force.setUseDispersionCorrection(True)
    for _ in range(n_atoms):
        system.addParticle(ARGON_MASS_DALTON)
        force.addParticle(0.0, ARGON_SIGMA_ANGSTROM * nm, ARGON_EPSILON_KJ_PER_MOL)
    system.addForce(force)

    integrator = openmm.LangevinMiddleIntegrator(temperature_K * unit.kelvin, friction_per_ps / unit.picosecond,
                                                 timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)  # OpenMM treats seed 0 as "pick one at random"
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"Threads": str(threads or os.cpu_count() or 1), "DeterministicForces": "true"}
    context = openmm.Context(system, integrator, platform, properties)
    rng = np.random.default_rng(seed)
    context.setPositions(lattice_positions(n_atoms, box, rng) * nm)
    context.setVelocitiesToTemperature(temperature_K * unit.kelvin, seed + 1)

    start = time.perf_counter()
    integrator.step(equilibration_steps)
    seconds_equilibration = time.perf_counter() - start

    frames = np.empty((n_frames, n_atoms, 3), dtype=np.float32)
    start = time.perf_counter()
    for i in range(n_frames):
        if i > 0:
            integrator.step(stride)
        state = context.getState(getPositions=True, enforcePeriodicBox=True)
        frames[i] = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    production_steps = max((n_frames - 1) * stride, 1)
    ms_per_step = 1000.0 * (time.perf_counter() - start) / production_steps
    time_ps = np.arange(n_frames) * stride * timestep_fs / 1000.0
    return LJBox(frames, np.full(n_atoms, ARGON_ATOMIC_NUMBER, dtype=np.int32), box, time_ps, ms_per_step,
                 seconds_equilibration)


def write_lj_box(path: str | os.PathLike, lj_box: LJBox, *, seed: int, temperature_K: float) -> Path:
    """AMBER NetCDF with the periodic cell (cell_lengths, cell_angles 90°) and atomic numbers 18."""
    from ..data.amber import AmberWriter

    with AmberWriter(path, lj_box.n_atoms, lj_box.atomic_numbers, cell=True,
                     title=f"Lennard-Jones argon, {lj_box.n_atoms} atoms, {temperature_K:g} K",
                     attributes={"source": "OpenMM Lennard-Jones argon (CPU platform)", "seed": seed,
                                 "temperature_K": temperature_K, "density_per_A3": lj_box.density_per_A3,
                                 "ms_per_step": lj_box.ms_per_step}) as writer:
        writer.append(lj_box.positions_angstrom, lj_box.time_ps,
                      cell_lengths=np.full(3, lj_box.box_length_angstrom), cell_angles=np.full(3, 90.0))
    return Path(path)
