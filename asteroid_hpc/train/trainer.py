"""The training loop: DeepSpeed engine, STI losses, validation, checkpoints, stop signals.

One function, :func:`train`, does the whole run the same way on 1 or many ranks, whatever the launcher,
through a :class:`Trainer` (set-up, step, validation, checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import __version__
from ..config import AsteroidConfig, config_hash, to_dict
from ..config.schema import LEGACY_REFERENCE_KEY
from ..data.coverage import describe_training_windows
from ..runtime import signals
from ..logs import get_logger, setup_logging
from ..config.resolved import write_resolved_config
from ..errors import UserError
from . import session as dist_session
from .batches import BatchStream
from .checkpoint import CLIENT_STATE, CheckpointManager, check_compatible, check_one_line, read_json, resolve_resume
from .ds_config import build_deepspeed_config
from .metrics import MetricsWriter, Progress
from .step import LOSS_TERMS, lr_lambda, memory_mb, optimizer_step, seed_all
from .validate import per_lead_mse, validation_indices

log = get_logger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by: str  # "max_steps", "signal" or "early_stopping"
    checkpoint: Optional[Path]
    best_val_mse: Optional[float] = None
    losses: list[float] = field(default_factory=list)  # total loss of each step run in this process


def _open_datasets(cfg: AsteroidConfig):
    from ..data import WindowDataset

    m, horizon = cfg.model.history_frames, cfg.data.horizon_frames
    train_set = WindowDataset(cfg.data.dataset, "train", m, horizon, window_stride=cfg.data.window_stride)
    val_set = WindowDataset(cfg.data.dataset, "val", m, horizon, window_stride=cfg.data.window_stride)
    return train_set, val_set


def _check_windows(cfg: AsteroidConfig) -> None:
    """The windows are the dataset's (its manifest records them): a config asking for others is refused."""
    from ..data.manifest import check_window_fits, read_manifest, window_contract

    if not cfg.data.dataset:
        raise UserError("data.dataset is not set: point it at a `asteroid-hpc preprocess` output directory")
    manifest = read_manifest(cfg.data.dataset)
    contract = window_contract(manifest, cfg.data.dataset)
    contract.check(cfg.model.history_frames, cfg.data.horizon_frames, cfg.data.frame_stride, cfg.data.split)
    check_window_fits(manifest, cfg.data.dataset, "train", cfg.model.history_frames, cfg.data.horizon_frames)


def _reference_structure(cfg: AsteroidConfig) -> Optional[list[list[float]]]:
    """model.reference_structure=training_mean: the dataset's training mean structure [N][3] Å, for the model's
    state (deterministic, so a resumed run computes the same); None without a reference."""
    if cfg.model.reference_structure != "training_mean":
        return None
    from ..data.reference import training_mean_structure

    mean = training_mean_structure(cfg.data.dataset, cfg.data.stats_max_frames)
    log.info("reference structure: the mean of the training frames of %s (%d atoms)", cfg.data.dataset, len(mean))
    return [[round(float(v), 6) for v in row] for row in mean]  # rounded as when it lived in the config


def dataset_local_geometry(dataset: str | os.PathLike) -> dict:
    """The local geometry (model/local_geometry.py) fitted on a dataset's training frames: a state of tensors
    for the model (deterministic: a resumed run fits the same)."""
    from ..data.manifest import read_manifest
    from ..data.reference import dataset_bonds, training_runs
    from ..model.local_geometry import fit_local_geometry

    manifest = read_manifest(dataset)
    runs = training_runs(dataset)
    state = fit_local_geometry(runs, manifest["atomic_numbers"], dataset_bonds(manifest), where=str(dataset))
    log.info("local geometry: %d stiff distances and %d excluded pairs fitted on %d training frames of %s",
             len(state["pairs"]), len(state["excluded_pairs"]), sum(len(r) for r in runs), dataset)
    return state


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
    trainer = Trainer(cfg, sess)
    clean = False
    previous_handlers = signals.install_stop_handlers()
    try:
        trainer.set_up(resume)
        result = trainer.run()
        clean = True
        return result
    finally:
        signals.restore_handlers(previous_handlers)
        # after an error the engine is not destroyed (the other ranks may be gone): only the process group
        dist_session.teardown(trainer.engine if clean else None, clean=clean)


class Trainer:
    """One training run in this process, the same on 1 or many ranks: :meth:`set_up` once, then
    :meth:`train_step`, :meth:`validate` and :meth:`save_checkpoint` until a stop (:meth:`run`).

    The config is never changed: what train derives from the data (the reference structure) goes
    into the model's state, so the config hash is the same before, during and after training.
    """

    def __init__(self, cfg: AsteroidConfig, sess) -> None:
        self.cfg, self.sess, self.t = cfg, sess, cfg.train
        self.run_dir = Path(cfg.train.run_dir)
        self.engine = None
        self.step, self.best_val, self.bad_validations = 0, math.inf, 0
        self.stopped_by, self.last_saved, self.losses = "max_steps", None, []

    # ------------------------------------------------------------------------------------------- set-up
    def set_up(self, resume: str) -> None:
        """Everything before the first step; refuses a bad resume or dataset before the expensive parts."""
        import torch.distributed as dist

        setup_logging(self.sess.info, log_dir=self.run_dir / "logs")
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        if self.sess.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manager = CheckpointManager(self.run_dir / "checkpoints", self.t.keep_last, self.sess.rank,
                                         barrier=dist.barrier)
        resume_from = resolve_resume(resume, self.manager)
        if resume_from is None and resume == "auto":
            log.warning("no complete checkpoint in %s: STARTING FROM SCRATCH", self.manager.directory)
        check_one_line(self.manager, resume_from)
        saved_state = None
        if resume_from is not None:
            saved_state = read_json(resume_from / CLIENT_STATE)
            check_compatible(resume_from, saved_state, to_dict(self.cfg.model), self.sess.world_size,
                             self.t.zero_stage)
        _check_windows(self.cfg)
        self.reference = _reference_structure(self.cfg)
        sampled = self.cfg.model.local_geometry == "sampled"
        self.local_geometry = dataset_local_geometry(self.cfg.data.dataset) if sampled else None
        self.train_set, self.val_set = _open_datasets(self.cfg)
        self.training_data = describe_training_windows(self.train_set)  # saved with every checkpoint
        summary = self._build_engine()
        self._open_streams()
        if resume_from is not None:
            self._restore(resume_from, saved_state)
        if self.sess.rank == 0:
            _startup_summary(self.cfg, self.sess, self.ds_config, self.run_dir, summary, len(self.train_set),
                             len(self.val_set), resume_from)
            write_resolved_config(self.cfg, self.run_dir, self.sess.info)
        self.metrics = MetricsWriter(self.run_dir, enabled=self.sess.rank == 0,
                                     resume_step=self.step if resume_from else None)
        self.progress = Progress(self.t.max_steps, self.step, enabled=self.sess.rank == 0, every=self.t.log_every)

    def _build_engine(self) -> dict:
        """The model (the same initial weights on every rank), optimizer, schedule and DeepSpeed engine;
        returns the model summary."""
        import deepspeed
        import torch

        from ..model import build_model, model_summary

        t, sess = self.t, self.sess
        seed_all(t.seed)  # the same initial weights on every rank
        model = build_model(self.cfg.model, self.reference, self.local_geometry)
        summary = model_summary(model)  # an open probe system: before the signature's periodic flag applies
        model.data_signature = self.data_signature()  # periodic or not: the model refuses the other kind
        seed_all(t.seed + 1000 * sess.rank)  # per-rank streams (rotation augmentation)
        self.ds_config = build_deepspeed_config(t, sess.world_size, sess.precision)
        optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      lr_lambda(t.warmup_steps, t.lr_decay_steps or t.max_steps))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=self.ds_config, dist_init_required=False)
        self.device = sess.device
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[sess.precision]
        return summary

    def _open_streams(self) -> None:
        """This rank's training batches and validation windows."""
        from ..data import DistributedWindowSampler

        t, sess, dataset = self.t, self.sess, self.cfg.data.dataset
        sampler = DistributedWindowSampler(self.train_set, rank=sess.rank, world_size=sess.world_size, seed=t.seed,
                                           shuffle=True, drop_last=True)
        self.stream = BatchStream(self.train_set, sampler, t.micro_batch_size, self.cfg.data.num_workers,
                                  where=dataset)
        self.val_indices = validation_indices(len(self.val_set), t.val_batches * t.micro_batch_size, sess.rank,
                                              sess.world_size)
        if not self.val_indices:
            log.warning("the validation split of %s is empty or smaller than the world size: no validation", dataset)

    def _restore(self, resume_from: Path, saved_state: dict) -> None:
        """Weights, optimizer, sampler and RNG from a checkpoint; its reference structure must be the data's."""
        legacy_reference = saved_state.get("config", {}).get("model", {}).get(LEGACY_REFERENCE_KEY) or None
        state = self.manager.load(self.engine, resume_from, strict=legacy_reference is None)
        self._check_resumed_reference(resume_from, legacy_reference)
        self.step = int(state["step"])
        self.stream.load_state_dict(state["sampler"])
        self.best_val = state.get("best_val_mse") if state.get("best_val_mse") is not None else math.inf
        self.bad_validations = int(state.get("bad_validations", 0))
        if state.get("config_hash") != config_hash(self.cfg):
            log.info("resuming with a changed config (hash %s -> %s); the model's shape is unchanged",
                     state.get("config_hash"), config_hash(self.cfg))

    def _check_resumed_reference(self, resume_from: Path, legacy_reference: Optional[list]) -> None:
        """The checkpoint's reference structure (in its module state; in the config of an older checkpoint,
        whose module state lacks it) must equal the one computed from the dataset now."""
        import torch

        if self.reference is None:
            return
        if legacy_reference is not None:
            same = legacy_reference == self.reference
        else:
            loaded = self.engine.module.reference
            same = torch.equal(loaded.cpu(), torch.tensor(self.reference, dtype=torch.float32).to(loaded.dtype))
        if not same:
            raise UserError(f"{resume_from}: cannot resume, the checkpoint's reference structure differs from the "
                            f"training mean of {self.cfg.data.dataset}; use --resume never or a new train.run_dir")

    # --------------------------------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Steps until train.max_steps, a stop signal or early stopping; checkpoints as configured."""
        t = self.t
        self._window_start, self._window_steps = time.perf_counter(), 0
        self.engine.train()
        try:
            while self.step < t.max_steps:
                stop = self.train_step()
                improved = self.validate() if self.step % t.val_every == 0 and self.val_indices else False
                early = self.stopped_by == "early_stopping"
                if stop or early or improved or self.step % t.checkpoint_every == 0 or self.step == t.max_steps:
                    self.save_checkpoint(improved)
                if stop:
                    self.stopped_by = "signal"
                    log.warning("stop signal (%s) received: checkpointed at step %d, exiting",
                                ", ".join(signals.received_signals()) or "on another rank", self.step)
                    break
                if early:
                    break
        finally:
            self.progress.close()
            self.metrics.close()
        log.info("training finished at step %d (%s)", self.step, self.stopped_by)
        return TrainResult(self.run_dir, self.step, self.stopped_by, self.last_saved,
                           None if math.isinf(self.best_val) else self.best_val, self.losses)

    def train_step(self) -> bool:
        """One optimizer step and its all-reduced losses (logged as configured); True when any rank was
        asked to stop."""
        import torch
        import torch.distributed as dist

        t = self.t
        log_now = (self.step + 1) % t.log_every == 0 or self.step + 1 == t.max_steps
        sums, own_norm = optimizer_step(self.engine, self.stream, t, self.device, self.dtype,
                                         want_grad_norm=log_now)
        self.step += 1
        self._window_steps += 1
        # one collective per step: the loss terms (summed, then averaged) and the stop flag (any rank)
        flag = torch.tensor([float(signals.stop_requested())], dtype=torch.float64)
        reduced = torch.cat([sums, flag]).to(self.device)
        dist.all_reduce(reduced)
        stop = bool(reduced[-1].item() > 0)
        reduced = (reduced[:-1] / self.sess.world_size).cpu().tolist()
        self.losses.append(reduced[0])
        if log_now or stop:
            self._log_step(reduced, own_norm)
        return stop

    def _log_step(self, reduced: list[float], own_norm: Optional[float]) -> None:
        elapsed = time.perf_counter() - self._window_start
        samples_per_s = self._window_steps * self.ds_config["train_batch_size"] / max(elapsed, 1e-9)
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = own_norm if grad_norm is None else grad_norm
        self.metrics.write({"kind": "train", "step": self.step, "loss": reduced[0],
                            **{k: v for k, v in zip(LOSS_TERMS, reduced[1:])},
                            "lr": self.engine.get_lr()[0],
                            "grad_norm": None if grad_norm is None else float(grad_norm),
                            "samples_per_s": samples_per_s, "epoch": self.stream.epoch, **memory_mb(self.device)})
        self.progress.update(self.step, reduced[0], samples_per_s)
        self._window_start, self._window_steps = time.perf_counter(), 0

    def validate(self) -> bool:
        """Validation MSE (collective); True when it improved on the best. Sets early stopping."""
        mse = per_lead_mse(self.engine, self.val_set, self.val_indices, self.t.micro_batch_size,
                           self.cfg.data.horizon_frames, self.device, self.dtype)
        mean_mse = float(mse.mean())
        improved = mean_mse < self.best_val
        if improved:
            self.best_val, self.bad_validations = mean_mse, 0
        else:
            self.bad_validations += 1
        self.metrics.write({"kind": "val", "step": self.step, "mse_angstrom2": mean_mse,
                            "mse_per_lead_angstrom2": mse.tolist(), "best_mse_angstrom2": self.best_val})
        log.info("step %d validation MSE %.5g Å² (best %.5g)%s", self.step, mean_mse, self.best_val,
                 "" if improved else f", {self.bad_validations} without improvement")
        patience = self.t.early_stopping_patience
        if patience and self.bad_validations >= patience:
            self.stopped_by = "early_stopping"
            log.info("early stopping: %d validations without improvement", self.bad_validations)
        return improved

    # --------------------------------------------------------------------------------------- checkpoint
    def save_checkpoint(self, improved: bool) -> None:
        """A checkpoint of this step (collective); marked best when validation ``improved``."""
        self.last_saved = self.manager.save(self.engine, self.step, self.client_state())
        if improved:
            self.manager.set_best(self.step, self.best_val)

    def client_state(self) -> dict:
        return {"epoch": self.stream.epoch, "sampler": self.stream.state_dict(), "config": to_dict(self.cfg),
                "config_hash": config_hash(self.cfg), "package_version": __version__,
                "world_size": self.sess.world_size, "zero_stage": self.t.zero_stage,
                "best_val_mse": None if math.isinf(self.best_val) else self.best_val,
                "bad_validations": self.bad_validations, "training_data": self.training_data,
                "data_signature": self.data_signature()}

    def data_signature(self) -> dict:
        """The training inputs' atoms and frame spacing, recorded with the model (data/signature.py)."""
        if getattr(self, "_data_signature", None) is None:
            from ..data.manifest import read_manifest
            from ..data.signature import signature_of_manifest

            self._data_signature = signature_of_manifest(read_manifest(self.cfg.data.dataset))
        return self._data_signature
