"""Unit tests of the training machinery around the model: DeepSpeed config, checkpoints, RNG state,
stop signals, metrics, the batch stream and the validation split (a stand-in torch module and an
in-memory dataset are used only here)."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest

from asteroid_hpc.config import TrainConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.runtime.launch import free_port
from asteroid_hpc.train.batches import BatchStream
from asteroid_hpc.train.checkpoint import (
    COMPLETE, CheckpointManager, capture_rng_state, check_compatible, check_one_line, resolve_resume, restore_rng_state,
    tag_for,
)
from asteroid_hpc.train.ds_config import build_deepspeed_config, deep_merge, resolve_backend, resolve_precision
from asteroid_hpc.train.metrics import MetricsWriter, read_metrics
from asteroid_hpc.train.validate import validation_indices
from tests.support.train import OneBatch, PlainEngine


# ----------------------------------------------------------------------------------- DeepSpeed config
def test_global_batch_follows_world_size():
    cfg = TrainConfig(micro_batch_size=3, grad_accum_steps=2, zero_stage=2, grad_clip=0.5)
    for world in (1, 2, 8):
        ds = build_deepspeed_config(cfg, world, "fp32")
        assert ds["train_batch_size"] == 3 * 2 * world
        assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert ds["data_types"] == {"buffer_dtype": None}
    bf16 = build_deepspeed_config(cfg, 1, "bf16")
    assert bf16["bf16"]["enabled"] is True and bf16["data_types"] == {"buffer_dtype": "bf16"}


def test_passthrough_is_deep_merged_and_cannot_redefine_the_batch():
    cfg = TrainConfig(zero_stage=3, deepspeed={"zero_optimization": {"overlap_comm": False}, "wall_clock_breakdown": True})
    ds = build_deepspeed_config(cfg, 2, "fp32")
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": False}
    assert ds["wall_clock_breakdown"] is True
    with pytest.raises(UserError, match="train_batch_size"):
        build_deepspeed_config(TrainConfig(deepspeed={"train_batch_size": 64}), 2, "fp32")
    base = {"a": {"b": 1, "c": 2}}
    assert deep_merge(base, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}} and base == {"a": {"b": 1, "c": 2}}


def test_backend_and_precision_resolution():
    assert resolve_backend("auto", "cpu") == "gloo" and resolve_backend("auto", "cuda") == "nccl"
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(UserError, match="fp16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(UserError, match="nccl"):
        resolve_backend("nccl", "cpu")


# ----------------------------------------------------------------------------------- RNG state
def test_rng_state_round_trips_through_json():
    import torch

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


# ----------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def single_process_group():
    """torch.distributed with one gloo rank, as `asteroid-hpc train` sets it up (once per module:
    DeepSpeed keeps its groups in module globals), torn down afterwards."""
    from asteroid_hpc.train import session

    with pytest.MonkeyPatch.context() as monkeypatch:
        for key in list(os.environ):
            if key.startswith(("OMPI_", "PMI_", "SLURM_")):
                monkeypatch.delenv(key)
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
            monkeypatch.setenv(key, value)
        sess = session.start(TrainConfig())
        yield sess
        session.teardown(None)


def _stand_in_engine(seed: int, zero_stage: int = 0):
    import deepspeed
    import torch

    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    config = build_deepspeed_config(TrainConfig(micro_batch_size=4, zero_stage=zero_stage), 1, "fp32")
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config, dist_init_required=False)
    return engine


def _train_steps(engine, steps: int, seed: int) -> list[float]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 4, generator=generator)
        loss = (engine(x) - x.sum(dim=1, keepdim=True)).pow(2).mean() + 1e-3 * torch.rand(())  # uses the global RNG
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_checkpoint_round_trip_pointer_marker_and_pruning(tmp_path, single_process_group, zero_stage):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    engine = _stand_in_engine(seed=0, zero_stage=zero_stage)
    _train_steps(engine, 2, seed=10)
    for step in (1, 2, 3):
        path = manager.save(engine, step, {"sampler": {"epoch": 0, "position": step}})
        assert (path / COMPLETE).is_file() and (path / "rng_rank0.json").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text() == tag_for(3)
    assert manager.complete_steps() == [2, 3]  # keep_last=2: step 1 was pruned after step 3 completed
    expected = _train_steps(engine, 3, seed=20)

    other = _stand_in_engine(seed=123, zero_stage=zero_stage)  # different initial weights
    state = manager.load(other, manager.latest())
    assert state["step"] == 3 and state["sampler"]["position"] == 3
    assert _train_steps(other, 3, seed=20) == pytest.approx(expected, abs=1e-7)


def test_incomplete_checkpoints_are_ignored_and_stale_attempts_pruned(tmp_path):
    directory = tmp_path / "checkpoints"
    manager = CheckpointManager(directory, keep_last=2)
    for step in (1, 2):
        (directory / tag_for(step)).mkdir(parents=True)
        (directory / tag_for(step) / COMPLETE).write_text("")
    (directory / tag_for(3)).mkdir()  # a save interrupted before its marker
    (directory / "latest").write_text(tag_for(3))  # even a pointer to it is not trusted
    assert manager.latest() == directory / tag_for(2)
    assert resolve_resume("auto", manager) == directory / tag_for(2)
    assert resolve_resume("never", manager) is None
    assert resolve_resume(str(tmp_path), manager) == directory / tag_for(2)
    with pytest.raises(UserError, match="incomplete"):
        resolve_resume(str(directory / tag_for(3)), manager)
    with pytest.raises(UserError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope"), manager)
    (directory / tag_for(4)).mkdir()
    (directory / tag_for(4) / COMPLETE).write_text("")
    manager.set_best(1, 0.5)
    manager.prune()
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == [tag_for(1), tag_for(2), tag_for(4)]


def test_a_run_directory_holds_one_line_of_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    manager = CheckpointManager(directory, keep_last=2)
    check_one_line(manager, None)  # empty: anything goes
    for step in (3, 6):
        (directory / tag_for(step)).mkdir(parents=True)
        (directory / tag_for(step) / COMPLETE).write_text("")
    check_one_line(manager, directory / tag_for(6))
    with pytest.raises(UserError, match="up to step 6; cannot start afresh"):
        check_one_line(manager, None)
    with pytest.raises(UserError, match="cannot continue from .*step_000003"):
        check_one_line(manager, directory / tag_for(3))
    with pytest.raises(UserError, match="new train.run_dir"):
        check_one_line(manager, tmp_path / "other" / tag_for(6))


def test_resume_refuses_a_different_model_shape(tmp_path):
    saved = {"config": {"model": {"hidden_size": 16, "num_heads": 4}}, "world_size": 2, "zero_stage": 1}
    check_compatible(tmp_path, saved, {"hidden_size": 16, "num_heads": 4}, 2, 1)
    with pytest.raises(UserError, match=r"ckpt.*model\.hidden_size 16 -> 32"):
        check_compatible(tmp_path / "ckpt", saved, {"hidden_size": 32, "num_heads": 4}, 2, 1)
    with pytest.raises(UserError, match="ZeRO-1 checkpoint of 2 ranks on 1 ranks"):
        check_compatible(tmp_path, saved, {"hidden_size": 16, "num_heads": 4}, 1, 1)


# ----------------------------------------------------------------------------------- signals
def test_stop_signals_only_set_a_flag():
    from asteroid_hpc.runtime import signals

    signals.clear_stop()
    previous = signals.install_stop_handlers()
    try:
        assert not signals.stop_requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.stop_requested() and signals.received_signals() == ["SIGUSR1"]
        os.kill(os.getpid(), signal.SIGTERM)  # the process keeps running
        assert signals.received_signals() == ["SIGUSR1", "SIGTERM"]
    finally:
        signals.restore_handlers(previous)
        signals.clear_stop()
    assert signal.getsignal(signal.SIGTERM) == previous[signal.SIGTERM]


# ----------------------------------------------------------------------------------- metrics
def test_metrics_jsonl_is_truncated_on_resume(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True)
    for step in range(1, 6):
        writer.write({"kind": "train", "step": step, "loss": float(step)})
    writer.close()
    writer = MetricsWriter(tmp_path, enabled=True, resume_step=3)  # steps 4, 5 will be run again
    writer.write({"kind": "train", "step": 4, "loss": 40.0})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == \
        [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    MetricsWriter(tmp_path / "other", enabled=False).write({"step": 1})
    assert not (tmp_path / "other").exists()


# ----------------------------------------------------------------------------------- batches
class _Windows:
    """An in-memory dataset of numbered windows."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i}


class _DealtSampler:
    """A shared seeded permutation dealt out in rank order (the contract of the real sampler)."""

    def __init__(self, n, rank, world_size, seed=0):
        self.n, self.rank, self.world, self.seed, self.epoch = n, rank, world_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n // self.world

    def __iter__(self):
        perm = np.random.default_rng(self.seed + self.epoch).permutation(self.n)[: len(self) * self.world]
        return iter(perm[self.rank::self.world].tolist())


def test_batch_stream_resumes_mid_epoch_and_crosses_epochs():
    dataset = _Windows(10)
    straight = BatchStream(dataset, _DealtSampler(10, 0, 1), micro_batch_size=3)
    seen = [straight.next()["index"].tolist() for _ in range(7)]  # 3 batches per epoch
    assert straight.epoch == 2 and straight.position == 3
    first = BatchStream(dataset, _DealtSampler(10, 0, 1), micro_batch_size=3)
    head = [first.next()["index"].tolist() for _ in range(4)]
    resumed = BatchStream(dataset, _DealtSampler(10, 0, 1), micro_batch_size=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = [resumed.next()["index"].tolist() for _ in range(3)]
    assert head + tail == seen


def test_two_ranks_with_b_see_the_windows_of_one_rank_with_2b():
    dataset = _Windows(16)
    one = BatchStream(dataset, _DealtSampler(16, 0, 1), micro_batch_size=4)
    ranks = [BatchStream(dataset, _DealtSampler(16, r, 2), micro_batch_size=2) for r in (0, 1)]
    for _ in range(6):
        assert sorted(one.next()["index"].tolist()) == sorted(ranks[0].next()["index"].tolist()
                                                               + ranks[1].next()["index"].tolist())


def test_batch_stream_too_small_is_a_user_error():
    with pytest.raises(UserError, match="fewer than one micro-batch"):
        BatchStream(_Windows(3), _DealtSampler(3, 0, 2), micro_batch_size=2).next()


def test_validation_indices_do_not_depend_on_world_size():
    one = validation_indices(100, per_rank=8, rank=0, world_size=1)
    two = [validation_indices(100, per_rank=4, rank=r, world_size=2) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == 4
    assert sorted(one) == sorted(two[0] + two[1]) and one[0] == 0 and one[-1] == 99
    assert validation_indices(1, per_rank=4, rank=0, world_size=2) == []


# ----------------------------------------------------------------------------------- forecast loss

@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_forecast_loss_scores_the_rollout_the_config_names(teacher_forcing):
    """train.teacher_forcing=false puts the forecast loss on the model's own iterated forecast (what
    validation and evaluation score); true on passes that see the true previous frames."""
    import torch

    from asteroid_hpc.config.schema import ModelConfig
    from asteroid_hpc.model import build_model
    from asteroid_hpc.train.step import LOSS_TERMS, optimizer_step

    torch.manual_seed(0)
    model = build_model(ModelConfig(history_frames=6, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=1,
                                    decoder_layers=1, attention="full", symmetry="equivariant")).double()
    frames = torch.cumsum(torch.randn(2, 12, 5, 3, dtype=torch.float64) * 0.1, dim=1)
    batch = {"history": frames[:, :6], "target": frames[:, 6:], "atomic_numbers": torch.tensor([6, 6, 8, 1, 1])}
    with torch.no_grad():
        free = model(batch["history"], batch["atomic_numbers"], 6).forecast
        forced = model(batch["history"], batch["atomic_numbers"], 6, batch["target"]).forecast
    expected = {mode: float((f - batch["target"]).pow(2).mean()) for mode, f in ((False, free), (True, forced))}
    assert abs(expected[True] - expected[False]) > 1e-6 * expected[False]  # 6 frames = 3 passes: they differ
    sums, _ = optimizer_step(PlainEngine(model), OneBatch(batch), TrainConfig(teacher_forcing=teacher_forcing),
                              "cpu", torch.float64, want_grad_norm=False)
    assert float(sums[1 + LOSS_TERMS.index("forecast")]) == pytest.approx(expected[teacher_forcing], rel=1e-9)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
