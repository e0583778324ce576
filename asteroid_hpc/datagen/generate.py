"""Resumable generation of one xTB-MD17 trajectory into an AMBER NetCDF file.

Frames are produced in chunks; each finished chunk is saved atomically in ``<out>.chunks/`` with the
exact end state (positions and momenta, float64). A re-run with the same settings continues after the
last complete chunk and gives the same trajectory as an uninterrupted run. When all chunks exist, the
energy conservation of the NVE run is checked, the NetCDF file is written under a temporary name and
renamed, a JSON report is written beside it, and the chunk folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_output, write_text_atomic
from ..logs import get_logger
from ..progress import Progress
from ..provenance import package_versions
from .energy import check_conservation, measure_conservation
from .molecules import canonical_name, get_molecule
from .workdir import check_spec, exclusive
from .xtb import DEFAULT_FRICTION_PER_FS, XTB_METHOD, run_nve_chunk, set_state, start_state

log = get_logger(__name__)

PROGRESS_LOG_INTERVAL_S = 30.0
GENERATOR_PACKAGES = ("asteroid-hpc", "tblite", "ase", "numpy", "scipy")  # recorded in each report


@dataclass(frozen=True)
class XtbRunSpec:
    """Everything that determines the trajectory (an unfinished run resumes only under the same spec)."""

    molecule: str
    n_frames: int
    seed: int = 0
    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    thermalize_steps: int = 2000
    stride: int = 1
    chunk_frames: int = 1000
    friction_per_fs: float = DEFAULT_FRICTION_PER_FS
    relax_steps: int = 50
    method: str = XTB_METHOD

    def __post_init__(self) -> None:
        object.__setattr__(self, "molecule", canonical_name(self.molecule))
        get_molecule(self.molecule)
        for name in ("n_frames", "stride", "chunk_frames", "timestep_fs", "temperature_K"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_frames < 3:
            raise ValueError("n_frames must be at least 3 (energy conservation needs a fit)")

    @property
    def n_chunks(self) -> int:
        return -(-self.n_frames // self.chunk_frames)

    def chunk_range(self, index: int) -> tuple[int, int]:
        first = index * self.chunk_frames
        return first, min(first + self.chunk_frames, self.n_frames)


@dataclass
class GenerationReport:
    spec: dict
    output: str
    n_atoms: int
    wall_seconds: float  # wall time of the production steps across all (resumed) runs
    production_steps: int
    ms_per_step: float
    energy: dict = field(default_factory=dict)
    # MD is chaotic: another build of these can give another (equally valid) trajectory from the same seed
    versions: dict = field(default_factory=dict)


def chunk_dir(out_path: Path) -> Path:
    """Where the finished chunks of an unfinished run live."""
    return out_path.with_name(out_path.name + ".chunks")


def _chunk_path(chunks: Path, index: int) -> Path:
    return chunks / f"chunk_{index:06d}.npz"


def _save_atomic_npz(path: Path, **arrays) -> None:
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def _complete_chunks(chunks: Path, n_chunks: int) -> int:
    done = 0
    while done < n_chunks and _chunk_path(chunks, done).exists():
        done += 1
    return done


def generate_xtb_netcdf(spec: XtbRunSpec, out_path: str | os.PathLike, *, write_velocities: bool = False,
                        max_chunks: int | None = None, progress: bool | None = None,
                        max_drift_meV_per_ps_per_atom: float = 1.0,
                        max_fluctuation_meV_per_atom: float = 5.0) -> GenerationReport | None:
    """Generate (or resume) the trajectory of `spec` into `out_path` (AMBER NetCDF).

    `max_chunks` stops after that many new chunks and returns None (an interruption, for tests).
    Raises EnergyConservationError (keeping the chunk folder) when the NVE run is absurd.
    """
    from .threads import single_threaded

    out_path = Path(out_path)
    chunks = chunk_dir(out_path)
    with exclusive(chunks), single_threaded():
        check_spec(chunks, asdict(spec))
        done = _complete_chunks(chunks, spec.n_chunks)
        mol = get_molecule(spec.molecule)
        if done == 0:
            atoms = start_state(spec.molecule, seed=spec.seed, temperature_K=spec.temperature_K,
                                timestep_fs=spec.timestep_fs, thermalize_steps=spec.thermalize_steps,
                                relax_steps=spec.relax_steps, friction_per_fs=spec.friction_per_fs)
        else:
            from ase import Atoms

            with np.load(_chunk_path(chunks, done - 1)) as last:
                atoms = Atoms(mol.symbols)
                set_state(atoms, last["final_positions"], last["final_momenta"])
            log.info("%s: resuming after chunk %d/%d", out_path.name, done, spec.n_chunks)

        bar = Progress(out_path.name, spec.n_frames, unit="frame", bar=progress, every_s=PROGRESS_LOG_INTERVAL_S,
                       initial=min(done * spec.chunk_frames, spec.n_frames))
        try:
            for index in range(done, spec.n_chunks):
                if max_chunks is not None and index - done >= max_chunks:
                    return None
                first, stop = spec.chunk_range(index)
                start = time.perf_counter()
                chunk = run_nve_chunk(atoms, first_frame=first, n_frames=stop - first, stride=spec.stride,
                                      timestep_fs=spec.timestep_fs)
                seconds = time.perf_counter() - start
                _save_atomic_npz(_chunk_path(chunks, index), positions=chunk.positions,
                                 velocities=chunk.velocities, potential_eV=chunk.potential_eV,
                                 kinetic_eV=chunk.kinetic_eV, final_positions=chunk.final_positions,
                                 final_momenta=chunk.final_momenta, steps=chunk.steps, seconds=seconds)
                ms_per_step = 1000.0 * seconds / max(chunk.steps, 1)
                bar.update(stop, f"{out_path.name}: {stop}/{spec.n_frames} frames "
                                 f"({100.0 * stop / spec.n_frames:.0f}%), {ms_per_step:.2f} ms/step")
        finally:
            bar.close()
        return _finish(spec, chunks, out_path, mol, write_velocities, max_drift_meV_per_ps_per_atom,
                       max_fluctuation_meV_per_atom)


def _finish(spec: XtbRunSpec, chunks: Path, out_path: Path, mol, write_velocities: bool,
            max_drift: float, max_fluctuation: float) -> GenerationReport:
    from ..data.amber import AmberWriter

    parts = [np.load(_chunk_path(chunks, i)) for i in range(spec.n_chunks)]
    positions = np.concatenate([p["positions"] for p in parts])
    velocities = np.concatenate([p["velocities"] for p in parts])
    potential = np.concatenate([p["potential_eV"] for p in parts])
    kinetic = np.concatenate([p["kinetic_eV"] for p in parts])
    steps = int(sum(int(p["steps"]) for p in parts))
    seconds = float(sum(float(p["seconds"]) for p in parts))
    for p in parts:
        p.close()
    time_ps = np.arange(spec.n_frames) * spec.stride * spec.timestep_fs / 1000.0

    energy = measure_conservation(potential, kinetic, time_ps, mol.n_atoms)
    log.info("%s: %s", out_path.name, energy.summary())
    check_conservation(energy, max_drift_meV_per_ps_per_atom=max_drift,
                       max_fluctuation_meV_per_atom=max_fluctuation)

    ms_per_step = 1000.0 * seconds / max(steps, 1)
    attributes = {
        "source": f"{spec.method} (tblite) NVE molecular dynamics, xTB-MD17 protocol",
        "molecule": spec.molecule, "seed": spec.seed, "temperature_K": spec.temperature_K,
        "timestep_fs": spec.timestep_fs, "stride": spec.stride, "thermalize_steps": spec.thermalize_steps,
        "energy_drift_meV_per_ps_per_atom": energy.drift_meV_per_ps_per_atom,
        "energy_fluctuation_meV_per_atom": energy.fluctuation_meV_per_atom,
    }
    with AmberWriter(out_path, mol.n_atoms, mol.atomic_numbers, velocities=write_velocities,
                     timestep_ps=spec.stride * spec.timestep_fs / 1000.0, attributes=attributes,
                     title=f"xTB-MD17 {spec.molecule} {spec.method} {spec.temperature_K:g} K") as writer:
        writer.append(positions.astype(np.float32), time_ps,
                      velocities=velocities.astype(np.float32) if write_velocities else None)
    report = GenerationReport(spec=asdict(spec), output=str(out_path), n_atoms=mol.n_atoms, wall_seconds=seconds,
                              production_steps=steps, ms_per_step=ms_per_step, energy=energy.as_dict(),
                              versions=package_versions(GENERATOR_PACKAGES))
    report_path = out_path.with_name(out_path.name + ".json")
    write_text_atomic(report_path, json.dumps(asdict(report), indent=1))
    shutil.rmtree(chunks)
    log.info("%s: wrote %d frames of %d atoms (%.2f ms/step)", out_path, spec.n_frames, mol.n_atoms, ms_per_step)
    return report

