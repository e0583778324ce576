"""Quantum-mechanical and classical data generation: xTB-MD17 trajectories and Lennard-Jones boxes.

Heavy libraries (ASE, tblite, OpenMM, netCDF4) load only when a function runs.
"""

from .molecules import MD17_MOLECULES, MOLECULES, Molecule, get_molecule
from .xtb import xtb_trajectory

__all__ = ["MD17_MOLECULES", "MOLECULES", "Molecule", "get_molecule", "xtb_trajectory"]
