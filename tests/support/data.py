"""Helpers shared by the data and preprocess tests (tiny synthetic trajectories); no tests here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from asteroid_hpc.data.amber import AmberWriter

ATOMIC_NUMBERS = [6, 6, 8, 1, 1, 1, 7, 1]


def random_walk(n_frames: int, n_atoms: int = len(ATOMIC_NUMBERS), seed: int = 0) -> np.ndarray:
    """A smooth synthetic trajectory [F, N, 3] (angstrom) with a drifting centroid."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=(1, n_atoms, 3)) * 2.0
    steps = rng.normal(scale=0.02, size=(n_frames, n_atoms, 3))
    drift = np.linspace(0, 1, n_frames)[:, None, None]
    return (start + np.cumsum(steps, axis=0) + drift).astype(np.float32)


def write_traj(path, coords: np.ndarray, atomic_numbers=ATOMIC_NUMBERS, timestep_ps: float = 0.0005,
               time_ps=None) -> Path:
    with AmberWriter(path, coords.shape[1], atomic_numbers, timestep_ps=timestep_ps) as w:
        w.append(coords, time_ps=time_ps)
    return Path(path)


def centered(coords: np.ndarray) -> np.ndarray:
    return coords - coords.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)


def dataset_fingerprint(dataset: Path) -> dict:
    """Shard bytes and the manifest, timestamps aside: equal fingerprints = the same dataset."""
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest.pop("created_utc")
    shards = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((dataset / "shards").glob("*.nc"))}
    return {"manifest": manifest, "shards": shards}


def preprocess_walk_dataset(root: Path) -> Path:
    """A valid 300-frame random-walk dataset (three splits, 100-frame shards) written by the CLI in-process."""
    import pytest

    from asteroid_hpc.cli.main import main

    traj = write_traj(root / "walk.nc", random_walk(300))
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", str(traj), "-o", str(root / "ds"), "data.frames_per_shard=100"])
    assert exit_info.value.code == 0
    return root / "ds"


def preprocess(*args, expect: int = 0, capsys=None) -> str:
    """Run `asteroid-hpc preprocess ARGS` in this process (faster than a subprocess); return stderr."""
    import pytest

    from asteroid_hpc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", *map(str, args)])
    err = capsys.readouterr().err if capsys is not None else ""
    assert exit_info.value.code == expect, err
    return err


def spun(frames: np.ndarray, radians_per_frame: float, axis=(0.3, -0.5, 0.8)) -> np.ndarray:
    """``frames`` [F, N, 3] turned, frame t by t·radians_per_frame about ``axis`` through the first frame's centroid."""
    from scipy.spatial.transform import Rotation

    axis = np.asarray(axis) / np.linalg.norm(axis)
    centre = frames[0].mean(axis=0)
    turns = Rotation.from_rotvec(np.arange(len(frames))[:, None] * radians_per_frame * axis).as_matrix()
    return np.einsum("fij,fnj->fni", turns, frames - centre) + centre
