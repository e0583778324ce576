"""Initial conditions of the members: the starting window of m frames and its perturbation.

Every random draw of member k comes from ``numpy.random.default_rng([seed, k])`` (a SeedSequence of the
seed and the member index), so it never depends on the number of ranks or on which rank runs the member.
Perturbations are applied once, to the starting window, so a member's rollout after its start is
deterministic and continuing from flushed frames needs no random state.

- ``gaussian``: one displacement per atom, N(0, σ²) per coordinate with σ = ``noise_angstrom``, added to
  every frame of the window (the configuration moves, the window's own frame-to-frame motion is kept).
- ``frames``: member k's window ends ``k · frame_spacing`` frames before ``start_frame`` (then, if
  ``noise_angstrom`` > 0, Gaussian noise as above as well); its file's time stamps continue from its own
  window's last frame (:func:`member_initial`), the ensemble mean's and summary's from the unperturbed one's.

A model trained on a selection of its inputs' atoms forecasts those atoms of a whole initial trajectory
(:func:`select_initial`); with ``ensemble.write_full_system`` its member files hold every atom, the others
held at their positions in the member's last starting frame (:func:`held_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional
from pathlib import Path

import numpy as np

from ..config.schema import EnsembleConfig
from ..errors import user_error
from .periodic import box_of


def member_rng(seed: int, member: int) -> np.random.Generator:
    return np.random.default_rng([seed, member])


@dataclass
class InitialCondition:
    """What every member starts from: the trajectory's atoms and the index of the window's last frame."""

    path: Path
    n_frames: int
    n_atoms: int
    atomic_numbers: np.ndarray  # [N] int64
    timestep_ps: float | None  # spacing of the forecast frames: the file's time step × frame_stride
    end_frame: int  # last frame of the unperturbed starting window (start_frame resolved)
    frame_stride: int = 1  # window frames are this many file frames apart (the training data's stride)
    end_time_ps: float = 0.0  # time of end_frame: forecast times continue from it (lead j at + j × timestep)
    # a model of a selection of the file's atoms: their indices in the file (n_atoms and atomic_numbers are
    # then the selected atoms'), and the elements of all the file's atoms
    atom_indices: Optional[np.ndarray] = None
    file_numbers: Optional[np.ndarray] = None
    # a periodic system: the cell [6] (Å, °) of end_frame, the box of the whole forecast (ensemble/periodic.py)
    cell: Optional[np.ndarray] = None
    bonds: Optional[np.ndarray] = None  # [B, 2] of the file's atoms from --topology (molecules of the output)

    @property
    def file_atoms(self) -> int:
        """Atoms in the initial trajectory file (n_atoms, unless the model takes a selection of them)."""
        return self.n_atoms if self.file_numbers is None else len(self.file_numbers)

    def read(self, first: int, stop: int) -> np.ndarray:
        """The model's atoms of file frames [first, stop), every ``frame_stride``-th."""
        from ..data.readers import read_frames

        coords = read_frames(self.path, first, stop, n_atoms=self.file_atoms).coordinates[::self.frame_stride]
        return coords if self.atom_indices is None else coords[:, self.atom_indices]


def inspect_initial(path: str | Path, cfg: EnsembleConfig, history_frames: int,
                    frame_stride: int = 1, topology_numbers: np.ndarray | None = None) -> InitialCondition:
    """Check the initial trajectory (any format the data readers take; elements from the file or
    ``topology_numbers``); windows take every ``frame_stride``-th frame (as the model was trained)."""
    from ..data.readers import TrajectoryReader

    path = Path(path)
    with TrajectoryReader(path, n_atoms=None if topology_numbers is None else len(topology_numbers)) as reader:
        numbers = reader.atomic_numbers if topology_numbers is None else np.asarray(topology_numbers)
        if numbers is None:
            raise user_error(path, "no atomic numbers in the file: the model needs the element of every atom "
                                   "(pass --topology FILE)")
        if reader.atomic_numbers is not None and not np.array_equal(numbers, reader.atomic_numbers):
            raise user_error(path, "atomic numbers differ from those of the topology")
        end = cfg.start_frame if cfg.start_frame >= 0 else reader.n_frames + cfg.start_frame
        if not 0 <= end < reader.n_frames:
            raise user_error(path, f"ensemble.start_frame={cfg.start_frame} is outside its {reader.n_frames} frames")
        earliest = end - (cfg.members - 1) * cfg.frame_spacing if cfg.perturbation == "frames" else end
        span = (history_frames - 1) * frame_stride + 1  # file frames one window covers
        if earliest - span + 1 < 0:
            need = span + (end - earliest)
            raise user_error(path, f"needs {need} frames up to frame {end} for {cfg.members} members of "
                                   f"{history_frames}-frame windows at stride {frame_stride} "
                                   f"({cfg.perturbation} perturbation), "
                                   f"has {end + 1}")
        timestep_ps = reader.timestep_ps * frame_stride if reader.timestep_ps else reader.timestep_ps
        end_chunk = reader.read(end, end + 1)
        end_time_ps = float(end_chunk.time_ps[0]) if end_chunk.time_ps is not None else \
            end * (reader.timestep_ps or 0.0)
        return InitialCondition(path, reader.n_frames, reader.n_atoms, np.array(numbers, dtype=np.int64),
                                timestep_ps, end, frame_stride, end_time_ps, cell=box_of(end_chunk.cell, path, end))


def select_initial(initial: InitialCondition, atom_indices: Optional[np.ndarray]) -> InitialCondition:
    """The initial condition of the model's atoms ``atom_indices`` of the file (None: all of them)."""
    if atom_indices is None:
        return initial
    return replace(initial, n_atoms=len(atom_indices), atomic_numbers=initial.atomic_numbers[atom_indices],
                   atom_indices=np.asarray(atom_indices), file_numbers=initial.atomic_numbers)


def model_bonds(initial: InitialCondition) -> Optional[np.ndarray]:
    """The topology's bonds between the model's atoms (numbered among them), or None without a topology."""
    if initial.bonds is None or initial.atom_indices is None:
        return initial.bonds
    from ..data.unwrap import selected_bonds

    return selected_bonds(initial.bonds, initial.atom_indices, initial.file_atoms)


def member_end_frame(initial: InitialCondition, cfg: EnsembleConfig, member: int) -> int:
    """The file frame member ``member``'s unperturbed starting window ends at."""
    return initial.end_frame - (member * cfg.frame_spacing if cfg.perturbation == "frames" else 0)


def member_initial(initial: InitialCondition, cfg: EnsembleConfig, member: int) -> InitialCondition:
    """The initial condition as member ``member`` sees it: its forecast times continue from its own window's last
    frame (``frames`` perturbation: ``member · frame_spacing`` frames before the unperturbed window's)."""
    back = initial.end_frame - member_end_frame(initial, cfg, member)
    if not back or not initial.timestep_ps:
        return initial
    return replace(initial, end_time_ps=initial.end_time_ps - back * initial.timestep_ps / initial.frame_stride)


def held_frame(initial: InitialCondition, cfg: EnsembleConfig, member: int) -> Optional[np.ndarray]:
    """With ``ensemble.write_full_system`` and a selection: all atoms [N_file, 3] of the member's last starting
    frame (unperturbed), where the unselected atoms stay; else None (member files hold the model's atoms)."""
    if not cfg.write_full_system or initial.atom_indices is None:
        return None
    from ..data.readers import read_frames

    end = member_end_frame(initial, cfg, member)
    return read_frames(initial.path, end, end + 1, n_atoms=initial.file_atoms).coordinates[0].astype(np.float32)


def starting_window(initial: InitialCondition, cfg: EnsembleConfig, member: int, history_frames: int) -> np.ndarray:
    """Member ``member``'s perturbed starting window [m, N, 3] float32 (Å)."""
    end = member_end_frame(initial, cfg, member)
    first = end - (history_frames - 1) * initial.frame_stride
    window = initial.read(first, end + 1).astype(np.float64)
    if cfg.noise_angstrom > 0:
        noise = member_rng(cfg.seed, member).normal(0.0, cfg.noise_angstrom, size=(initial.n_atoms, 3))
        window = window + noise
    return window.astype(np.float32)
