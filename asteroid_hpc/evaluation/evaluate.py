"""``asteroid-hpc evaluate`` end to end: load, sample, forecast, score, write."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from ..config.schema import AsteroidConfig
from ..logs import get_logger
from ..errors import UserError, user_error
from .report import results_markdown, write_outputs
from .run import ProtocolResult, build_samples, evaluate_samples

NO_MODEL = "none"  # MODEL argument that scores the baselines alone
TRAJECTORY_PROTOCOLS = ("A", "B", "C")  # read a trajectory file and make their own splits
LONG_ROLLOUT = "L"  # long free-running rollouts against the trajectory files' MD (asked for, never a default)

log = get_logger(__name__)


def choose_protocols(requested: list[str], data_paths: list[Path]) -> list[str]:
    """The protocols to run: ``requested`` (checked against the inputs), else A, B and C for trajectory files
    and window for a preprocessed dataset directory."""
    directories = [path for path in data_paths if path.is_dir()]
    if directories and len(data_paths) > 1:
        raise user_error(directories[0], "a dataset directory is evaluated alone (protocol window); pass it "
                                         "without other inputs")
    chosen = list(dict.fromkeys(requested)) or (["window"] if directories else list(TRAJECTORY_PROTOCOLS))
    if directories and any(p in TRAJECTORY_PROTOCOLS for p in chosen):
        raise user_error(data_paths[0], "protocols A, B and C make their own splits: pass the trajectory file, not a "
                                        "dataset directory")
    if directories and LONG_ROLLOUT in chosen:
        raise user_error(data_paths[0], "protocol L reads trajectory files (the reference MD), not a dataset directory")
    if not directories and "window" in chosen:
        raise user_error(data_paths[0], "protocol window needs a preprocessed dataset directory")
    return chosen


def evaluate_to_directory(model_path: str | os.PathLike, data_paths, out_dir: str | os.PathLike,
                          cfg: AsteroidConfig | None = None, *, command_line: str = "",
                          topology: str | None = None,
                          allow_mismatch: bool = False) -> tuple[list[ProtocolResult], dict, str]:
    """Evaluate MODEL ``model_path`` (see :func:`asteroid_hpc.train.model_files.open_model`) on ``data_paths``
    (one path, or a list) with the protocols and settings of ``cfg.evaluate``; write results.md, results.json,
    error_vs_lead_time.png and config.resolved.yaml into ``out_dir``. Returns the results, the output paths
    and the markdown text. The model is given its own number of history frames; ``model_path="none"`` scores
    the baselines alone, given ``cfg.evaluate.baseline_history_frames``. Several trajectory files (of one
    molecule) are scored together: each protocol's samples of every file, pooled, plus each file alone."""
    from ..config.resolved import write_resolved_config
    from ..runtime.launch import detect_launch
    from ..train.model_files import open_model

    cfg = cfg or AsteroidConfig()
    settings = cfg.evaluate
    data_paths = [data_paths] if isinstance(data_paths, (str, os.PathLike)) else list(data_paths)
    protocols = choose_protocols(settings.protocols, [Path(p) for p in data_paths])
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise user_error(out, "output path exists and is not a directory")
    if LONG_ROLLOUT in protocols and str(model_path) == NO_MODEL:
        raise user_error(model_path, "protocol L rolls a model out; it has no baseline-only form")
    model = None if str(model_path) == NO_MODEL else open_model(model_path)
    history_frames = settings.baseline_history_frames if model is None else model.cfg.history_frames
    sampling = dict(split=settings.split, history_frames=history_frames, max_samples=settings.max_samples,
                    seed=settings.seed)
    results, long_result = [], None
    if "window" in protocols:
        results.append(_evaluate_windows(model, data_paths, settings, sampling))
    if any(p in TRAJECTORY_PROTOCOLS or p == LONG_ROLLOUT for p in protocols):
        loading = dict(topology=topology, model=model_path, allow_mismatch=allow_mismatch,
                       signature=getattr(model, "data_signature", None))
        trajectory_results, long_result = _evaluate_trajectories(model, data_paths, protocols, settings, sampling,
                                                                 loading)
        results.extend(trajectory_results)
    data = str(data_paths[0]) if len(data_paths) == 1 else [str(p) for p in data_paths]
    header = {"model": str(model_path), "data": data, "command": command_line,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "model_config": None if model is None else _model_config(model)}
    paths = write_outputs(results, out, header, long_result)
    paths["config"] = write_resolved_config(cfg, out, detect_launch())
    return results, paths, results_markdown(results, header, long_result)


def _evaluate_windows(model, data_paths, settings, sampling) -> ProtocolResult:
    """Protocol window: the windows of one preprocessed dataset directory."""
    from .windows import window_samples

    if len(data_paths) != 1:
        raise user_error(data_paths[1], "protocol window takes one dataset directory")
    samples = window_samples(data_paths[0], horizon_frames=settings.horizon_frames, **sampling)
    return evaluate_samples(model, samples, **_scoring(settings))


def _evaluate_trajectories(model, data_paths, protocols, settings, sampling, loading: dict | None = None):
    """Protocols A, B, C (each file's samples pooled, plus each file alone) and L on trajectory files:
    (results of A/B/C, the long-rollout result or None). ``loading``: keywords of ``load_trajectory``
    (topology, the model's data signature and whether a mismatch with it is allowed)."""
    from .protocols import pool_samples
    from .trajectory import load_trajectory

    trajectory_protocols = [p for p in protocols if p in TRAJECTORY_PROTOCOLS]
    per_file: dict[str, list] = {protocol: [] for protocol in trajectory_protocols}
    trajectories, fingerprints = [], []
    for data_path in data_paths:
        traj = load_trajectory(data_path, settings.timestep_fs, **(loading or {}))
        log.info("%s: %d frames of %d atoms, %g fs apart", data_path, len(traj.positions),
                 traj.positions.shape[1], traj.frame_fs)
        fingerprints.append(_fingerprint(model, data_path))
        if LONG_ROLLOUT in protocols:
            trajectories.append(traj)
        for protocol in trajectory_protocols:
            per_file[protocol].append(build_samples(
                protocol, traj, a_history_stride_frames=settings.a_history_stride_frames,
                a_heavy_input=settings.a_input == "heavy",
                a_frames=None if settings.a_frames is None else tuple(settings.a_frames), **sampling))
    results = []
    for protocol, parts in per_file.items():
        samples = pool_samples(parts, [str(p) for p in data_paths])
        results.append(evaluate_samples(model, samples, **_scoring(settings)))
        if model is not None:
            results[-1].training_overlap = _training_overlap(model, data_paths, fingerprints, parts)
    long_result = None
    if LONG_ROLLOUT in protocols:
        _check_rollout_spacing(model, settings, loading or {})
        if trajectories[0].cell is not None:
            from .periodic_protocol import periodic_long_rollout as run_long_rollout
        else:
            from .long_rollout import long_rollout as run_long_rollout
        long_result = run_long_rollout(model, trajectories, settings, batch_size=settings.batch_size)
    return results, long_result



def _check_rollout_spacing(model, settings, loading: dict) -> None:
    """Protocol L steps the model at ``evaluate.long_rollout_stride_fs``: refuse a spacing other than the
    one it was trained at (its data signature), unless a mismatch is allowed; older models are not checked."""
    from ..data.signature import SPACING_TOLERANCE

    trained_fs = (getattr(model, "data_signature", None) or {}).get("timestep_fs")
    asked_fs = float(settings.long_rollout_stride_fs)
    if trained_fs is None or abs(asked_fs - trained_fs) <= SPACING_TOLERANCE * trained_fs:
        return
    message = (f"{loading.get('model', 'the model')}: the model steps {trained_fs:g} fs (its training frames) but "
               f"protocol L asks for frames {asked_fs:g} fs apart; set evaluate.long_rollout_stride_fs={trained_fs:g}")
    if not loading.get("allow_mismatch"):
        raise UserError(message)
    log.warning("%s (--allow-mismatch: going on)", message)


def _scoring(settings) -> dict:
    """The keywords of :func:`evaluate_samples` from ``evaluate.*``: batch size, members and their seed."""
    return {"batch_size": settings.batch_size, "members": settings.members, "seed": settings.seed}


def _fingerprint(model, data_path) -> str | None:
    """The blake3 of ``data_path`` when the model records the inputs it was trained on, else None."""
    if model is None or not getattr(model, "training_data", None):
        return None
    from ..checksum import file_digest

    return file_digest(data_path, "blake3")


def _training_overlap(model, data_paths, fingerprints, parts) -> list[dict]:
    """Per trajectory: how close its starts lie to the model's training windows (data.coverage)."""
    from ..data.coverage import distance_to_training

    return [{"source": str(path), **distance_to_training(getattr(model, "training_data", None), fingerprint,
                                                         samples.start_frames)}
            for path, fingerprint, samples in zip(data_paths, fingerprints, parts)]


def _model_config(model) -> dict:
    from dataclasses import asdict

    return asdict(model.cfg)
