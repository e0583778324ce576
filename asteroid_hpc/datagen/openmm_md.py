"""Resumable OpenMM molecular dynamics of a periodic system into a DCD trajectory and a PDB topology.

Protocol: energy minimisation, Maxwell-Boltzmann velocities, a Langevin equilibration (NPT at 1 bar for the
water box, so that it reaches TIP3P's density; NVT for villin), then Langevin NVT production in the last
equilibration box (LangevinMiddleIntegrator), one frame every ``frame_interval_fs``. CPU platform with
deterministic forces: a seed and a thread count give one trajectory.

Work folder ``<out>.partial/``: the settings (``spec.json``), the topology, the DCD frames so far and
``state.npz``: an OpenMM checkpoint with the number of frames it follows and the timings, saved at the end of
the equilibration and after every chunk of ``chunk_frames`` frames (once those frames are on disk); a run
killed during minimisation or equilibration starts again from the beginning. Each production chunk runs in a fresh
OpenMM Context loaded from the last checkpoint, whether the run was interrupted or not: OpenMM's CPU platform
is not bit-reproducible across a checkpoint loaded into a live Context (measured: 1e-5 Å apart after 100
steps), but a fresh Context from the same checkpoint is, so a killed run re-run with the same settings gives
the frames of an uninterrupted one. The finished files appear under their names in this order: topology
(``<stem>.pdb``), report (``<out>.json`` and ``<stem>.md``), and last the trajectory ``<out>``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_output, write_text_atomic
from ..errors import UserError, user_error
from ..logs import get_logger
from ..progress import Progress
from .openmm_files import DCDFrames, truncate_dcd, write_pdb_with_bonds
from .openmm_systems import DEFAULT_WATER_BOX_NM, SYSTEMS, build_system, degrees_of_freedom, with_barostat
from .workdir import check_spec, exclusive

log = get_logger(__name__)

PROGRESS_LOG_INTERVAL_S = 30.0
GENERATOR_PACKAGES = ("asteroid-hpc", "openmm", "numpy", "MDAnalysis")  # recorded in each report
BOLTZMANN_KJ_PER_MOL_K = 0.00831446261815324


@dataclass(frozen=True)
class OpenMMRunSpec:
    """Everything that determines the trajectory (an unfinished run resumes only under the same spec).

    ``threads`` and ``chunk_frames`` belong here: OpenMM's CPU platform gives another (equally valid)
    trajectory with another thread count, and each chunk starts from a fresh Context."""

    system: str
    production_ps: float
    equilibration_ps: float
    frame_interval_fs: float = 10.0
    seed: int = 0
    box_nm: float | None = None  # water: the cube's edge before equilibration (default DEFAULT_WATER_BOX_NM)
    equilibration_ensemble: str | None = None  # NPT (default for water) or NVT (default for villin)
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0
    timestep_fs: float = 2.0
    cutoff_nm: float = 0.9
    threads: int = 1
    chunk_frames: int = 500
    minimize_tolerance_kJ_per_mol_nm: float = 10.0
    minimize_max_iterations: int = 1000  # 0: until converged

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise UserError(f"unknown system {self.system!r}: choose one of {', '.join(SYSTEMS)}")
        if self.system == "water" and self.box_nm is None:
            object.__setattr__(self, "box_nm", DEFAULT_WATER_BOX_NM)
        if self.system != "water" and self.box_nm is not None:
            raise UserError(f"{self.system}: the box comes from its structure; box_nm is for the water box only")
        if self.equilibration_ensemble is None:
            object.__setattr__(self, "equilibration_ensemble", "NPT" if self.system == "water" else "NVT")
        if self.equilibration_ensemble not in ("NPT", "NVT"):
            raise UserError(f"equilibration_ensemble={self.equilibration_ensemble!r}: NPT or NVT")
        for name in ("production_ps", "frame_interval_fs", "temperature_K", "friction_per_ps", "timestep_fs",
                     "cutoff_nm", "threads", "chunk_frames"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.equilibration_ps < 0 or self.seed < 0:
            raise UserError(f"equilibration_ps={self.equilibration_ps}, seed={self.seed}: must not be negative")
        if self.box_nm is not None and self.box_nm < 2.0 * self.cutoff_nm:
            raise UserError(f"box_nm={self.box_nm}: shorter than twice the {self.cutoff_nm} nm cutoff")
        _whole(self.frame_interval_fs, self.timestep_fs, "frame_interval_fs", "timestep_fs")
        _whole(self.production_ps * 1000.0, self.frame_interval_fs, "production_ps", "frame_interval_fs")
        _whole(self.equilibration_ps * 1000.0, self.timestep_fs, "equilibration_ps", "timestep_fs")

    @property
    def steps_per_frame(self) -> int:
        return _whole(self.frame_interval_fs, self.timestep_fs, "frame_interval_fs", "timestep_fs")

    @property
    def n_frames(self) -> int:
        return _whole(self.production_ps * 1000.0, self.frame_interval_fs, "production_ps", "frame_interval_fs")

    @property
    def equilibration_steps(self) -> int:
        return _whole(self.equilibration_ps * 1000.0, self.timestep_fs, "equilibration_ps", "timestep_fs")


def _whole(total: float, part: float, total_name: str, part_name: str) -> int:
    """total / part when it is a whole number, else a UserError."""
    count = round(total / part)
    if not math.isclose(count * part, total, rel_tol=0.0, abs_tol=1e-6 * max(part, 1.0)):
        raise UserError(f"{total_name} must be a whole multiple of {part_name} ({total:g} / {part:g})")
    return count


@dataclass
class OpenMMReport:
    spec: dict
    command: str
    output: str
    topology: str
    n_atoms: int
    n_waters: int
    n_frames: int
    box_angstrom: list  # production box edges (orthorhombic)
    waters_per_nm3: float  # water box: number density of the production box
    force_field: list
    constraints: str
    engine: dict  # OpenMM version, platform, its properties
    minimization: dict
    seconds: dict  # minimization, equilibration, production (wall time, across resumed runs)
    production_steps: int
    ms_per_step: float
    ns_per_day: float
    temperature_K: dict  # at the end of each chunk: mean, std, samples
    dcd_bytes: int
    versions: dict = field(default_factory=dict)


def work_dir(out_path: Path) -> Path:
    """Where an unfinished run keeps its files."""
    return out_path.with_name(out_path.name + ".partial")


def _platform(spec: OpenMMRunSpec):
    import openmm

    properties = {"Threads": str(spec.threads), "DeterministicForces": "true"}
    return openmm.Platform.getPlatformByName("CPU"), properties


def _simulation(spec: OpenMMRunSpec, topology, system):
    """An OpenMM Simulation of ``system`` with the seeded Langevin integrator on the CPU platform."""
    import openmm
    from openmm import app, unit

    integrator = openmm.LangevinMiddleIntegrator(spec.temperature_K * unit.kelvin,
                                                 spec.friction_per_ps / unit.picosecond,
                                                 spec.timestep_fs * unit.femtosecond)
    integrator.setRandomNumberSeed(spec.seed + 1)  # OpenMM treats seed 0 as "pick one at random"
    platform, properties = _platform(spec)
    return app.Simulation(topology, system, integrator, platform, properties)


def _save_state(work: Path, checkpoint: bytes, frames: int, info: dict) -> None:
    with atomic_output(work / "state.npz", suffix=".npz") as tmp:
        np.savez(tmp, checkpoint=np.frombuffer(checkpoint, dtype=np.uint8), frames=frames, info=json.dumps(info))


def _load_state(work: Path) -> tuple[bytes, int, dict]:
    with np.load(work / "state.npz") as state:
        return state["checkpoint"].tobytes(), int(state["frames"]), json.loads(str(state["info"]))


def _equilibrate(spec: OpenMMRunSpec, md, work: Path) -> None:
    """Minimise, equilibrate, write the topology, and save the production's first checkpoint (frame 0)."""
    from openmm import LocalEnergyMinimizer, unit

    npt = spec.equilibration_ensemble == "NPT"
    system = with_barostat(md.system, temperature_K=spec.temperature_K, seed=spec.seed + 1) if npt else md.system
    sim = _simulation(spec, md.topology, system)
    sim.context.setPositions(md.positions)
    start = time.perf_counter()
    before = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    LocalEnergyMinimizer.minimize(sim.context, spec.minimize_tolerance_kJ_per_mol_nm, spec.minimize_max_iterations)
    after = sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    minimized = time.perf_counter()
    sim.context.setVelocitiesToTemperature(spec.temperature_K * unit.kelvin, spec.seed + 1)
    sim.step(spec.equilibration_steps)
    end = time.perf_counter()
    state = sim.context.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=True)
    box = state.getPeriodicBoxVectors()
    log.info("%s: minimised %.0f -> %.0f kJ/mol in %.1f s; %d %s equilibration steps in %.1f s", md.name, before,
             after, minimized - start, spec.equilibration_steps, spec.equilibration_ensemble, end - minimized)

    production = _simulation(spec, md.topology, md.system)  # constant volume: the last equilibration box
    production.context.setPeriodicBoxVectors(*box)
    production.context.setPositions(state.getPositions())
    production.context.setVelocities(state.getVelocities())
    production.context.setStepCount(0)
    md.topology.setPeriodicBoxVectors(box)  # the CRYST1 record of the topology
    write_pdb_with_bonds(work / "topology.pdb", md.topology, state.getPositions())
    info = {"box_nm": [box[i][i].value_in_unit(unit.nanometer) for i in range(3)],
            "minimization": {"potential_before_kJ_per_mol": before, "potential_after_kJ_per_mol": after},
            "seconds": {"minimization": minimized - start, "equilibration": end - minimized, "production": 0.0},
            "production_steps": 0, "temperature_K": []}
    _save_state(work, production.context.createCheckpoint(), 0, info)


def _production_chunk(spec: OpenMMRunSpec, md, work: Path, dof: int) -> int:
    """Run the next chunk from the last checkpoint in a fresh Context; return the frames now done."""
    from openmm import unit

    checkpoint, frames_done, info = _load_state(work)
    n = min(spec.chunk_frames, spec.n_frames - frames_done)
    sim = _simulation(spec, md.topology, md.system)
    sim.context.loadCheckpoint(checkpoint)
    reporter = DCDFrames(work / "trajectory.dcd", md.topology, spec.timestep_fs * unit.femtosecond,
                         spec.steps_per_frame, append=frames_done > 0)
    sim.reporters.append(reporter)
    start = time.perf_counter()
    try:
        sim.step(n * spec.steps_per_frame)
    finally:
        reporter.close()
    info["seconds"]["production"] += time.perf_counter() - start
    info["production_steps"] += n * spec.steps_per_frame
    kinetic = sim.context.getState(getEnergy=True).getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    info["temperature_K"].append(2.0 * kinetic / (dof * BOLTZMANN_KJ_PER_MOL_K))
    _save_state(work, sim.context.createCheckpoint(), frames_done + n, info)
    return frames_done + n


def generate_openmm_md(spec: OpenMMRunSpec, out_path: str | os.PathLike, *, command: str | None = None,
                       max_chunks: int | None = None, progress: bool | None = None) -> OpenMMReport | None:
    """Generate (or resume) the trajectory of ``spec`` into ``out_path`` (``.dcd``) and its ``.pdb`` topology.

    ``max_chunks`` stops after that many new production chunks and returns None (an interruption, for tests).
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".dcd":
        raise user_error(out_path, "the trajectory is written as DCD: name it <name>.dcd")
    work = work_dir(out_path)
    with exclusive(work):
        check_spec(work, asdict(spec))
        md = build_system(spec.system, box_nm=spec.box_nm, cutoff_nm=spec.cutoff_nm)
        if not (work / "state.npz").exists():
            (work / "trajectory.dcd").unlink(missing_ok=True)
            _equilibrate(spec, md, work)
        _, frames, info = _load_state(work)
        md.topology.setUnitCellDimensions(info["box_nm"])  # the production box (after an NPT equilibration)
        if frames > 0:
            truncate_dcd(work / "trajectory.dcd", frames)
            log.info("%s: resuming after frame %d/%d", out_path.name, frames, spec.n_frames)
        bar = Progress(out_path.name, spec.n_frames, unit="frame", bar=progress, every_s=PROGRESS_LOG_INTERVAL_S,
                       initial=frames)
        dof = degrees_of_freedom(md.system)
        try:
            for chunk in range(math.ceil((spec.n_frames - frames) / spec.chunk_frames)):
                if max_chunks is not None and chunk >= max_chunks:
                    return None
                frames = _production_chunk(spec, md, work, dof)
                bar.update(frames, f"{out_path.name}: {frames}/{spec.n_frames} frames "
                                   f"({100.0 * frames / spec.n_frames:.0f}%)")
        finally:
            bar.close()
        return _finish(spec, md, work, out_path, command)


def _finish(spec: OpenMMRunSpec, md, work: Path, out_path: Path, command: str | None) -> OpenMMReport:
    """Put the topology, the report and last the trajectory under their names; remove the work folder."""
    import openmm
    from openmm import unit

    from ..provenance import package_versions
    from .openmm_report import write_report_md

    _, frames, info = _load_state(work)
    box = [float(v) for v in md.topology.getUnitCellDimensions().value_in_unit(unit.angstrom)]
    platform, properties = _platform(spec)
    seconds, steps = info["seconds"], info["production_steps"]
    ms_per_step = 1000.0 * seconds["production"] / max(steps, 1)
    temperatures = np.asarray(info["temperature_K"])
    report = OpenMMReport(
        spec=asdict(spec), command=command or " ".join(sys.argv), output=str(out_path),
        topology=str(out_path.with_suffix(".pdb")), n_atoms=md.n_atoms, n_waters=md.n_waters, n_frames=frames,
        box_angstrom=box, waters_per_nm3=md.n_waters / (np.prod(box) / 1000.0), force_field=list(md.force_field),
        constraints=md.constraints,
        engine={"openmm": openmm.version.full_version, "platform": platform.getName(), "properties": properties},
        minimization=info["minimization"], seconds=seconds, production_steps=steps, ms_per_step=ms_per_step,
        ns_per_day=spec.timestep_fs * 1e-6 * 86400e3 / ms_per_step if ms_per_step > 0 else float("nan"),
        temperature_K={"mean": float(temperatures.mean()), "std": float(temperatures.std()),
                       "samples": len(temperatures)},
        dcd_bytes=(work / "trajectory.dcd").stat().st_size, versions=package_versions(GENERATOR_PACKAGES))
    if (work / "topology.pdb").exists():  # else a killed _finish already moved it
        os.replace(work / "topology.pdb", report.topology)
    write_text_atomic(out_path.with_name(out_path.name + ".json"), json.dumps(asdict(report), indent=1) + "\n")
    write_report_md(out_path.with_suffix(".md"), report)
    os.replace(work / "trajectory.dcd", out_path)
    shutil.rmtree(work)
    log.info("%s: %d frames of %d atoms, %.2f ms/step (%.2f ns/day)", out_path, frames, md.n_atoms, ms_per_step,
             report.ns_per_day)
    return report
