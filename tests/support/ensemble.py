"""Tiny models and synthetic initial conditions for the ensemble tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.tiny import tiny_model_file

# the tiny model with local-global attention (domain decomposition needs it) and a short neighbour list
ENSEMBLE_MODEL = dict(attention="local_global", max_neighbors=16)
LIQUID_DENSITY_PER_A3 = 0.021


def ensemble_model_file(path: Path, seed: int = 0, **changes) -> Path:
    """The tiny ASTEROID of the ensemble tests, untrained (torch seeded with ``seed``), saved with save_weights."""
    return tiny_model_file(path, seed, **{**ENSEMBLE_MODEL, **changes})


def write_trajectory(path: Path, frames: np.ndarray, atomic_numbers, timestep_ps: float | None = 0.01) -> Path:
    from asteroid_hpc.data.amber import AmberWriter

    with AmberWriter(path, frames.shape[1], atomic_numbers, timestep_ps=timestep_ps) as writer:
        writer.append(frames.astype(np.float32), None if timestep_ps else np.zeros(len(frames)))
    return path


def molecule_trajectory(path: Path, n_atoms: int = 9, n_frames: int = 12, seed: int = 0) -> Path:
    """A small molecule-like cluster (atoms 1.5 Å apart on average) vibrating around fixed positions."""
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=1.5, size=(n_atoms, 3))
    phases = rng.uniform(0, 2 * np.pi, size=(n_atoms, 3))
    t = np.arange(n_frames)[:, None, None]
    frames = base + 0.05 * np.sin(0.7 * t + phases)
    z = rng.choice([1, 6, 8], size=n_atoms)
    return write_trajectory(path, frames, z)


def lj_like_box(path: Path, n_atoms: int = 400, n_frames: int = 6, seed: int = 0) -> Path:
    """An argon-like open box at liquid density (jittered cubic lattice, ~3.6 Å spacing) with thermal jitter."""
    rng = np.random.default_rng(seed)
    edge = (n_atoms / LIQUID_DENSITY_PER_A3) ** (1 / 3)
    per_side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
    base = (grid + 0.5) * (edge / per_side) + rng.normal(scale=0.2, size=(n_atoms, 3))
    frames = base + np.cumsum(rng.normal(scale=0.03, size=(n_frames, n_atoms, 3)), axis=0)
    return write_trajectory(path, frames, np.full(n_atoms, 18))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The ensemble tests' model, a 40-frame molecule and a 400-atom box (one set per test module)."""
    root = tmp_path_factory.mktemp("ensemble")
    return {"model": ensemble_model_file(root / "tiny.safetensors"),
            "molecule": molecule_trajectory(root / "molecule.nc", n_frames=40),
            "box": lj_like_box(root / "box.nc", n_atoms=400)}


def member_frames(outdir: Path, member: int) -> np.ndarray:
    """The coordinates a finished ensemble member's file holds."""
    from asteroid_hpc.data.amber import read_frames

    return read_frames(outdir / "members" / f"member_{member:05d}.nc").coordinates


WATER_GEOMETRY = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # TIP3P O, H, H in Å


def water_box_frames(lattice=(4, 4, 4), n_frames: int = 12, spacing_angstrom: float = 3.1, seed: int = 0,
                     drift_angstrom: float = 0.05, jitter_angstrom: float = 0.01):
    """A water-like periodic box: ``lattice`` (waters along x, y, z) rigid waters on a jittered lattice whose
    first layer sits on the box's faces (atoms start on both sides of them), each molecule drifting (a random
    walk of ``drift_angstrom`` per frame) and every atom jittering ``jitter_angstrom`` (0: rigid waters). Returns (unwrapped frames [F, N, 3]
    float64, atomic numbers [N], bonds [B, 2], cell [6]: ``lattice × spacing`` Å, orthorhombic)."""
    rng = np.random.default_rng(seed)
    n_waters = int(np.prod(lattice))
    edges = np.asarray(lattice, dtype=np.float64) * spacing_angstrom
    sites = np.stack(np.meshgrid(*[np.arange(n) * spacing_angstrom for n in lattice], indexing="ij"),
                     -1).reshape(-1, 3)
    sites = sites + rng.normal(scale=0.1, size=sites.shape)  # the layer at 0 straddles the faces
    turns = [np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(n_waters)]
    molecules = np.stack([WATER_GEOMETRY @ q.T for q in turns])  # [W, 3, 3]
    walk = np.cumsum(rng.normal(scale=drift_angstrom, size=(n_frames, n_waters, 1, 3)), axis=0)
    frames = (sites[None, :, None] + molecules[None] + walk).reshape(n_frames, -1, 3)
    frames = frames + rng.normal(scale=jitter_angstrom, size=frames.shape)
    numbers = np.tile([8, 1, 1], n_waters)
    bonds = np.concatenate([[[3 * w, 3 * w + 1], [3 * w, 3 * w + 2]] for w in range(n_waters)])
    return frames, numbers, bonds, np.array([*edges, 90.0, 90.0, 90.0])


def wrap_atoms(frames: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Every atom put into an orthorhombic box [0, L) on its own (as some engines write: molecules broken)."""
    return frames - np.floor(frames / cell[:3]) * cell[:3]


def write_periodic_trajectory(path: Path, frames: np.ndarray, atomic_numbers, cell: np.ndarray,
                              timestep_ps: float = 0.01) -> Path:
    """An AMBER NetCDF trajectory with the cell of every frame."""
    from asteroid_hpc.data.amber import AmberWriter

    with AmberWriter(path, frames.shape[1], atomic_numbers, timestep_ps=timestep_ps, cell=True) as writer:
        writer.append(frames.astype(np.float32), cell_lengths=np.tile(cell[:3], (len(frames), 1)),
                      cell_angles=np.tile(cell[3:], (len(frames), 1)))
    return path


def water_box_trajectory(path: Path, n_frames: int = 12, wrapped: bool = True, **box) -> Path:
    """:func:`water_box_frames` written with cells, each atom wrapped into the box (``wrapped``) or not."""
    frames, numbers, _, cell = water_box_frames(n_frames=n_frames, **box)
    return write_periodic_trajectory(path, wrap_atoms(frames, cell) if wrapped else frames, numbers, cell)


def water_topology(path: Path, n_waters: int = 64) -> Path:
    """A PDB topology of ``n_waters`` waters (O, H, H each) with their O–H bonds (CONECT records), for --topology."""
    lines = []
    for w in range(n_waters):
        for k, name in enumerate(("O", "H1", "H2")):
            serial = 3 * w + k + 1
            lines.append(f"HETATM{serial:5d} {name:<4} HOH A{w + 1:4d}    {0.0:8.3f}{0.0:8.3f}{0.0:8.3f}"
                         f"  1.00  0.00          {name[0]:>2}")
    lines += [f"CONECT{3 * w + 1:5d}{3 * w + 2:5d}{3 * w + 3:5d}" for w in range(n_waters)]
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return path


def periodic_signature(numbers, timestep_fs: float = 10.0) -> dict:
    """The data signature of a model trained on periodic inputs of these atoms (data/signature.py)."""
    numbers = [int(z) for z in numbers]
    return {"input_atoms": len(numbers), "atom_selection": "all", "atom_indices": list(range(len(numbers))),
            "atomic_numbers": numbers, "timestep_fs": timestep_fs, "frame_stride": 1,
            "input_timestep_fs": timestep_fs, "topology": None, "periodic": True}


def periodic_model_file(path: Path, numbers, seed: int = 0, **changes) -> Path:
    """The ensemble tests' tiny model, signed as trained on periodic inputs of ``numbers``."""
    import torch

    from asteroid_hpc.model import build_model, save_weights
    from tests.support.tiny import tiny_model_config

    torch.manual_seed(seed)
    model = build_model(tiny_model_config(**{**ENSEMBLE_MODEL, **changes}))
    model.data_signature = periodic_signature(numbers)
    return save_weights(model, path)


def truncate_to_partial(outdir: Path, member: int, frames: int) -> None:
    """Make member ``member`` look killed after ``frames`` flushed frames: a partial file, no marker."""
    from asteroid_hpc.data.amber import AmberReader, AmberWriter

    path = outdir / "members" / f"member_{member:05d}.nc"
    with AmberReader(path) as reader:
        chunk, z, timestep = reader.read(0, frames), reader.atomic_numbers, reader.timestep_ps
        times = reader.read_variable("time", 0, frames)
    with pytest.raises(KeyboardInterrupt):  # an exception keeps the .partial file, as a killed run does
        with AmberWriter(path, chunk.coordinates.shape[1], z, timestep_ps=timestep) as writer:
            writer.append(chunk.coordinates, times)
            raise KeyboardInterrupt
    path.unlink()
    (outdir / "members" / f"member_{member:05d}.done").unlink()
