"""CPU cost of a forecast frame against the GFN2-xTB MD steps it replaces (docs/method.md §5), in one run.

A forecast frame at stride s replaces s MD steps of the engine that generated the data. Both sides are
measured in the same process on one thread (OMP_NUM_THREADS=1 for tblite, ``torch.set_num_threads(1)``),
as CPU seconds (``time.process_time``). The xTB steps also produce the history the model forecasts from:
its last ``history_frames`` frames, ``stride`` steps apart, of the atoms the model sees (its training
selection, or the config's ``data.atom_selection``). The forecast is timed at one or more batch sizes
(trajectories forecast together, as ensemble members are); its cost is per frame of one trajectory.

A forecast's cost depends on the architecture, the atoms and the batch, not on the weight values, so a
config's ``model:`` section built with untrained weights (:class:`ConfigArchitecture`) times the model a
config trains without its weights.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from ..config.schema import AsteroidConfig, ModelConfig
from ..logs import get_logger

log = get_logger(__name__)

FS_PER_PS = 1000.0
AUTO_BATCH = 0  # in ``batch_sizes``: the batch ``auto_batch`` chooses (the ensemble's default)


@dataclass(frozen=True)
class ConfigArchitecture:
    """The model of ``config``'s ``model:`` section with untrained weights, for timing only; ``name`` (the
    config file) labels the report. Its atoms are ``data.atom_selection`` of the molecule; a
    ``reference_structure: training_mean`` model gets the first MD frame as its reference structure."""

    config: AsteroidConfig
    name: str

    @property
    def label(self) -> str:
        return f"architecture of {self.name}, untrained weights: timing only"


@dataclass
class BatchTiming:
    batch_size: int
    model_cpu_seconds_per_frame: float  # per frame of one trajectory (a member-frame)
    first_call_wall_seconds: Optional[float] = None  # the untimed first forecast (compiles, when compiled)


class ForecastTiming(NamedTuple):
    per_member_frame_s: float  # best of the repeats, CPU seconds per frame of one trajectory
    first_call_wall_s: float  # the warm-up call, wall seconds (torch.compile compiles here)


@dataclass
class CostReport:
    """Measured CPU seconds; ``*_per_ps`` are per simulated picosecond. ``batch_size`` and
    ``model_cpu_seconds_per_frame`` are the first batch timed, ``more_batches`` the others of the same run."""

    molecule: str
    n_atoms: int  # simulated by xTB
    timestep_fs: float
    stride_steps: int  # MD steps per forecast frame
    md_steps_timed: int
    xtb_cpu_seconds_per_step: float
    forecast_frames_timed: int
    batch_size: int  # trajectories forecast together (cost is per frame of one trajectory)
    model_cpu_seconds_per_frame: float
    model_parameters: int
    history_frames: int
    model_source: str = ""  # the weights file, or ConfigArchitecture.label
    untrained: bool = False  # True: a config's architecture with untrained weights (timing only)
    model_atoms: Optional[int] = None  # atoms the model sees (None: all n_atoms)
    more_batches: list[BatchTiming] = field(default_factory=list)
    compiled: bool = False  # the model's blocks through torch.compile (asteroid_hpc.model.compiled)
    first_call_wall_seconds: Optional[float] = None  # of the first batch timed

    @property
    def xtb_cpu_seconds_per_frame(self) -> float:
        return self.xtb_cpu_seconds_per_step * self.stride_steps

    @property
    def speedup(self) -> float:
        return self.xtb_cpu_seconds_per_frame / self.model_cpu_seconds_per_frame

    @property
    def frames_per_ps(self) -> float:
        return FS_PER_PS / (self.stride_steps * self.timestep_fs)

    @property
    def batches(self) -> list[BatchTiming]:
        return [BatchTiming(self.batch_size, self.model_cpu_seconds_per_frame, self.first_call_wall_seconds),
                *self.more_batches]

    def as_dict(self) -> dict:
        record = {**asdict(self), "xtb_cpu_seconds_per_frame": self.xtb_cpu_seconds_per_frame,
                  "xtb_cpu_seconds_per_ps": self.xtb_cpu_seconds_per_frame * self.frames_per_ps,
                  "model_cpu_seconds_per_ps": self.model_cpu_seconds_per_frame * self.frames_per_ps,
                  "speedup": self.speedup, "host": platform.node(), "processor": platform.processor(),
                  "load_average_1min": os.getloadavg()[0]}
        record.pop("more_batches")
        record["batches"] = [{**asdict(b), "model_cpu_seconds_per_ps": b.model_cpu_seconds_per_frame * self.frames_per_ps,
                              "speedup": self.xtb_cpu_seconds_per_frame / b.model_cpu_seconds_per_frame}
                             for b in self.batches]
        return record

    def markdown(self) -> str:
        per_ps = self.frames_per_ps
        atoms = f"{self.n_atoms} atoms" if self.model_atoms in (None, self.n_atoms) else \
            f"{self.n_atoms} atoms simulated, {self.model_atoms} seen by the model"
        lines = [f"{self.molecule} ({atoms}), one frame = {self.stride_steps} MD steps of {self.timestep_fs:g} fs; "
                 f"one CPU thread", f"model: {self.model_source} ({self.model_parameters} parameters)", "",
                 "| engine | CPU s per frame | CPU s per simulated ps | forecast speed-up |", "|---|---|---|---|",
                 f"| GFN2-xTB MD (tblite + ASE) | {self.xtb_cpu_seconds_per_frame:.3e} | "
                 f"{self.xtb_cpu_seconds_per_frame * per_ps:.3e} | |"]
        lines += [f"| ASTEROID forecast, batch {b.batch_size} (per member-frame) | {b.model_cpu_seconds_per_frame:.3e} "
                  f"| {b.model_cpu_seconds_per_frame * per_ps:.3e} | "
                  f"{self.xtb_cpu_seconds_per_frame / b.model_cpu_seconds_per_frame:.1f}x |" for b in self.batches]
        lines += ["", f"speed-up of the forecast: {self.speedup:.1f}x (batch {self.batch_size})"]
        if self.compiled:
            first = self.first_call_wall_seconds or 0.0
            member_ps = first / (self.model_cpu_seconds_per_frame * per_ps)
            lines += [f"blocks compiled (torch.compile): the first forecast call took {first:.1f} s wall (compiling), "
                      f"as long as the batch-{self.batch_size} forecast of {member_ps:.0f} member-ps"]
        return "\n".join(lines) + "\n"


@dataclass
class _XtbRun:
    positions: np.ndarray  # [frames, N, 3] Å, stride steps apart
    steps: int
    cpu_seconds: float


def _run_xtb(molecule: str, *, frames: int, stride_steps: int, timestep_fs: float, temperature_K: float,
             thermalize_steps: int, seed: int) -> _XtbRun:
    from ..datagen.threads import single_threaded
    from ..datagen.xtb import run_nve_chunk, start_state

    with single_threaded():
        atoms = start_state(molecule, seed=seed, temperature_K=temperature_K, timestep_fs=timestep_fs,
                            thermalize_steps=thermalize_steps)
        started = time.process_time()
        chunk = run_nve_chunk(atoms, first_frame=0, n_frames=frames, stride=stride_steps, timestep_fs=timestep_fs)
        seconds = time.process_time() - started
    log.info("GFN2-xTB: %d steps in %.2f CPU s (%.2f ms/step)", chunk.steps, seconds, 1e3 * seconds / chunk.steps)
    return _XtbRun(chunk.positions, chunk.steps, seconds)


def _saved_model(path, molecule: str, numbers: np.ndarray):
    """The model of weights ``path`` and the indices of its atoms in the molecule (None: all)."""
    from ..data.signature import check_against_model, model_atoms
    from ..train.model_files import open_model

    model = open_model(path)
    check_against_model(model.data_signature, numbers, None, molecule, path, allow_mismatch=False)
    return model, model_atoms(model.data_signature, len(numbers))


def _config_model(source: ConfigArchitecture, molecule: str, numbers: np.ndarray, first_frame: np.ndarray,
                  seed: int):
    """The untrained model of ``source`` and the indices of its atoms (``data.atom_selection``)."""
    import torch

    from ..data.selection import select_atoms
    from ..model import build_model

    indices = np.asarray(select_atoms(source.config.data.atom_selection, numbers, molecule), dtype=np.int64)
    reference = first_frame[indices] if source.config.model.reference_structure == "training_mean" else None
    torch.manual_seed(seed)
    return build_model(source.config.model, reference).eval(), indices


def time_forecast_frames(model, history: np.ndarray, numbers: np.ndarray, *, frames: int, batch_size: int,
                         repeats: int, **forecast_keywords) -> ForecastTiming:
    """Best of ``repeats`` CPU seconds per member-frame, ``batch_size`` copies of ``history`` [K, N, 3]
    (``forecast_keywords``: the model's ``forecast`` keywords, e.g. ``cell``, ``constraints``), on one torch
    thread (restored after), after an untimed first call (its wall time reported)."""
    import torch

    batch = torch.as_tensor(np.repeat(history[None], batch_size, axis=0), dtype=torch.float32)
    elements = torch.as_tensor(numbers, dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.monotonic()
        model.forecast(batch, elements, frames, **forecast_keywords)  # warm-up (allocations, code paths, compiling)
        first_call = time.monotonic() - started
        timings = []
        for _ in range(repeats):
            started = time.process_time()
            model.forecast(batch, elements, frames, **forecast_keywords)
            timings.append(time.process_time() - started)
    finally:
        torch.set_num_threads(threads)
    log.info("ASTEROID: %d frames x %d trajectories in %.3f CPU s (best of %d)", frames, batch_size, min(timings),
             repeats)
    return ForecastTiming(min(timings) / (frames * batch_size), first_call)


def measure_cost(model: str | os.PathLike | ConfigArchitecture, molecule: str, *, stride_steps: int,
                 timestep_fs: float = 0.5, forecast_frames: int = 50, batch_sizes: Sequence[int] = (1,),
                 repeats: int = 3, min_md_steps: int = 200, temperature_K: float = 500.0,
                 thermalize_steps: int = 200, seed: int = 0,
                 auto_batch: Optional[Callable[[ModelConfig, int], int]] = None,
                 compiled: bool = False) -> CostReport:
    """Time at least ``min_md_steps`` GFN2-xTB steps (their last frames are the model's history), then the
    model (weights file, or a config's untrained architecture) forecasting ``forecast_frames`` frames at
    each of ``batch_sizes`` (best of ``repeats``; ``AUTO_BATCH``: ``auto_batch(model config, model atoms)``);
    ``compiled``: its blocks through torch.compile (the first call's wall time, compiling, is reported)."""
    from ..datagen.molecules import get_molecule
    from ..datagen.threads import set_single_thread_env

    set_single_thread_env()
    mol = get_molecule(molecule)
    numbers = mol.atomic_numbers
    untrained = isinstance(model, ConfigArchitecture)
    if untrained:  # built after the MD: a reference structure is its first frame
        history_frames = model.config.model.history_frames
    else:
        net, indices = _saved_model(model, molecule, numbers)
        history_frames = net.cfg.history_frames
    md_frames = max(history_frames, -(-min_md_steps // stride_steps) + 1)
    xtb = _run_xtb(molecule, frames=md_frames, stride_steps=stride_steps, timestep_fs=timestep_fs,
                   temperature_K=temperature_K, thermalize_steps=thermalize_steps, seed=seed)
    if untrained:
        net, indices = _config_model(model, molecule, numbers, xtb.positions[0], seed)
    indices = np.arange(len(numbers)) if indices is None else indices
    history = xtb.positions[-history_frames:, indices]
    sizes = [auto_batch(net.cfg, len(indices)) if b == AUTO_BATCH else b for b in batch_sizes]
    if compiled:
        from ..model.compiled import compile_blocks

        compile_blocks(net)
    timings = [BatchTiming(b, *time_forecast_frames(net, history, numbers[indices], frames=forecast_frames,
                                                    batch_size=b, repeats=repeats)) for b in sizes]
    return CostReport(mol.name, mol.n_atoms, timestep_fs, stride_steps, xtb.steps, xtb.cpu_seconds / xtb.steps,
                      forecast_frames, timings[0].batch_size, timings[0].model_cpu_seconds_per_frame,
                      sum(p.numel() for p in net.parameters()), history_frames,
                      model.label if untrained else str(model), untrained, len(indices), timings[1:], compiled,
                      timings[0].first_call_wall_seconds)
