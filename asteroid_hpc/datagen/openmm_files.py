"""The files of an OpenMM run as OpenMM users have them: a DCD trajectory and a PDB topology with all its bonds.

- DCD: OpenMM's own writer (``app.DCDFile``, what ``app.DCDReporter`` writes: CHARMM flavour, little-endian,
  the unit cell of every frame, molecules wrapped into the box), on a file handle this module flushes and
  closes at the end of each chunk, so that a checkpoint is saved only after the frames it counts are on disk.
  A resumed run cuts the file back to the frames its checkpoint counts (``truncate_dcd``).
- PDB: OpenMM's ``PDBFile`` writes CONECT records only for bonds of non-standard residues (none for water or
  amino acids), so the topology gets CONECT records for every bond here; MDAnalysis reads them as bonds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..atomic import atomic_output
from ..errors import user_error

PDB_MAX_ATOMS = 99_999  # five-digit serials in ATOM and CONECT records


class DCDFrames:
    """An OpenMM reporter writing positions every ``interval_steps`` steps to a DCD file, like DCDReporter."""

    def __init__(self, path: str | os.PathLike, topology, timestep, interval_steps: int, *, append: bool) -> None:
        from openmm import app

        self._interval = interval_steps
        self._file = open(path, "r+b" if append else "wb")
        self._dcd = app.DCDFile(self._file, topology, timestep, interval_steps, interval_steps, append=append)

    def describeNextReport(self, simulation) -> dict:  # noqa: N802 (OpenMM's reporter interface)
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": True, "include": ["positions"]}

    def report(self, simulation, state) -> None:
        self._dcd.writeModel(state.getPositions(asNumpy=True), periodicBoxVectors=state.getPeriodicBoxVectors())

    def close(self) -> None:
        """Flush the frames to disk and close the file."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def dcd_layout(path: Path) -> tuple[int, int, int]:
    """(header bytes, bytes per frame, frames the header counts) of a DCD file written by OpenMM."""
    with open(path, "rb") as fh:
        head = fh.read(100)
        if len(head) < 100 or head[4:8] != b"CORD" or struct.unpack("<i", head[:4])[0] != 84:
            raise user_error(path, "not a DCD file written by OpenMM")
        n_frames = struct.unpack("<i", head[8:12])[0]
        has_cell = struct.unpack("<i", head[48:52])[0] != 0
        title_bytes = struct.unpack("<i", head[92:96])[0]
        fh.seek(104 + title_bytes)
        n_atoms = struct.unpack("<i", fh.read(4))[0]
    frame_bytes = (56 if has_cell else 0) + 3 * (8 + 4 * n_atoms)
    return 112 + title_bytes, frame_bytes, n_frames


def truncate_dcd(path: Path, n_frames: int) -> None:
    """Cut an OpenMM DCD file back to its first ``n_frames`` whole frames (frames written after the last
    checkpoint, or half written by a killed run, go); its header then counts ``n_frames``."""
    header, frame, _ = dcd_layout(path)
    whole = (path.stat().st_size - header) // frame
    if whole < n_frames:
        raise user_error(path, f"holds {whole} whole frames but the checkpoint counts {n_frames}: the work folder "
                               "is inconsistent; delete it to start again")
    with open(path, "r+b") as fh:
        fh.truncate(header + n_frames * frame)
        fh.seek(12)
        first_step, interval = struct.unpack("<2i", fh.read(8))
        fh.seek(8)
        fh.write(struct.pack("<i", n_frames))
        fh.seek(20)
        fh.write(struct.pack("<i", first_step + max(n_frames - 1, 0) * interval))
        fh.flush()
        os.fsync(fh.fileno())


def _pdb_serials(topology) -> dict:
    """The serial number PDBFile.writeModel gives each atom (the TER record closing each chain takes one)."""
    serial, serials = 0, {}
    for chain in topology.chains():
        atoms = list(chain.atoms())
        for atom in atoms:
            serial += 1
            serials[atom] = serial
        serial += 1 if atoms else 0
    return serials


def conect_lines(topology) -> list[str]:
    """CONECT records for every bond of ``topology`` (four partners per line at most)."""
    serials = _pdb_serials(topology)
    partners: dict[int, list[int]] = {}
    for a, b in topology.bonds():
        partners.setdefault(serials[a], []).append(serials[b])
        partners.setdefault(serials[b], []).append(serials[a])
    lines = []
    for serial in sorted(partners):
        others = sorted(partners[serial])
        for start in range(0, len(others), 4):
            lines.append(f"CONECT{serial:5d}" + "".join(f"{o:5d}" for o in others[start:start + 4]))
    return lines


def write_pdb_with_bonds(path: str | os.PathLike, topology, positions) -> Path:
    """A PDB of ``topology`` at ``positions`` (CRYST1 from its box) with CONECT records for every bond."""
    from openmm.app import PDBFile

    if topology.getNumAtoms() > PDB_MAX_ATOMS:
        raise user_error(path, f"{topology.getNumAtoms()} atoms: a PDB topology holds at most {PDB_MAX_ATOMS}")
    with atomic_output(path) as tmp:
        with open(tmp, "w") as fh:
            PDBFile.writeHeader(topology, fh)
            PDBFile.writeModel(topology, positions, fh)
            fh.write("\n".join(conect_lines(topology)) + "\nEND\n")
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)
