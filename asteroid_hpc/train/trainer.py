"""The training loop: DeepSpeed engine, STI losses, validation, checkpoints, stop signals.

One function, :func:`train`, does the whole run the same way on 1 or many ranks, whatever the launcher.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import __version__
from ..config import AsteroidConfig, config_hash, to_dict
from ..runtime import signals
from ..logs import get_logger, setup_logging
from ..config.resolved import write_resolved_config
from ..errors import UserError
from . import session as dist_session
from .batches import BatchStream
from .checkpoint import CLIENT_STATE, CheckpointManager, check_compatible, check_one_line, read_json, resolve_resume
from .ds_config import build_deepspeed_config
from .metrics import MetricsWriter, Progress
from .validate import per_lead_mse, validation_indices

log = get_logger(__name__)

LOSS_TERMS = ("primary", "conjugate", "consistency", "forecast")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by: str  # "max_steps", "signal" or "early_stopping"
    checkpoint: Optional[Path]
    best_val_mse: Optional[float] = None
    losses: list[float] = field(default_factory=list)  # total loss of each step run in this process


def _lr_lambda(warmup_steps: int, decay_steps: int):
    """Linear warm-up, then cosine decay to 10 % of the peak at ``decay_steps`` (constant after)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _memory_mb(device: str) -> dict:
    import psutil
    import torch

    out = {"rss_mb": psutil.Process().memory_info().rss / 2**20}
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _optimizer_step(engine, stream: BatchStream, t, device: str, dtype, want_grad_norm: bool):
    """One optimizer step over ``t.grad_accum_steps`` micro-batches.

    Returns this rank's mean [total, *LOSS_TERMS] (float64, CPU) and, when asked and DeepSpeed does not
    record it, the gradient norm before clipping.
    """
    import torch

    from ..model import sti_losses

    sums = torch.zeros(len(LOSS_TERMS) + 1, dtype=torch.float64)
    own_norm = None
    for micro in range(t.grad_accum_steps):
        batch = stream.next()
        history = batch["history"].to(device=device, dtype=dtype)
        target = batch["target"].to(device=device, dtype=dtype)
        teacher = target if t.teacher_forcing else None  # None: the loss sees the model's own rollout
        output = engine(history, batch["atomic_numbers"].to(device), target.shape[1], teacher)
        total, parts = sti_losses(output, history, target, t.loss_weights)
        engine.backward(total)
        if want_grad_norm and micro == t.grad_accum_steps - 1:
            own_norm = _plain_grad_norm(engine)
        engine.step()
        sums += torch.tensor([float(total.detach())] + [float(parts[k]) for k in LOSS_TERMS], dtype=torch.float64)
    return sums / t.grad_accum_steps, own_norm


def _plain_grad_norm(engine) -> Optional[float]:
    """Global gradient 2-norm before clipping, for ZeRO-0 in fp32 (where DeepSpeed does not record it):
    its gradients are whole and already averaged over ranks after the boundary ``backward``."""
    import torch

    if engine.zero_optimization_stage() != 0:
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def _seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _open_datasets(cfg: AsteroidConfig):
    from ..data import WindowDataset

    _require_dataset(cfg)
    m, horizon = cfg.model.history_frames, cfg.data.horizon_frames
    train_set = WindowDataset(cfg.data.dataset, "train", m, horizon, window_stride=cfg.data.window_stride)
    val_set = WindowDataset(cfg.data.dataset, "val", m, horizon, window_stride=cfg.data.window_stride)
    return train_set, val_set


def _require_dataset(cfg: AsteroidConfig) -> None:
    if not cfg.data.dataset:
        raise UserError("data.dataset is not set: point it at a `asteroid-hpc preprocess` output directory")


def _fill_reference_structure(cfg: AsteroidConfig) -> None:
    """model.reference_structure=training_mean: the dataset's training mean structure into the model config
    (deterministic, so a resumed run computes the same and the checkpoint check passes)."""
    if cfg.model.reference_structure == "training_mean" and not cfg.model.reference_coordinates:
        from ..data.reference import training_mean_structure

        _require_dataset(cfg)
        mean = training_mean_structure(cfg.data.dataset, cfg.data.stats_max_frames or 4096)
        cfg.model.reference_coordinates = [[round(float(v), 6) for v in row] for row in mean]
        log.info("reference structure: the mean of the training frames of %s (%d atoms)", cfg.data.dataset,
                 len(mean))


def _startup_summary(cfg: AsteroidConfig, sess, ds_config: dict, run_dir: Path, summary: dict,
                     n_train: int, n_val: int, resume_from: Optional[Path]) -> None:
    from ..provenance import startup_summary

    t = cfg.train
    log.info("%s", startup_summary(sess.info, device=sess.device, config_hash=config_hash(cfg), run_dir=run_dir, extra={
        "training": f"backend {sess.backend}, precision {sess.precision}, ZeRO stage {t.zero_stage}, "
                    f"{sess.threads} CPU threads per rank",
        "model": f"{summary['parameters']:.0f} parameters, {summary['flops_per_forecast_frame']:.3g} FLOPs per "
                 f"forecast frame ({summary['n_atoms_probed']:.0f} atoms probed)",
        "data": f"{n_train} training / {n_val} validation windows from {cfg.data.dataset}",
        "batch": f"{t.micro_batch_size} per rank × {t.grad_accum_steps} accumulation × {sess.world_size} ranks "
                 f"= {ds_config['train_batch_size']} windows per step; {t.max_steps} steps",
        "resume": f"from {resume_from}" if resume_from else "fresh start",
    }))


def train(cfg: AsteroidConfig, resume: str = "auto") -> TrainResult:
    """Train ASTEROID with DeepSpeed as configured; ``resume`` is ``auto``, ``never`` or a checkpoint path."""
    sess = dist_session.start(cfg.train)
    engine = None
    clean = False
    previous_handlers = signals.install_stop_handlers()
    try:
        result, engine = _run(cfg, resume, sess)
        clean = True
        return result
    finally:
        signals.restore_handlers(previous_handlers)
        dist_session.teardown(engine, clean=clean)


def _run(cfg: AsteroidConfig, resume: str, sess):
    import deepspeed
    import torch
    import torch.distributed as dist

    from ..data import DistributedWindowSampler
    from ..model import build_model, model_summary

    t = cfg.train
    run_dir = Path(t.run_dir)
    setup_logging(sess.info, log_dir=run_dir / "logs")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if sess.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    manager = CheckpointManager(run_dir / "checkpoints", t.keep_last, sess.rank, barrier=dist.barrier)
    resume_from = resolve_resume(resume, manager)
    if resume_from is None and resume == "auto":
        log.warning("no complete checkpoint in %s: STARTING FROM SCRATCH", manager.directory)
    check_one_line(manager, resume_from)
    _fill_reference_structure(cfg)
    if resume_from is not None:  # refuse before any expensive set-up
        check_compatible(resume_from, read_json(resume_from / CLIENT_STATE), to_dict(cfg.model),
                         sess.world_size, t.zero_stage)

    train_set, val_set = _open_datasets(cfg)
    _seed_all(t.seed)  # the same initial weights on every rank
    model = build_model(cfg.model)
    summary = model_summary(model)
    _seed_all(t.seed + 1000 * sess.rank)  # per-rank streams (rotation augmentation)

    ds_config = build_deepspeed_config(t, sess.world_size, sess.precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(t.warmup_steps, t.lr_decay_steps or t.max_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    device = sess.device
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[sess.precision]

    sampler = DistributedWindowSampler(train_set, rank=sess.rank, world_size=sess.world_size, seed=t.seed,
                                       shuffle=True, drop_last=True)
    stream = BatchStream(train_set, sampler, t.micro_batch_size, cfg.data.num_workers, where=cfg.data.dataset)
    val_indices = validation_indices(len(val_set), t.val_batches * t.micro_batch_size, sess.rank,
                                     sess.world_size)
    if not val_indices:
        log.warning("the validation split of %s is empty or smaller than the world size: no validation",
                    cfg.data.dataset)

    step, best_val, bad_validations = 0, math.inf, 0
    if resume_from is not None:
        state = manager.load(engine, resume_from)
        step = int(state["step"])
        stream.load_state_dict(state["sampler"])
        best_val = state.get("best_val_mse") if state.get("best_val_mse") is not None else math.inf
        bad_validations = int(state.get("bad_validations", 0))
        if state.get("config_hash") != config_hash(cfg):
            log.info("resuming with a changed config (hash %s -> %s); the model's shape is unchanged",
                     state.get("config_hash"), config_hash(cfg))

    if sess.rank == 0:
        _startup_summary(cfg, sess, ds_config, run_dir, summary, len(train_set), len(val_set), resume_from)
        write_resolved_config(cfg, run_dir, sess.info)
    metrics = MetricsWriter(run_dir, enabled=sess.rank == 0, resume_step=step if resume_from else None)
    progress = Progress(t.max_steps, step, enabled=sess.rank == 0, every=t.log_every)

    def client_state() -> dict:
        return {"epoch": stream.epoch, "sampler": stream.state_dict(), "config": to_dict(cfg),
                "config_hash": config_hash(cfg), "package_version": __version__, "world_size": sess.world_size,
                "zero_stage": t.zero_stage, "best_val_mse": None if math.isinf(best_val) else best_val,
                "bad_validations": bad_validations}

    samples_per_step = ds_config["train_batch_size"]
    stopped_by, last_saved, losses = "max_steps", None, []
    window_start, window_steps = time.perf_counter(), 0
    engine.train()
    try:
        while step < t.max_steps:
            log_now = (step + 1) % t.log_every == 0 or step + 1 == t.max_steps
            sums, own_norm = _optimizer_step(engine, stream, t, device, dtype, want_grad_norm=log_now)
            step += 1
            window_steps += 1

            # one collective per step: the loss terms (summed, then averaged) and the stop flag (any rank)
            flag = torch.tensor([float(signals.stop_requested())], dtype=torch.float64)
            reduced = torch.cat([sums, flag]).to(device)
            dist.all_reduce(reduced)
            stop = bool(reduced[-1].item() > 0)
            reduced = (reduced[:-1] / sess.world_size).cpu().tolist()
            losses.append(reduced[0])

            if log_now or stop:
                elapsed = time.perf_counter() - window_start
                samples_per_s = window_steps * samples_per_step / max(elapsed, 1e-9)
                grad_norm = engine.get_global_grad_norm()
                grad_norm = own_norm if grad_norm is None else grad_norm
                metrics.write({"kind": "train", "step": step, "loss": reduced[0],
                               **{k: v for k, v in zip(LOSS_TERMS, reduced[1:])},
                               "lr": engine.get_lr()[0],
                               "grad_norm": None if grad_norm is None else float(grad_norm),
                               "samples_per_s": samples_per_s, "epoch": stream.epoch, **_memory_mb(device)})
                progress.update(step, reduced[0], samples_per_s)
                window_start, window_steps = time.perf_counter(), 0

            save_now = step % t.checkpoint_every == 0 or step == t.max_steps or stop
            improved = False
            if step % t.val_every == 0 and val_indices:
                mse = per_lead_mse(engine, val_set, val_indices, t.micro_batch_size, cfg.data.horizon_frames,
                                   device, dtype)
                mean_mse = float(mse.mean())
                improved = mean_mse < best_val
                if improved:
                    best_val, bad_validations = mean_mse, 0
                else:
                    bad_validations += 1
                metrics.write({"kind": "val", "step": step, "mse_angstrom2": mean_mse,
                               "mse_per_lead_angstrom2": mse.tolist(), "best_mse_angstrom2": best_val})
                log.info("step %d validation MSE %.5g Å² (best %.5g)%s", step, mean_mse, best_val,
                         "" if improved else f", {bad_validations} without improvement")
                if t.early_stopping_patience and bad_validations >= t.early_stopping_patience:
                    stopped_by, save_now = "early_stopping", True
                    log.info("early stopping: %d validations without improvement", bad_validations)
            if save_now or improved:
                last_saved = manager.save(engine, step, client_state())
            if improved:
                manager.set_best(step, best_val)
            if stop:
                stopped_by = "signal"
                log.warning("stop signal (%s) received: checkpointed at step %d, exiting",
                            ", ".join(signals.received_signals()) or "on another rank", step)
                break
            if stopped_by == "early_stopping":
                break
    finally:
        progress.close()
        metrics.close()
    result = TrainResult(run_dir, step, stopped_by, last_saved,
                         None if math.isinf(best_val) else best_val, losses)
    log.info("training finished at step %d (%s)", step, stopped_by)
    return result, engine
