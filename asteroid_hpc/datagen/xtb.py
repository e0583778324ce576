"""GFN2-xTB molecular dynamics of one molecule: relax, thermalise (Langevin), NVE production.

Everything random comes from one seed. The production run is split into chunks of frames; each chunk
starts from positions and momenta alone, with a fresh calculator (no SCF guess carried over), so a run
resumed from the end of a chunk is bit-identical to an uninterrupted one.
Units: Å, fs, K, eV; velocities are returned in Å/ps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .molecules import get_molecule

XTB_METHOD = "GFN2-xTB"
DEFAULT_FRICTION_PER_FS = 0.02  # Langevin friction: a 50 fs time constant


def make_calculator():
    """A fresh tblite GFN2-xTB calculator (neutral, closed shell, quiet)."""
    from tblite.ase import TBLite

    return TBLite(method=XTB_METHOD, verbosity=0)


def relaxed_atoms(molecule: str, *, relax_steps: int = 50, fmax_eV_per_angstrom: float = 0.01):
    """ASE Atoms of a table molecule with a GFN2-xTB calculator, relaxed by BFGS (at most relax_steps)."""
    from ase import Atoms
    from ase.optimize import BFGS

    mol = get_molecule(molecule)
    atoms = Atoms(mol.symbols, positions=mol.positions)
    atoms.calc = make_calculator()
    if relax_steps > 0:
        BFGS(atoms, logfile=None).run(fmax=fmax_eV_per_angstrom, steps=relax_steps)
    return atoms


def thermalize(atoms, *, temperature_K: float, timestep_fs: float, steps: int, rng: np.random.Generator,
               friction_per_fs: float = DEFAULT_FRICTION_PER_FS) -> None:
    """Maxwell-Boltzmann velocities at temperature_K, then `steps` Langevin steps at that temperature.

    Centre-of-mass momentum and angular momentum are zero at the end.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    if hasattr(velocitydistribution, "thermalize_momenta"):  # ASE >= 3.29
        velocitydistribution.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        velocitydistribution.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    if steps > 0:
        atoms.set_constraint(FixCom())
        Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                 friction=friction_per_fs / units.fs, fixcm=False, rng=rng).run(steps)
        atoms.set_constraint()
        # the molecule neither drifts nor spins during production
        Stationary(atoms)
        ZeroRotation(atoms)


@dataclass
class ChunkResult:
    """Frames of one production chunk and the exact state at its last frame."""

    positions: np.ndarray  # [F, N, 3] Å, float64
    velocities: np.ndarray  # [F, N, 3] Å/ps, float64
    potential_eV: np.ndarray  # [F]
    kinetic_eV: np.ndarray  # [F]
    final_positions: np.ndarray  # [N, 3] float64, equal to positions[-1]
    final_momenta: np.ndarray  # [N, 3] float64, ASE units
    steps: int  # MD steps taken


def run_nve_chunk(atoms, *, first_frame: int, n_frames: int, stride: int, timestep_fs: float) -> ChunkResult:
    """Record n_frames frames, `stride` VelocityVerlet steps apart, from atoms' current state.

    Global frame 0 is the starting state itself; every later frame is `stride` steps after the previous
    one, so a chunk that starts at first_frame > 0 steps first. A fresh calculator is attached.
    """
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms.calc = make_calculator()
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    n_atoms = len(atoms)
    positions = np.empty((n_frames, n_atoms, 3))
    velocities = np.empty((n_frames, n_atoms, 3))
    potential = np.empty(n_frames)
    kinetic = np.empty(n_frames)
    ase_velocity_to_angstrom_per_ps = 1000.0 * units.fs  # 1 Å / (ASE time unit) in Å/ps
    steps = 0
    for i in range(n_frames):
        if first_frame + i > 0:
            dyn.run(stride)
            steps += stride
        positions[i] = atoms.positions
        velocities[i] = atoms.get_velocities() * ase_velocity_to_angstrom_per_ps
        potential[i] = atoms.get_potential_energy()
        kinetic[i] = atoms.get_kinetic_energy()
        if not np.isfinite(potential[i]):
            raise FloatingPointError(f"non-finite potential energy at frame {first_frame + i}")
    return ChunkResult(positions, velocities, potential, kinetic, atoms.positions.copy(),
                       atoms.get_momenta().copy(), steps)


def xtb_potential_energies(positions: np.ndarray, atomic_numbers) -> np.ndarray:
    """GFN2-xTB potential energy [F] in eV of each frame of ``positions`` [F, N, 3] Å (neutral, closed shell,
    one thread); NaN where the SCF fails or a frame is not finite."""
    from ase import Atoms

    from .threads import single_threaded

    positions = np.asarray(positions, dtype=np.float64)
    energies = np.full(len(positions), np.nan)
    with single_threaded():
        for f, frame in enumerate(positions):
            if not np.isfinite(frame).all():
                continue
            atoms = Atoms(numbers=np.asarray(atomic_numbers), positions=frame)
            atoms.calc = make_calculator()
            try:
                energies[f] = atoms.get_potential_energy()
            except Exception:  # noqa: BLE001 - tblite raises its own errors when the SCF does not converge
                pass
    return energies


def xtb_minimum_energy(frame: np.ndarray, atomic_numbers, steps: int, fmax_eV_per_angstrom: float) -> float:
    """GFN2-xTB potential energy (eV) of ``frame`` [N, 3] Å relaxed by BFGS (at most ``steps``, one thread)."""
    from ase import Atoms
    from ase.optimize import BFGS

    from .threads import single_threaded

    with single_threaded():
        atoms = Atoms(numbers=np.asarray(atomic_numbers), positions=np.asarray(frame, dtype=np.float64))
        atoms.calc = make_calculator()
        BFGS(atoms, logfile=None).run(fmax=fmax_eV_per_angstrom, steps=steps)
        return float(atoms.get_potential_energy())


def set_state(atoms, positions: np.ndarray, momenta: np.ndarray) -> None:
    atoms.positions = positions
    atoms.set_momenta(momenta)


def start_state(molecule: str, *, seed: int, temperature_K: float, timestep_fs: float, thermalize_steps: int,
                relax_steps: int = 50, friction_per_fs: float = DEFAULT_FRICTION_PER_FS):
    """Relaxed, thermalised Atoms ready for NVE production (frame 0)."""
    atoms = relaxed_atoms(molecule, relax_steps=relax_steps)
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature_K=temperature_K, timestep_fs=timestep_fs, steps=thermalize_steps, rng=rng,
               friction_per_fs=friction_per_fs)
    return atoms


def xtb_trajectory(molecule: str, n_frames: int, *, seed: int = 0, temperature_K: float = 500.0,
                   timestep_fs: float = 0.5, thermalize_steps: int = 200, stride: int = 1,
                   chunk_frames: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A GFN2-xTB NVE trajectory in memory: positions float64 [n_frames, N, 3] in Å, atomic numbers int [N].

    Frame i is i·stride·timestep_fs after the end of thermalisation. Same seed and settings give the
    same frames as tools/gen_xtb_md17.py writes (up to float32 rounding in the file).
    """
    if n_frames < 1 or stride < 1 or chunk_frames < 1:
        raise ValueError("n_frames, stride and chunk_frames must be positive")
    from .threads import single_threaded

    with single_threaded():
        atoms = start_state(molecule, seed=seed, temperature_K=temperature_K, timestep_fs=timestep_fs,
                            thermalize_steps=thermalize_steps)
        frames = []
        for first in range(0, n_frames, chunk_frames):
            chunk = run_nve_chunk(atoms, first_frame=first, n_frames=min(chunk_frames, n_frames - first),
                                  stride=stride, timestep_fs=timestep_fs)
            frames.append(chunk.positions)
    return np.concatenate(frames), get_molecule(molecule).atomic_numbers.astype(np.int64)
