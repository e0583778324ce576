"""Topologies: the element of every atom (and the bonds) from the file an MD engine writes, through MDAnalysis.

Accepted: AMBER ``.prmtop``/``.parm7``, GROMACS ``.tpr``/``.gro``, CHARMM/NAMD ``.psf``, PDB, mmCIF, LAMMPS
data files, and every other format MDAnalysis reads as a topology; formats MDAnalysis does not know (e.g.
extended XYZ) go through ASE. The element of an atom comes, in this order, from

1. the file's own element or atomic-number field (MDAnalysis ``elements``, when every entry is an element);
2. the masses the file holds (nearest standard atomic weight within ``MASS_TOLERANCE_U``), logged as a guess
   (a LAMMPS data file in ``units real`` or ``metal``: g/mol; masses that are all exactly 1, LAMMPS's reduced
   ``units lj``, name no element);
3. the atom name: the first letter for atoms of standard residues (amino acids, nucleic acids, water), else
   MDAnalysis's name guess (never a two-letter metal for a residue atom such as CD or HG), logged as a guess.

An atom none of them determines is a one-line UserError naming the file and the atom. A LAMMPS data file is
parsed in the atom style its ``Atoms # style`` comment names (MDAnalysis otherwise assumes ``full``). Bonds are kept when
the topology holds them (``bonds`` [B, 2], atom indices), for making molecules whole across a periodic box.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import user_error
from ..logs import get_logger

log = get_logger(__name__)

MASS_TOLERANCE_U = 0.05  # |mass - standard atomic weight| accepted as that element (united atoms fail it)
# MDAnalysis format names by suffix where the suffix alone is ambiguous or unknown to it
TOPOLOGY_FORMATS = {".parm7": "PRMTOP", ".prmtop": "PRMTOP", ".top": "PRMTOP", ".lammps": "DATA",
                    ".data": "DATA", ".cif": "MMCIF", ".mmcif": "MMCIF", ".pdbx": "MMCIF"}
ASE_SUFFIXES = (".xyz", ".extxyz")
STANDARD_RESIDUES = frozenset(
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
    "ASH GLH HID HIE HIP HSD HSE HSP CYX CYM LYN ACE NME NMA "
    "DA DC DG DT A C G U RA RC RG RU DA5 DA3 DC5 DC3 DG5 DG3 DT5 DT3 "
    "HOH WAT SOL TIP3 TIP4 TIP5 SPC T3P T4P".split())


@dataclass(frozen=True)
class Topology:
    """The atoms of a topology file: atomic numbers, bonds and where the elements came from."""

    path: Path
    atomic_numbers: np.ndarray  # [N] int64
    bonds: np.ndarray = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))  # [B, 2] atom indices
    element_source: str = "file"  # file | masses | names | mixed

    @property
    def n_atoms(self) -> int:
        return len(self.atomic_numbers)


def _symbol_table() -> dict[str, int]:
    from MDAnalysis.guesser.tables import SYMB2Z

    return {symbol.upper(): int(z) for symbol, z in SYMB2Z.items()}


def _standard_masses() -> tuple[np.ndarray, np.ndarray]:
    """(atomic numbers, standard atomic weights) of the elements MDAnalysis knows."""
    from MDAnalysis.guesser.tables import masses

    z_of = _symbol_table()
    pairs = sorted((z_of[s.upper()], m) for s, m in masses.items() if s.upper() in z_of and z_of[s.upper()] > 0)
    return np.array([z for z, _ in pairs]), np.array([m for _, m in pairs], dtype=np.float64)


def open_universe(path: str | os.PathLike, trajectory=None):
    """An MDAnalysis Universe of topology ``path`` (and optionally a trajectory); UserError when unreadable."""
    import MDAnalysis

    path = Path(path)
    if not path.is_file():
        raise user_error(path, "no such file")
    fmt = TOPOLOGY_FORMATS.get(path.suffix.lower())
    args = [str(path)] + ([str(trajectory)] if trajectory is not None else [])
    style = lammps_atom_style(path) if fmt == "DATA" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MDAnalysis warns about every guessed attribute
            return MDAnalysis.Universe(*args, topology_format=fmt, to_guess=(),
                                       **({"atom_style": style} if style else {}))
    except Exception as exc:  # MDAnalysis raises assorted types on malformed or unknown files
        raise user_error(path, f"cannot read as a topology ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


# LAMMPS atom styles (the ``Atoms # style`` comment) -> the columns MDAnalysis's DATA parser reads
LAMMPS_ATOM_STYLES = {"atomic": "id type x y z", "charge": "id type charge x y z",
                      "bond": "id resid type x y z", "angle": "id resid type x y z",
                      "molecular": "id resid type x y z", "full": "id resid type charge x y z"}


def lammps_atom_style(path: Path) -> str | None:
    """The MDAnalysis ``atom_style`` of a LAMMPS data file whose ``Atoms`` line names a style, else None."""
    from MDAnalysis.lib.util import anyopen

    try:
        with anyopen(str(path), "r") as fh:
            for line in fh:
                if line.strip().startswith("Atoms"):
                    _, _, comment = line.partition("#")
                    return LAMMPS_ATOM_STYLES.get(comment.strip().split()[0].lower()) if comment.strip() else None
    except (OSError, UnicodeDecodeError, EOFError):
        return None  # MDAnalysis reports the unreadable file
    return None


def _is_guessed(universe, name: str) -> bool:
    """True when the universe lacks attribute ``name`` or MDAnalysis made it up (not read from the file)."""
    attr = getattr(universe._topology, name, None)
    return attr is None or bool(np.all(getattr(attr, "is_guessed", False)))  # bonds: one flag per bond


def _repartitioned(masses) -> bool:
    """Hydrogen mass repartitioning (H at 1.5-3.9 u, its heavy atom lighter by as much): masses then name
    wrong elements (N-H as C, O-H as N), so they are not used to guess any."""
    masses = np.asarray(masses, dtype=np.float64)
    return bool(((masses > 1.5) & (masses < 3.9)).any())  # below helium (4.003 u)


def _reduced_units(masses) -> bool:
    """Masses all exactly 1: LAMMPS's reduced units (``units lj``), not hydrogen (1.008 u)."""
    return bool(len(masses)) and bool(np.all(np.asarray(masses, dtype=np.float64) == 1.0))


def elements_of(universe, where: str | os.PathLike) -> tuple[np.ndarray, str]:
    """(atomic numbers [N], source) of an MDAnalysis Universe's atoms (see the module docstring)."""
    atoms = universe.atoms
    z_of = _symbol_table()
    numbers = np.full(len(atoms), -1, dtype=np.int64)
    sources = set()
    if not _is_guessed(universe, "elements"):
        from_file = np.array([z_of.get(str(e).strip().upper(), -1) for e in atoms.elements], dtype=np.int64)
        numbers = np.where(from_file > 0, from_file, numbers)
        if (from_file > 0).any():
            sources.add("file")
    todo = numbers < 0
    masses_usable = not _is_guessed(universe, "masses") and not _repartitioned(atoms.masses) \
        and not _reduced_units(atoms.masses)
    if todo.any() and masses_usable:
        z_table, weights = _standard_masses()
        masses = np.asarray(atoms.masses, dtype=np.float64)
        nearest = np.abs(masses[:, None] - weights[None, :]).argmin(axis=1)
        close = np.abs(masses - weights[nearest]) <= MASS_TOLERANCE_U
        pick = todo & close
        if pick.any():
            numbers[pick] = z_table[nearest[pick]]
            sources.add("masses")
            log.warning("%s: no element field for %d atoms; elements guessed from their masses", where,
                        int(pick.sum()))
    todo = numbers < 0
    if todo.any() and not _is_guessed(universe, "masses"):
        massless = todo & (np.asarray(atoms.masses, dtype=np.float64) == 0.0)
        if massless.any():  # virtual sites (TIP4P's M, lone pairs): no element; 0 is the model's "no element"
            numbers[massless] = 0
            log.warning("%s: %d massless atoms (virtual sites) get atomic number 0", where, int(massless.sum()))
    todo = numbers < 0
    if todo.any() and hasattr(atoms, "names"):
        guessed = _elements_from_names(atoms, np.flatnonzero(todo), z_of)
        pick = todo & (guessed > 0)
        if pick.any():
            numbers[pick] = guessed[pick]
            sources.add("names")
            log.warning("%s: no element field or usable mass for %d atoms; elements guessed from their names "
                        "(check them, or give a topology with elements: .prmtop, .tpr, .psf)", where,
                        int(pick.sum()))
    if (numbers < 0).any():
        i = int(np.flatnonzero(numbers < 0)[0])
        atom = atoms[i]
        described = " ".join(f"{key} {getattr(atom, key)!r}" for key in ("name", "type", "resname")
                             if hasattr(atom, key))
        if not _is_guessed(universe, "masses"):
            described += f" mass {float(atom.mass):g}"
            if _reduced_units(atoms.masses):
                described += ": every mass is 1, LAMMPS reduced units (units lj), which name no element"
        raise user_error(where, f"cannot determine the element of atom {i} ({described}), nor of "
                                f"{int((numbers < 0).sum()) - 1} other(s): give a topology with an element or "
                                "atomic-number field, or standard masses")
    source = sources.pop() if len(sources) == 1 else "mixed"
    return numbers, source


def _elements_from_names(atoms, indices: np.ndarray, z_of: dict[str, int]) -> np.ndarray:
    """Atomic numbers guessed from atom names (0 where no guess), for atoms ``indices``."""
    from MDAnalysis.guesser.default_guesser import DefaultGuesser

    guesser = DefaultGuesser(None)
    names = atoms.names
    resnames = atoms.resnames if hasattr(atoms, "resnames") else np.full(len(atoms), "")
    out = np.zeros(len(atoms), dtype=np.int64)
    for i in indices:
        name = str(names[i]).strip().lstrip("0123456789")
        if not name:
            continue
        if str(resnames[i]).strip().upper() in STANDARD_RESIDUES:
            out[i] = z_of.get(name[0].upper(), 0)  # PDB naming: the first letter of a residue atom's name
        else:
            out[i] = z_of.get(str(guesser.guess_atom_element(name)).upper(), 0)
    return out


def bonds_of(universe) -> np.ndarray:
    """The topology's own bonds [B, 2] (empty when it holds none; guessed bonds are never made up)."""
    if _is_guessed(universe, "bonds") or not hasattr(universe.atoms, "bonds"):
        return np.empty((0, 2), dtype=np.int64)
    return np.asarray(universe.atoms.bonds.indices, dtype=np.int64).reshape(-1, 2)


def read_topology(path: str | os.PathLike) -> Topology:
    """The atoms of topology file ``path`` (see the module docstring)."""
    path = Path(path)
    if path.suffix.lower() in ASE_SUFFIXES and path.is_file():
        return _ase_topology(path)  # XYZ names are elements; ASE reads them as such
    try:
        universe = open_universe(path)
    except Exception:
        if path.is_file() and _ase_reads(path):
            return _ase_topology(path)
        raise
    numbers, source = elements_of(universe, path)
    topology = Topology(path, numbers, bonds_of(universe), source)
    log.info("%s: %d atoms, elements from %s, %d bonds", path, topology.n_atoms,
             {"file": "the file", "mixed": "several sources"}.get(source, f"the {source}"), len(topology.bonds))
    return topology


def _ase_reads(path: Path) -> bool:
    try:
        from ase.io.formats import filetype

        return filetype(str(path), read=True) is not None
    except Exception:
        return False


def _ase_topology(path: Path) -> Topology:
    """Formats MDAnalysis does not read as topologies (e.g. extended XYZ): the elements through ASE."""
    try:
        from ase.io import read

        numbers = np.asarray(read(str(path), index=0).numbers, dtype=np.int64)
    except Exception as exc:
        raise user_error(path, f"cannot read atomic numbers ({type(exc).__name__}: {exc})") from None
    return Topology(path, numbers)
