"""CPU cost of a forecast frame against the GFN2-xTB MD steps it replaces (docs/method.md §5), in one run.

A forecast frame at stride s replaces s MD steps of the engine that generated the data. Both sides are
measured in the same process on one thread (OMP_NUM_THREADS=1 for tblite, ``torch.set_num_threads(1)``),
as CPU seconds (``time.process_time``). The xTB steps also produce the history the model forecasts from.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..logs import get_logger

log = get_logger(__name__)

FS_PER_PS = 1000.0


@dataclass
class CostReport:
    """Measured CPU seconds; ``*_per_ps`` are per simulated picosecond."""

    molecule: str
    n_atoms: int
    timestep_fs: float
    stride_steps: int  # MD steps per forecast frame
    md_steps_timed: int
    xtb_cpu_seconds_per_step: float
    forecast_frames_timed: int
    batch_size: int  # trajectories forecast together (cost is per frame of one trajectory)
    model_cpu_seconds_per_frame: float
    model_parameters: int
    history_frames: int

    @property
    def xtb_cpu_seconds_per_frame(self) -> float:
        return self.xtb_cpu_seconds_per_step * self.stride_steps

    @property
    def speedup(self) -> float:
        return self.xtb_cpu_seconds_per_frame / self.model_cpu_seconds_per_frame

    @property
    def frames_per_ps(self) -> float:
        return FS_PER_PS / (self.stride_steps * self.timestep_fs)

    def as_dict(self) -> dict:
        return {**asdict(self), "xtb_cpu_seconds_per_frame": self.xtb_cpu_seconds_per_frame,
                "xtb_cpu_seconds_per_ps": self.xtb_cpu_seconds_per_frame * self.frames_per_ps,
                "model_cpu_seconds_per_ps": self.model_cpu_seconds_per_frame * self.frames_per_ps,
                "speedup": self.speedup, "host": platform.node(), "processor": platform.processor()}

    def markdown(self) -> str:
        rows = [("GFN2-xTB MD (tblite + ASE)", self.xtb_cpu_seconds_per_frame,
                 self.xtb_cpu_seconds_per_frame * self.frames_per_ps),
                ("ASTEROID forecast", self.model_cpu_seconds_per_frame,
                 self.model_cpu_seconds_per_frame * self.frames_per_ps)]
        lines = [f"{self.molecule} ({self.n_atoms} atoms), one frame = {self.stride_steps} MD steps of "
                 f"{self.timestep_fs:g} fs; one CPU thread; model batch {self.batch_size}", "",
                 "| engine | CPU s per frame | CPU s per simulated ps |", "|---|---|---|"]
        lines += [f"| {name} | {frame:.3e} | {ps:.3e} |" for name, frame, ps in rows]
        lines += ["", f"speed-up of the forecast: {self.speedup:.1f}x"]
        return "\n".join(lines) + "\n"


def measure_cost(model_path: str | os.PathLike, molecule: str, *, stride_steps: int, timestep_fs: float = 0.5,
                 forecast_frames: int = 50, batch_size: int = 1, repeats: int = 3, min_md_steps: int = 200,
                 temperature_K: float = 500.0,
                 thermalize_steps: int = 200, seed: int = 0) -> CostReport:
    """Time at least ``min_md_steps`` GFN2-xTB steps (their last frames are the model's history), then the
    model forecasting ``forecast_frames`` frames for ``batch_size`` trajectories (best of ``repeats``)."""
    import torch

    from ..datagen.molecules import get_molecule
    from ..datagen.threads import set_single_thread_env, single_threaded
    from ..datagen.xtb import run_nve_chunk, start_state
    from ..train.model_files import open_model

    set_single_thread_env()
    model = open_model(model_path)
    history_frames = model.cfg.history_frames
    mol = get_molecule(molecule)
    with single_threaded():
        atoms = start_state(molecule, seed=seed, temperature_K=temperature_K, timestep_fs=timestep_fs,
                            thermalize_steps=thermalize_steps)
        started = time.process_time()
        md_frames = max(history_frames, -(-min_md_steps // stride_steps) + 1)
        chunk = run_nve_chunk(atoms, first_frame=0, n_frames=md_frames, stride=stride_steps, timestep_fs=timestep_fs)
        xtb_seconds = time.process_time() - started
    xtb_per_step = xtb_seconds / chunk.steps
    log.info("GFN2-xTB: %d steps in %.2f CPU s (%.2f ms/step)", chunk.steps, xtb_seconds, 1e3 * xtb_per_step)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        history = torch.as_tensor(np.repeat(chunk.positions[None, -history_frames:], batch_size, axis=0), dtype=torch.float32)
        numbers = torch.as_tensor(mol.atomic_numbers, dtype=torch.long)
        model.forecast(history, numbers, forecast_frames)  # warm-up (allocations, neighbour list code paths)
        timings = []
        for _ in range(repeats):
            started = time.process_time()
            model.forecast(history, numbers, forecast_frames)
            timings.append(time.process_time() - started)
    finally:
        torch.set_num_threads(threads)
    model_per_frame = min(timings) / (forecast_frames * batch_size)
    log.info("ASTEROID: %d frames x %d trajectories in %.3f CPU s (best of %d)", forecast_frames, batch_size,
             min(timings), repeats)
    return CostReport(mol.name, mol.n_atoms, timestep_fs, stride_steps, chunk.steps, xtb_per_step, forecast_frames,
                      batch_size, model_per_frame, sum(p.numel() for p in model.parameters()), history_frames)
