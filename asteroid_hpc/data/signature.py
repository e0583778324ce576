"""What a model was trained on, as later commands check it: the atoms and the frame spacing of its inputs.

``train`` records the signature of its dataset (from the manifest) with the model; ``evaluate`` and
``ensemble-forecast`` compare their input trajectory with it and refuse a mismatch in one line naming both,
unless told to go on (``--allow-mismatch``). The topology recorded at preprocess time gives the elements of
inputs that hold none (an .xtc, .dcd, ...) when no ``--topology`` is given. A model trained on a selection
of its inputs' atoms (``data.atom_selection``) given a whole input (the training inputs' atom count) is
applied to the selected atoms (:func:`model_atoms`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..logs import get_logger

log = get_logger(__name__)

SPACING_TOLERANCE = 1e-3  # relative difference of frame spacings still counted as equal


def signature_of_manifest(manifest: dict) -> dict:
    """The signature of a dataset: its inputs' atom count, the selection and the selected atoms' indices
    and elements, the frame spacing of the inputs and of the dataset (after the stride), the topology
    it was given, and whether its systems are periodic (the model refuses the other kind at its entry)."""
    stride = int(manifest["frame_stride"])
    return {"input_atoms": int(manifest["sources"][0]["n_atoms"]),
            "atom_selection": manifest.get("atom_selection", "all"),
            "atom_indices": [int(i) for i in manifest["atom_indices"]],
            "atomic_numbers": [int(z) for z in manifest["atomic_numbers"]],
            "timestep_fs": float(manifest["timestep_fs"]), "frame_stride": stride,
            "input_timestep_fs": float(manifest["timestep_fs"]) / stride,
            "topology": manifest.get("topology"),
            "periodic": bool(manifest.get("periodic") or any(s.get("periodic") for s in manifest["sources"]))}


def recorded_topology(signature: dict | None) -> str | None:
    """The topology file the model's dataset was preprocessed with, when it still exists."""
    path = (signature or {}).get("topology")
    return path if path and Path(path).is_file() else None


def input_topology_numbers(path: Path, topology: str | None, signature: dict | None) -> np.ndarray | None:
    """The elements ``topology`` gives; for a file that holds none (an .xtc, .dcd, ...) without a topology,
    those of the topology the model's dataset was preprocessed with (its signature), when it still exists."""
    from .mda_reader import mda_format
    from .topology import read_topology

    if topology is None and mda_format(Path(path)) is not None:
        topology = recorded_topology(signature)
        if topology is not None:
            log.info("%s: elements from %s, the topology the model's dataset was preprocessed with", path, topology)
    return None if topology is None else read_topology(topology).atomic_numbers


def model_atoms(signature: dict | None, n_atoms: int) -> np.ndarray | None:
    """The indices of the model's atoms in an input of ``n_atoms`` atoms: its training selection when the input
    has the training inputs' atom count and the model was trained on part of them; None: the input as it is."""
    if not signature or n_atoms != signature["input_atoms"] or len(signature["atom_indices"]) == n_atoms:
        return None
    return np.asarray(signature["atom_indices"], dtype=np.int64)


def selection_note(signature: dict, where: str | os.PathLike) -> str:
    """The log line of a selection applied to input ``where``."""
    return (f"{where}: the model's {len(signature['atom_indices'])} of {signature['input_atoms']} atoms "
            f"(its data.atom_selection {signature.get('atom_selection', 'indices')!r})")


def check_against_model(signature: dict | None, atomic_numbers: np.ndarray, input_timestep_fs: float | None,
                        where: str | os.PathLike, model: str | os.PathLike, allow_mismatch: bool) -> None:
    """Refuse (UserError) an input whose atoms or frame spacing differ from the model's training inputs;
    with ``allow_mismatch`` log it instead. Models saved without a signature are not checked."""
    if not signature:
        return
    problem = None
    numbers = np.asarray(atomic_numbers)
    if len(numbers) != signature["input_atoms"]:
        problem = f"{len(numbers)} atoms, but the model {model} was trained on {signature['input_atoms']}-atom inputs"
    elif not np.array_equal(numbers[signature["atom_indices"]], signature["atomic_numbers"]):
        first = int(np.flatnonzero(numbers[signature["atom_indices"]] != signature["atomic_numbers"])[0])
        atom = signature["atom_indices"][first]
        problem = (f"atom {atom} is element {int(numbers[atom])}, but in the training inputs of the model {model} "
                   f"it is element {signature['atomic_numbers'][first]}")
    elif input_timestep_fs is not None and abs(input_timestep_fs - signature["input_timestep_fs"]) > \
            SPACING_TOLERANCE * signature["input_timestep_fs"]:
        problem = (f"frames {input_timestep_fs:g} fs apart, but the model {model} was trained on inputs "
                   f"{signature['input_timestep_fs']:g} fs apart")
    if problem is None:
        return
    if allow_mismatch:
        log.warning("%s: %s (going on: --allow-mismatch)", where, problem)
        return
    raise UserError(f"{where}: {problem} (--allow-mismatch to go on anyway)")
