"""``data.atom_selection``: the atoms a dataset (and the model trained on it) keeps.

Keywords ``all``, ``heavy`` (atomic number > 1) and ``indices:0,1,5-9`` need only the elements. Anything else
is the MDAnalysis selection language (``"protein and not name H*"``, ``"resname SOL and name OW"``,
``"backbone"``), answered by the topology (``--topology``). An input without a topology that holds only atomic
numbers (AMBER NetCDF, extended XYZ) answers ``element`` and ``index``/``bynum`` selections and their
combinations; a selection it cannot answer (names, residues) is a one-line error naming the file and the
selection. The chosen indices are recorded in the manifest and, through the data signature, with the model.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError, user_error

KEYWORDS = ("all", "heavy")
INDICES_PREFIX = "indices:"
SELF_TOPOLOGY_SUFFIXES = (".gro", ".pdb", ".pqr", ".mol2")  # inputs that carry their own names and residues


def is_keyword(selection: str) -> bool:
    """True for the selections that need only the elements (``all``, ``heavy``, ``indices:...``)."""
    return selection in KEYWORDS or selection.startswith(INDICES_PREFIX)


def select_atoms(selection: str, atomic_numbers: np.ndarray, where: str | os.PathLike,
                 topology: str | os.PathLike | None = None) -> list[int]:
    """The sorted atom indices ``selection`` picks from atoms of elements ``atomic_numbers`` (the input
    ``where``; ``topology``: its topology file, for the MDAnalysis language). UserError when it picks none."""
    if is_keyword(selection):
        picked = _keyword_atoms(selection, atomic_numbers, where)
    else:
        picked = _language_atoms(selection, atomic_numbers, where, topology)
    if not picked:
        raise user_error(where, f"data.atom_selection {selection!r} selects no atoms")
    return picked


def _keyword_atoms(selection: str, atomic_numbers: np.ndarray, where) -> list[int]:
    n = len(atomic_numbers)
    if selection == "all":
        return list(range(n))
    if selection == "heavy":
        return [i for i, z in enumerate(atomic_numbers) if z > 1]
    picked = set()
    try:
        for part in selection.split(":", 1)[1].split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                picked.update(range(lo, hi + 1))
            elif part:
                picked.add(int(part))
    except ValueError:
        raise UserError(f"data.atom_selection: cannot parse {selection!r} (expected e.g. indices:0,1,5-9)") \
            from None
    picked = sorted(picked)
    if picked and (picked[0] < 0 or picked[-1] >= n):
        raise user_error(where, f"data.atom_selection {selection!r} names atoms outside 0..{n - 1}")
    return picked


def _language_atoms(selection: str, atomic_numbers: np.ndarray, where, topology) -> list[int]:
    """An MDAnalysis selection on the topology, or on the elements alone when there is none."""
    if topology is None and Path(where).suffix.lower() in SELF_TOPOLOGY_SUFFIXES:
        topology = where
    if topology is not None:
        from .topology import open_universe

        universe, source = open_universe(topology), Path(topology)
        if len(universe.atoms) != len(atomic_numbers):
            raise user_error(source, f"{len(universe.atoms)} atoms, the input {len(atomic_numbers)}")
        hint = ""
    else:
        universe, source = _elements_universe(atomic_numbers), Path(where)
        hint = " (the input holds atomic numbers only: 'element' and 'index' selections; for names and " \
               "residues pass --topology FILE)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            indices = universe.select_atoms(selection).indices
    except Exception as exc:  # SelectionError, or AttributeError for a field the topology lacks
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise user_error(source, f"data.atom_selection {selection!r}: {reason}{hint}") from None
    return sorted(int(i) for i in indices)


def _elements_universe(atomic_numbers: np.ndarray):
    """An MDAnalysis Universe of bare atoms that know their element (and index) only."""
    import MDAnalysis
    from ase.data import chemical_symbols

    universe = MDAnalysis.Universe.empty(len(atomic_numbers), trajectory=False)
    universe.add_TopologyAttr("elements", [chemical_symbols[int(z)] for z in atomic_numbers])
    return universe
