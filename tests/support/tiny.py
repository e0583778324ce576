"""The one tiny model and dataset of the tests and the tools, built from configs/tiny/train.yaml.

Needs no pytest: tools put the repository root on sys.path and ``from tests.support.tiny import ...``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from tests.support.cli import REPO, cli_env

TINY_CONFIG = REPO / "configs" / "tiny" / "train.yaml"


def tiny_config(*overrides: str):
    """configs/tiny/train.yaml with KEY=VALUE ``overrides`` (an AsteroidConfig)."""
    from asteroid_hpc.config import load_config

    return load_config(TINY_CONFIG, overrides)


def tiny_model_config(**changes):
    """The tiny config's ``model`` section with ``changes`` (ModelConfig fields) applied."""
    return dataclasses.replace(tiny_config().model, **changes)


def tiny_model_file(path: str | os.PathLike, seed: int = 0, **changes) -> Path:
    """An untrained tiny ASTEROID (torch seeded with ``seed``) saved with save_weights."""
    import torch

    from asteroid_hpc.model import build_model, save_weights

    torch.manual_seed(seed)
    return save_weights(build_model(tiny_model_config(**changes)), path)


def small_ethanol_trajectory(path: str | os.PathLike) -> Path:
    """A 240-frame GFN2-xTB ethanol trajectory (seed 1, 1 fs per frame), generated once into ``path``
    (a few seconds)."""
    from asteroid_hpc.datagen.generate import XtbRunSpec, generate_xtb_netcdf

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = XtbRunSpec("ethanol", 240, seed=1, thermalize_steps=200, stride=2, chunk_frames=240)
        generate_xtb_netcdf(spec, path, progress=False)
    return path


def make_tiny_dataset(root: Path) -> Path:
    """The small ethanol trajectory preprocessed with the tiny config by the CLI. Cached in ``root``."""
    dataset = root / "ethanol-tiny"
    if (dataset / "manifest.json").is_file():
        return dataset
    trajectory = small_ethanol_trajectory(root / "ethanol.nc")
    proc = subprocess.run([sys.executable, "-m", "asteroid_hpc", "preprocess", str(trajectory), "-o", str(dataset),
                           "--config", str(TINY_CONFIG), "--no-progress"], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"preprocessing the tiny dataset failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dataset
