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
