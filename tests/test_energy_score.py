"""The fair energy score of two sampled forecasts (asteroid_hpc.model.thermal.fair_energy_score) and
``train.stochastic_loss`` "energy_score"/"energy_score_frame": a stochastic model trained on its own sampled
free-running rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from asteroid_hpc.config import from_dict, to_dict
from asteroid_hpc.config.schema import AsteroidConfig, LossWeights, ModelConfig, TrainConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.model import build_model
from asteroid_hpc.model.thermal import fair_energy_score, rollout_energy_score
from tests.support.tiny import make_tiny_dataset, tiny_model_config
from tests.support.train import OneBatch, PlainEngine, run_train, train_losses

CHI3_MEAN = 2.0 * math.sqrt(2.0 / math.pi)  # E‖ε‖ for ε ~ N(0, I₃)


def gaussian_samples(spread: float, shift: float = 0.0, draws: int = 20000, atoms: int = 1, seed: int = 0):
    """A target y ~ N(0, I₃) per atom and two forecasts ~ N(shift, spread² I₃), independent: [1, draws, atoms, 3]."""
    gen = torch.Generator().manual_seed(seed)
    y, a, b = (torch.randn(1, draws, atoms, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    return shift + spread * a, shift + spread * b, y


# ----------------------------------------------------------------------------------------------- the score

@pytest.mark.parametrize("per", ["atom", "frame"])
def test_identical_samples_score_their_mean_distance(per):
    gen = torch.Generator().manual_seed(1)
    sample, target = (torch.randn(3, 4, 5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    if per == "atom":
        expected = (sample - target).norm(dim=-1).mean()
    else:  # each frame about its centroid, flattened, over √N
        centred = [(t - t.mean(dim=2, keepdim=True)).flatten(2) for t in (sample, target)]
        expected = (centred[0] - centred[1]).norm(dim=-1).mean() / math.sqrt(5)
    assert float(fair_energy_score(sample, sample, target, per=per)) == pytest.approx(float(expected), abs=1e-8)


def test_the_score_of_gaussian_forecasts_is_the_closed_form():
    """Forecasts N(0, s²I₃) of y ~ N(0, I₃): E‖X − y‖ = √(1+s²)·E‖ε‖, E‖X₁ − X₂‖ = √2·s·E‖ε‖."""
    for spread in (0.5, 1.0, 2.0):
        expected = CHI3_MEAN * (math.sqrt(1.0 + spread**2) - spread / math.sqrt(2.0))
        assert float(fair_energy_score(*gaussian_samples(spread))) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("per,atoms", [("atom", 1), ("frame", 6)])
def test_a_calibrated_forecast_scores_lower_than_a_miscalibrated_one(per, atoms):
    def score(spread: float, shift: float = 0.0) -> float:
        return float(fair_energy_score(*gaussian_samples(spread, shift, draws=20000 // atoms, atoms=atoms), per=per))

    calibrated = score(1.0)
    # each margin is ≥ 0.03 Å, the Monte-Carlo error of one score ≈ 0.004 Å at these sizes
    assert calibrated < score(0.5) - 0.03 and calibrated < score(2.0) - 0.03  # under-, over-dispersed
    assert calibrated < score(0.0) - 0.3  # a deterministic forecast: the MAE
    if per == "atom":
        assert calibrated < score(1.0, shift=0.5) - 0.03  # biased


def test_the_frame_score_ignores_each_frames_centroid():
    a, b, y = gaussian_samples(1.0, draws=10, atoms=4)
    moved = [t + torch.randn(1, 10, 1, 3, dtype=torch.float64) for t in (a, b, y)]
    unmoved = float(fair_energy_score(a, b, y, per="frame"))
    assert float(fair_energy_score(*moved, per="frame")) == pytest.approx(unmoved, rel=1e-12)
    assert float(fair_energy_score(*moved)) != pytest.approx(float(fair_energy_score(a, b, y)), rel=1e-3)


def test_the_score_reads_the_first_frames_of_a_longer_target_and_has_finite_gradients_at_zero():
    a, b, y = gaussian_samples(1.0, draws=4)
    longer = torch.cat([y, torch.full_like(y, 1e3)], dim=1)
    assert float(fair_energy_score(a, b, longer)) == float(fair_energy_score(a, b, y))
    same = torch.zeros(1, 2, 3, 3, requires_grad=True)
    fair_energy_score(same, same, same.detach()).backward()
    assert torch.isfinite(same.grad).all()
    with pytest.raises(ValueError, match="per must be"):
        fair_energy_score(a, b, y, per="molecule")


def test_the_step_score_adds_the_score_of_the_frame_to_frame_steps():
    gen = torch.Generator().manual_seed(3)
    last, a, b, y = (torch.randn(2, k, 4, 3, generator=gen, dtype=torch.float64) for k in (1, 5, 5, 5))
    steps = [torch.cat([x[:, :1] - last, x[:, 1:] - x[:, :-1]], dim=1) for x in (a, b, y)]
    expected = fair_energy_score(a, b, y) + fair_energy_score(*steps)
    assert float(rollout_energy_score(a, b, y, last, "energy_score_steps")) == pytest.approx(float(expected), rel=1e-12)
    assert float(rollout_energy_score(a, b, y, last, "energy_score")) == float(fair_energy_score(a, b, y))
    assert float(rollout_energy_score(a, b, y, last, "energy_score_frame")) == float(fair_energy_score(a, b, y, "frame"))
    with pytest.raises(ValueError, match="unknown rollout score"):
        rollout_energy_score(a, b, y, last, "nll")


def test_the_step_score_tells_a_random_walk_from_coherent_motion_with_the_same_spread_at_each_lead():
    """Targets move coherently (a random velocity held for all 4 steps: spread 0.1·k at lead k); a forecast
    by a random walk with the same spread at every lead ((0.1·k)² = Σ of growing step variances) scores as
    well on the positions and worse on the steps than one drawn like the targets."""
    gen = torch.Generator().manual_seed(4)

    def coherent():  # one velocity per atom, held: lead k at k·v
        velocity = 0.1 * torch.randn(1, 1, 4000, 3, generator=gen, dtype=torch.float64)
        return velocity * torch.arange(1.0, 5.0, dtype=torch.float64).view(1, 4, 1, 1)

    def walk():
        sizes = 0.1 * torch.sqrt(torch.arange(1.0, 5.0) ** 2 - torch.arange(0.0, 4.0) ** 2)
        steps = torch.randn(1, 4, 4000, 3, generator=gen, dtype=torch.float64) * sizes.view(1, 4, 1, 1)
        return steps.cumsum(dim=1)

    last, y = torch.zeros(1, 1, 4000, 3, dtype=torch.float64), coherent()
    good = rollout_energy_score(coherent(), coherent(), y, last, "energy_score_steps")
    bad = rollout_energy_score(walk(), walk(), y, last, "energy_score_steps")
    on_positions = [float(fair_energy_score(x(), x(), y)) for x in (coherent, walk)]
    assert on_positions[0] == pytest.approx(on_positions[1], rel=0.03)
    assert float(good) < float(bad) - 0.01


# ----------------------------------------------------------------------------------------------- the config

def test_the_option_defaults_to_the_nll_and_round_trips():
    assert TrainConfig().stochastic_loss == "nll"
    cfg = AsteroidConfig(model=ModelConfig(stochastic=True),
                         train=TrainConfig(stochastic_loss="energy_score_frame", teacher_forcing=False))
    assert from_dict(to_dict(cfg)).train.stochastic_loss == "energy_score_frame"


def test_the_option_is_refused_where_it_cannot_apply():
    with pytest.raises(UserError, match="train.stochastic_loss"):
        TrainConfig(stochastic_loss="crps")
    with pytest.raises(UserError, match="teacher_forcing=false"):
        TrainConfig(stochastic_loss="energy_score")  # teacher forcing is the default
    with pytest.raises(UserError, match="model.stochastic=true models only"):
        AsteroidConfig(train=TrainConfig(stochastic_loss="energy_score", teacher_forcing=False))


# ----------------------------------------------------------------------------------------------- training

def tiny_batch(horizon: int, batch: int = 2):
    cfg = tiny_model_config(stochastic=True)
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(batch, 1, 5, 3, generator=gen, dtype=torch.float64) * 1.2
    frames = start + (torch.randn(batch, cfg.history_frames + horizon, 5, 3, generator=gen, dtype=torch.float64)
                      * 0.05).cumsum(dim=1)
    numbers = torch.tensor([[6, 6, 8, 1, 1]] * batch)
    return cfg, {"history": frames[:, :cfg.history_frames], "target": frames[:, cfg.history_frames:],
                 "atomic_numbers": numbers}


@pytest.mark.parametrize("loss,nll", [("energy_score", 0.0), ("energy_score", 0.5), ("energy_score_frame", 0.0),
                                      ("energy_score_steps", 0.0)])
def test_a_training_step_scores_two_sampled_rollouts_with_finite_gradients(loss, nll):
    """Horizon 5 with 2 steps per pass: 3 passes, each window holding the previous passes' samples."""
    from asteroid_hpc.train.step import LOSS_TERMS, optimizer_step

    cfg, batch = tiny_batch(horizon=5)
    torch.manual_seed(0)
    model = build_model(cfg).double().train()
    history, target, numbers = batch["history"], batch["target"], batch["atomic_numbers"]
    torch.manual_seed(7)
    with torch.no_grad():  # the same draws as the step's: the two halves of one doubled sampled rollout
        sampled = model(history.repeat(2, 1, 1, 1), numbers.repeat(2, 1), 5).forecast
    expected = rollout_energy_score(sampled[:2], sampled[2:], target, history[:, -1:], loss)
    assert float(expected) > 0
    engine = PlainEngine(model)
    t = TrainConfig(stochastic_loss=loss, teacher_forcing=False, loss_weights=LossWeights(nll=nll))
    torch.manual_seed(7)
    sums, _ = optimizer_step(engine, OneBatch(batch), t, "cpu", torch.float64, want_grad_norm=False)
    assert float(sums[1 + LOSS_TERMS.index("energy_score")]) == pytest.approx(float(expected), rel=1e-9)
    assert (float(sums[1 + LOSS_TERMS.index("nll")]) != 0) == (nll > 0)
    # one sampled pass over the doubled batch; the teacher-forced one only for the NLL
    assert engine.calls == [(4, False, False)] + ([(2, True, False)] if nll > 0 else [])
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.scale_head.net[-1].weight.grad.abs().sum() > 0  # σ learns from the score, NLL or not


def test_the_score_is_not_computed_for_the_default_loss():
    from asteroid_hpc.train.step import LOSS_TERMS, optimizer_step

    cfg, batch = tiny_batch(horizon=2)
    torch.manual_seed(0)
    model = build_model(cfg).double().train()
    sums, _ = optimizer_step(PlainEngine(model), OneBatch(batch), TrainConfig(teacher_forcing=False), "cpu",
                             torch.float64, want_grad_norm=False)
    assert float(sums[1 + LOSS_TERMS.index("energy_score")]) == 0.0 and float(sums[1 + LOSS_TERMS.index("nll")]) != 0


def test_asteroid_hpc_train_runs_with_the_energy_score(tmp_path_factory, tmp_path):
    import json

    tiny_dataset = make_tiny_dataset(tmp_path_factory.getbasetemp() / "train-data")  # shared with tests/test_train.py
    run_dir = tmp_path / "run"
    run_train(tiny_dataset, run_dir, "model.stochastic=true", "train.stochastic_loss=energy_score",
              "train.teacher_forcing=false", "data.horizon_frames=2", "train.max_steps=3", "train.lr_decay_steps=3")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 3 and all(r["energy_score"] > 0 and math.isfinite(r["loss"]) for r in train)
    assert all(r["nll"] > -100 for r in train)  # weight 1 by default: the teacher-forced NLL too
    assert len(train_losses(run_dir)) == 3
