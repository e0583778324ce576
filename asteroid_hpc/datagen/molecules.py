"""Geometry table of the eight MD17 molecules, the starting point of xTB-MD17 trajectories.

Provenance: starting geometries were embedded from the SMILES below (RDKit ETKDG, lowest-energy MMFF
conformer; for salicylic acid the lowest GFN2-xTB energy of 20 conformers, which keeps the intramolecular
O-H...O=C hydrogen bond), then relaxed with GFN2-xTB (tblite, ASE BFGS, fmax 0.005 eV/Å) and centred
on the origin. Heavy atoms come first, hydrogens last, so the heavy-atom subset is a prefix of each
molecule. The table is already at the GFN2-xTB minimum: the relaxation before MD takes a step or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass(frozen=True)
class Molecule:
    """One molecule of the table: element symbols and Cartesian positions in Å."""

    name: str
    smiles: str
    symbols: tuple[str, ...]
    positions_angstrom: tuple[tuple[float, float, float], ...]

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    @property
    def atomic_numbers(self) -> np.ndarray:
        from ase.data import atomic_numbers

        return np.array([atomic_numbers[s] for s in self.symbols], dtype=np.int32)

    @property
    def positions(self) -> np.ndarray:
        """Positions [N, 3] in Å as float64."""
        return np.array(self.positions_angstrom, dtype=np.float64)

    @property
    def n_heavy_atoms(self) -> int:
        return sum(s != "H" for s in self.symbols)


def canonical_name(name: str) -> str:
    """'Salicylic acid', 'salicylic-acid' and 'salicylic_acid' all name the same molecule."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def get_molecule(name: str) -> Molecule:
    """Look a molecule up by name; an unknown name is the user's error."""
    key = canonical_name(name)
    if key not in MOLECULES:
        raise UserError(f"{name}: unknown molecule (known: {', '.join(MOLECULES)})")
    return MOLECULES[key]


def molecule_of(atomic_numbers) -> str | None:
    """The table molecule with exactly these atomic numbers in this order (the generator's atom order), else None."""
    atomic_numbers = np.asarray(atomic_numbers).tolist()
    for name, molecule in MOLECULES.items():
        if molecule.atomic_numbers.tolist() == atomic_numbers:
            return name
    return None


MOLECULES: dict[str, Molecule] = {
    "aspirin": Molecule(
        name="aspirin",
        smiles="CC(=O)Oc1ccccc1C(=O)O",
        symbols=("C", "C", "O", "O", "C", "C", "C", "C", "C", "C", "C", "O", "O", "H", "H", "H", "H", "H", "H", "H", "H"),
        positions_angstrom=(
            (   2.97667,    1.31446,   -1.02837),
            (   1.93149,    0.68745,   -0.15688),
            (   1.77140,    0.88870,    1.01428),
            (   1.18100,   -0.17929,   -0.87591),
            (   0.03521,   -0.70576,   -0.31873),
            (  -0.10964,   -2.08575,   -0.31439),
            (  -1.25210,   -2.66091,    0.21086),
            (  -2.24858,   -1.86310,    0.75074),
            (  -2.10697,   -0.48928,    0.75173),
            (  -0.97183,    0.10932,    0.20983),
            (  -0.85952,    1.58737,    0.16194),
            (  -0.21458,    2.21262,   -0.64356),
            (  -1.59353,    2.18775,    1.10477),
            (   2.52237,    2.18882,   -1.49265),
            (   3.28440,    0.62570,   -1.80904),
            (   3.82301,    1.63026,   -0.42625),
            (   0.68224,   -2.69158,   -0.72652),
            (  -1.35935,   -3.73504,    0.20699),
            (  -3.13588,   -2.31292,    1.16895),
            (  -2.87849,    0.14200,    1.16352),
            (  -1.47731,    3.14915,    1.04868),
        ),
    ),
    "benzene": Molecule(
        name="benzene",
        smiles="c1ccccc1",
        symbols=("C", "C", "C", "C", "C", "C", "H", "H", "H", "H", "H", "H"),
        positions_angstrom=(
            (  -1.23848,    0.61842,   -0.02788),
            (  -1.15525,   -0.76308,    0.01164),
            (   0.08322,   -1.38150,    0.03953),
            (   1.23847,   -0.61842,    0.02788),
            (   1.15525,    0.76309,   -0.01165),
            (  -0.08322,    1.38150,   -0.03953),
            (  -2.20494,    1.10101,   -0.04963),
            (  -2.05676,   -1.35857,    0.02073),
            (   0.14817,   -2.45958,    0.07038),
            (   2.20493,   -1.10101,    0.04963),
            (   2.05677,    1.35856,   -0.02072),
            (  -0.14817,    2.45958,   -0.07038),
        ),
    ),
    "ethanol": Molecule(
        name="ethanol",
        smiles="CCO",
        symbols=("C", "C", "O", "H", "H", "H", "H", "H", "H"),
        positions_angstrom=(
            (   0.91669,   -0.07159,    0.00811),
            (  -0.58216,   -0.35084,    0.04225),
            (  -1.34438,    0.79614,    0.33786),
            (   1.23814,    0.35973,    0.95308),
            (   1.15671,    0.62687,   -0.79257),
            (   1.46343,   -0.99492,   -0.16159),
            (  -0.81687,   -1.06417,    0.83539),
            (  -0.90103,   -0.78349,   -0.91806),
            (  -1.13053,    1.48228,   -0.30446),
        ),
    ),
    "malonaldehyde": Molecule(
        name="malonaldehyde",
        smiles=r"O/C=C\C=O",
        symbols=("O", "C", "C", "C", "O", "H", "H", "H", "H"),
        positions_angstrom=(
            (  -1.09720,   -0.38882,   -1.30491),
            (  -0.79702,    0.63654,   -0.54556),
            (   0.15022,    0.61816,    0.42599),
            (   0.89557,   -0.58309,    0.67088),
            (   0.74003,   -1.62927,    0.05202),
            (  -0.50829,   -1.14719,   -1.02788),
            (  -1.38130,    1.52550,   -0.76061),
            (   0.34983,    1.49432,    1.01599),
            (   1.64814,   -0.52615,    1.47409),
        ),
    ),
    "naphthalene": Molecule(
        name="naphthalene",
        smiles="c1ccc2ccccc2c1",
        symbols=("C", "C", "C", "C", "C", "C", "C", "C", "C", "C", "H", "H", "H", "H", "H", "H", "H", "H"),
        positions_angstrom=(
            (   2.28961,    0.98485,    0.33077),
            (   2.47523,   -0.39932,    0.18823),
            (   1.40260,   -1.22274,   -0.00861),
            (   0.09387,   -0.70000,   -0.07208),
            (  -1.03450,   -1.52222,   -0.27406),
            (  -2.28961,   -0.98485,   -0.33077),
            (  -2.47523,    0.39932,   -0.18823),
            (  -1.40260,    1.22274,    0.00861),
            (  -0.09387,    0.70000,    0.07208),
            (   1.03450,    1.52222,    0.27406),
            (   3.14902,    1.62080,    0.48573),
            (   3.47457,   -0.80686,    0.23573),
            (   1.54083,   -2.28929,   -0.11889),
            (  -0.88683,   -2.58761,   -0.38332),
            (  -3.14902,   -1.62080,   -0.48573),
            (  -3.47457,    0.80686,   -0.23573),
            (  -1.54083,    2.28929,    0.11889),
            (   0.88683,    2.58761,    0.38332),
        ),
    ),
    "salicylic_acid": Molecule(
        name="salicylic_acid",
        smiles="OC(=O)c1ccccc1O",
        symbols=("O", "C", "O", "C", "C", "C", "C", "C", "C", "O", "H", "H", "H", "H", "H", "H"),
        positions_angstrom=(
            (  -2.42669,   -0.84960,   -1.22641),
            (  -1.89753,    0.16033,   -0.52828),
            (  -2.56839,    1.13721,   -0.23445),
            (  -0.49200,   -0.01394,   -0.16597),
            (   0.21100,   -1.16420,   -0.53998),
            (   1.53330,   -1.32153,   -0.19567),
            (   2.17865,   -0.32609,    0.53237),
            (   1.50688,    0.81422,    0.91127),
            (   0.16279,    0.99431,    0.57181),
            (  -0.44542,    2.11714,    0.96207),
            (  -3.35618,   -0.65516,   -1.42465),
            (  -0.30786,   -1.92333,   -1.10380),
            (   2.06812,   -2.21168,   -0.48807),
            (   3.21677,   -0.44761,    0.80374),
            (   1.99476,    1.59315,    1.47544),
            (  -1.37820,    2.09678,    0.65058),
        ),
    ),
    "toluene": Molecule(
        name="toluene",
        smiles="Cc1ccccc1",
        symbols=("C", "C", "C", "C", "C", "C", "C", "H", "H", "H", "H", "H", "H", "H", "H"),
        positions_angstrom=(
            (   2.20794,   -0.02147,   -0.15326),
            (   0.71357,   -0.00785,   -0.03687),
            (  -0.01171,   -1.19190,   -0.07898),
            (  -1.39224,   -1.17991,    0.00999),
            (  -2.06931,    0.02024,    0.14192),
            (  -1.35711,    1.20658,    0.18183),
            (   0.02337,    1.19076,    0.09258),
            (   2.49994,    0.04968,   -1.20176),
            (   2.62012,   -0.94416,    0.24874),
            (   2.64611,    0.82171,    0.37581),
            (   0.51164,   -2.13234,   -0.18080),
            (  -1.94117,   -2.11015,   -0.02295),
            (  -3.14690,    0.03086,    0.21473),
            (  -1.87849,    2.14761,    0.28361),
            (   0.57424,    2.12035,    0.12541),
        ),
    ),
    "uracil": Molecule(
        name="uracil",
        smiles="O=C1C=CNC(=O)N1",
        symbols=("O", "C", "C", "C", "N", "C", "O", "N", "H", "H", "H", "H"),
        positions_angstrom=(
            (   2.63221,   -0.25109,    0.03354),
            (   1.42627,   -0.19063,    0.01895),
            (   0.50464,   -1.31486,    0.02454),
            (  -0.82117,   -1.10308,    0.00643),
            (  -1.34384,    0.15511,   -0.01750),
            (  -0.56492,    1.29884,   -0.02500),
            (  -1.04516,    2.40368,   -0.04627),
            (   0.78272,    1.04909,   -0.00609),
            (   0.92589,   -2.30416,    0.04347),
            (  -1.53794,   -1.91131,    0.00984),
            (  -2.34294,    0.30264,   -0.03099),
            (   1.38423,    1.86578,   -0.01093),
        ),
    ),
}

MD17_MOLECULES: tuple[str, ...] = tuple(MOLECULES)
