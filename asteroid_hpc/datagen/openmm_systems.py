"""The periodic systems OpenMM simulates for the project: a TIP3P water box and solvated villin.

- ``water``: pure TIP3P (``amber14/tip3p.xml``) filling a cube of ``box_nm`` (``Modeller.addSolvent``), rigid.
- ``villin``: the villin headpiece in TIP3P water that OpenMM ships as ``openmm/app/data/test.pdb``
  (8 867 atoms, box from its CRYST1 record), ``amber14-all.xml`` + ``amber14/tip3p.xml``, bonds to H constrained.

Both: PME, ``cutoff_nm`` real-space cutoff, rigid water, OpenMM's centre-of-mass motion remover.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

SYSTEMS = ("water", "villin")
WATER_FORCE_FIELD = ("amber14/tip3p.xml",)
VILLIN_FORCE_FIELD = ("amber14-all.xml", "amber14/tip3p.xml")
DEFAULT_WATER_BOX_NM = 3.2  # 3 222 atoms at 32.8 waters/nm^3 (3.1 nm gives 2 685 atoms, 10 % below that density)
BAROSTAT_PRESSURE_BAR = 1.0
BAROSTAT_INTERVAL_STEPS = 25


@dataclass
class MDSystem:
    """An OpenMM topology with its start positions and force-field system."""

    name: str
    topology: object  # openmm.app.Topology, periodic
    positions: object  # Quantity [N] Vec3
    system: object  # openmm.System (no barostat)
    force_field: tuple[str, ...]
    constraints: str  # "none" (only rigid water) or "HBonds"

    @property
    def n_atoms(self) -> int:
        return self.topology.getNumAtoms()

    @property
    def n_waters(self) -> int:
        return sum(1 for r in self.topology.residues() if r.name == "HOH")


def villin_pdb_path() -> Path:
    """OpenMM's own solvated villin structure, inside the installed package."""
    import openmm.app

    return Path(openmm.app.__file__).parent / "data" / "test.pdb"


def build_system(name: str, *, box_nm: float | None, cutoff_nm: float) -> MDSystem:
    """The system ``name`` (one of SYSTEMS); ``box_nm`` is the water cube's edge (None for villin)."""
    from openmm import Vec3, app, unit

    if name == "water":
        force_field = app.ForceField(*WATER_FORCE_FIELD)
        modeller = app.Modeller(app.Topology(), [])
        modeller.addSolvent(force_field, model="tip3p", boxSize=Vec3(box_nm, box_nm, box_nm) * unit.nanometer)
        topology, positions, files, constraints = modeller.topology, modeller.positions, WATER_FORCE_FIELD, None
    elif name == "villin":
        force_field = app.ForceField(*VILLIN_FORCE_FIELD)
        pdb = app.PDBFile(str(villin_pdb_path()))
        topology, positions, files, constraints = pdb.topology, pdb.positions, VILLIN_FORCE_FIELD, app.HBonds
    else:
        raise UserError(f"unknown system {name!r}: choose one of {', '.join(SYSTEMS)}")
    system = force_field.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * unit.nanometer,
                                      constraints=constraints, rigidWater=True)
    return MDSystem(name, topology, positions, system, files, "HBonds" if constraints else "none")


def with_barostat(system, *, temperature_K: float, seed: int):
    """A copy of ``system`` with a Monte Carlo barostat at 1 bar (for an NPT equilibration)."""
    import openmm
    from openmm import unit

    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    barostat = openmm.MonteCarloBarostat(BAROSTAT_PRESSURE_BAR * unit.bar, temperature_K * unit.kelvin,
                                         BAROSTAT_INTERVAL_STEPS)
    barostat.setRandomNumberSeed(seed)
    copy.addForce(barostat)
    return copy


def degrees_of_freedom(system) -> int:
    """3N minus constraints minus 3 when the centre-of-mass motion is removed (for the temperature)."""
    import openmm
    from openmm import unit

    removed = any(isinstance(system.getForce(i), openmm.CMMotionRemover) for i in range(system.getNumForces()))
    massive = sum(1 for i in range(system.getNumParticles()) if system.getParticleMass(i).value_in_unit(unit.dalton) > 0)
    return 3 * massive - system.getNumConstraints() - (3 if removed else 0)
