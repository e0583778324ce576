"""Bring the frames an evaluation needs into memory, through the data layer's readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..logs import get_logger
from ..errors import user_error
from .protocols import MD17_FRAME_FS, Trajectory

log = get_logger(__name__)


def load_trajectory(path: str | os.PathLike, timestep_fs: float | None = None) -> Trajectory:
    """A whole trajectory file (AMBER NetCDF, npz or xyz) as positions [F, N, 3] float32 Å.

    The frame spacing comes from ``timestep_fs`` when given, else from the file's time axis, else it is
    taken to be MD17's 0.5 fs (logged).
    """
    from ..data.readers import TrajectoryReader

    path = Path(path)
    with TrajectoryReader(path) as reader:
        if reader.atomic_numbers is None:
            raise user_error(path, "no atomic numbers in the file (needed to pick heavy atoms and embed elements)")
        positions = np.asarray(reader.read(0, reader.n_frames).coordinates, dtype=np.float32)
        atomic_numbers = np.asarray(reader.atomic_numbers, dtype=np.int64)
        file_timestep_ps = reader.timestep_ps
    if timestep_fs is None:
        if file_timestep_ps is None or file_timestep_ps <= 0:
            log.warning("%s: no time axis; taking frames to be %g fs apart (MD17)", path, MD17_FRAME_FS)
            timestep_fs = MD17_FRAME_FS
        else:
            timestep_fs = round(file_timestep_ps * 1000.0, 3)  # float32 time axes carry rounding
    if len(positions) < 2:
        raise user_error(path, f"{len(positions)} frame(s): too short to evaluate")
    return Trajectory(positions, atomic_numbers, float(timestep_fs), str(path))
