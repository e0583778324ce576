"""``asteroid-hpc evaluate`` end to end: load, sample, forecast, score, write."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from ..logs import get_logger
from ..errors import user_error
from .report import results_markdown, write_outputs
from .protocols import PROTOCOL_HISTORY_FRAMES
from .run import ProtocolResult, build_samples, evaluate_samples

NO_MODEL = "none"  # MODEL argument that scores the baselines alone

log = get_logger(__name__)


def evaluate_to_directory(model_path: str | os.PathLike, data_paths, out_dir: str | os.PathLike,
                          protocols: list[str], *, split: str = "test", history_frames: int | None = None,
                          max_samples: int | None = None, seed: int = 0, a_history_stride_frames: int = 375,
                          a_heavy_input: bool = True, horizon_frames: int = 10, timestep_fs: float | None = None,
                          batch_size: int = 64, command_line: str = "") -> tuple[list[ProtocolResult], dict, str]:
    """Evaluate the exported model at ``model_path`` on ``data_paths`` (one path, or a list) with each
    protocol; write results.md, results.json and error_vs_lead_time.png into ``out_dir``. Returns the
    results, the output paths and the markdown text. ``model_path="none"`` scores the baselines alone
    (history: ``history_frames``, else the protocol's own count). Several trajectory files (of one
    molecule) are scored together: each protocol's samples of every file, pooled, plus each file alone."""
    from .model_io import load_model, resolve_weights

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise user_error(out, "output path exists and is not a directory")
    model = None if str(model_path) == NO_MODEL else load_model(model_path)
    if model is None:
        model_history = history_frames or PROTOCOL_HISTORY_FRAMES["C"]
    else:
        model_history = model.cfg.history_frames
    if model is not None and history_frames is not None and history_frames != model_history:
        raise user_error(resolve_weights(model_path), f"the model takes {model_history} history frames, "
                                                      f"--history-frames asked for {history_frames}")
    data_paths = [data_paths] if isinstance(data_paths, (str, os.PathLike)) else list(data_paths)
    results = []
    if "window" in protocols:
        from .windows import window_samples

        if len(data_paths) != 1:
            raise user_error(data_paths[1], "protocol window takes one dataset directory")
        samples = window_samples(data_paths[0], split=split, history_frames=model_history,
                                 horizon_frames=horizon_frames, max_samples=max_samples, seed=seed)
        results.append(evaluate_samples(model, samples, batch_size=batch_size))
    trajectory_protocols = [p for p in protocols if p != "window"]
    if trajectory_protocols:
        from .protocols import pool_samples
        from .trajectory import load_trajectory

        per_file: dict[str, list] = {protocol: [] for protocol in trajectory_protocols}
        for data_path in data_paths:
            traj = load_trajectory(data_path, timestep_fs)
            log.info("%s: %d frames of %d atoms, %g fs apart", data_path, len(traj.positions),
                     traj.positions.shape[1], traj.frame_fs)
            for protocol in trajectory_protocols:
                per_file[protocol].append(build_samples(
                    protocol, traj, split=split, history_frames=model_history, max_samples=max_samples, seed=seed,
                    a_history_stride_frames=a_history_stride_frames, a_heavy_input=a_heavy_input))
        for protocol, parts in per_file.items():
            samples = pool_samples(parts, [str(p) for p in data_paths])
            results.append(evaluate_samples(model, samples, batch_size=batch_size))
    data = str(data_paths[0]) if len(data_paths) == 1 else [str(p) for p in data_paths]
    header = {"model": str(model_path), "data": data, "command": command_line,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model_config": None if model is None else _model_config(model)}
    paths = write_outputs(results, out, header)
    return results, paths, results_markdown(results, header)


def _model_config(model) -> dict:
    from dataclasses import asdict

    return asdict(model.cfg)
