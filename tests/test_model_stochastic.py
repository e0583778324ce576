"""Thermal (stochastic) forecasts, ``model.stochastic``: deterministic models unchanged, seeded sampling, samples
with the predicted σ, σ learned from the likelihood, equivariance in distribution, weights round trip, boxes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from asteroid_hpc.config.schema import LossWeights, ModelConfig, TrainConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.geometry import cell_matrix
from asteroid_hpc.model import (AsteroidOutput, ThermalOutput, build_model, load_weights, rotation_equivariance_error,
                                save_weights, sti_losses)
from asteroid_hpc.model.domain import WholeSystem
from asteroid_hpc.model.symmetry import random_rotations, rotate_about
from asteroid_hpc.model.thermal import SCALE_FLOOR_ANGSTROM, gaussian_nll, row_generators

FIXTURES = Path(__file__).parent / "fixtures"
M, L, N = 4, 3, 6
Z = torch.tensor([6, 6, 8, 1, 1, 1])


def config(**overrides) -> ModelConfig:
    base = dict(history_frames=M, delay_length=L, hidden_size=16, num_heads=2, encoder_layers=1, decoder_layers=1,
                attention="full", num_global_tokens=1, num_rbf=4, symmetry="equivariant")
    return ModelConfig(**{**base, **overrides})


def model_of(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(config(**overrides)).double().eval()


def window(batch: int = 2, seed: int = 0, frames: int = M) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, 1, N, 3, generator=gen, dtype=torch.float64) * 1.5
    return start + (torch.randn(batch, frames, N, 3, generator=gen, dtype=torch.float64) * 0.05).cumsum(dim=1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ deterministic models unchanged

def test_models_saved_before_stochastic_existed_forecast_exactly_as_before():
    data = np.load(FIXTURES / "old_reference_model_forecast.npz")  # the fixtures' shared input
    history, elements = torch.from_numpy(data["history"]), torch.from_numpy(data["atomic_numbers"])
    model = load_weights(FIXTURES / "old_plain_model.safetensors")
    assert model.cfg.stochastic is False and not hasattr(model, "scale_head")
    expected = torch.from_numpy(np.load(FIXTURES / "old_plain_model_forecast.npz")["forecast"])
    output = model.eval()(history, elements, 4, generator=seeded(1))
    # float32 tolerance against the stored forecast (the spatial attention's fast path sums in another order)
    assert type(output) is AsteroidOutput and (output.forecast - expected).abs().max() <= 1e-5
    assert torch.equal(model.forecast(history, elements, 4, mean_only=True), output.forecast)  # a generator changes nothing


def test_the_mean_of_a_stochastic_model_is_the_deterministic_model_with_the_same_weights():
    """The scale head is built last: under one seed every other parameter is the same, and the means follow
    exactly the deterministic model's path (free-running and teacher-forced)."""
    plain, noisy = model_of(), model_of(stochastic=True)
    assert set(noisy.state_dict()) - set(plain.state_dict()) == {k for k in noisy.state_dict() if "scale_head" in k}
    history, future = window(), window(seed=5, frames=2 * L)
    assert type(noisy(history, Z, 2)) is ThermalOutput and type(plain(history, Z, 2)) is AsteroidOutput
    assert torch.equal(plain.forecast(history, Z, 2 * L), noisy.forecast(history, Z, 2 * L, mean_only=True))
    assert torch.equal(plain(history, Z, 2 * L, future).forecast, noisy(history, Z, 2 * L, future).forecast)
    assert not torch.allclose(noisy.forecast(history, Z, 2 * L), plain.forecast(history, Z, 2 * L), atol=1e-4)


# ------------------------------------------------------------------------------ sampling

def test_seeded_rollouts_are_reproducible_and_different_seeds_differ():
    model, history = model_of(stochastic=True), window()
    first = model.forecast(history, Z, 3 * L, generator=seeded(7))
    assert torch.equal(first, model.forecast(history, Z, 3 * L, generator=seeded(7)))
    other = model.forecast(history, Z, 3 * L, generator=seeded(8))
    assert (first - other).abs().amin(dim=(0, 2, 3)).gt(0).all()  # every frame differs
    torch.manual_seed(3)  # without a generator: torch's global one
    again = model.forecast(history, Z, 3 * L)
    torch.manual_seed(3)
    assert torch.equal(again, model.forecast(history, Z, 3 * L))


def test_with_one_generator_per_row_a_rows_rollout_does_not_depend_on_its_batch():
    """Row generators seeded from tuples: a row's draws come from its own seed, in any batch, and distinct
    tuples give distinct rollouts."""
    model, history = model_of(stochastic=True), window(batch=3)
    seeds = [(5, 0), (5, 1), (5, 2)]
    together = model.forecast(history, Z, 3 * L, generator=row_generators(seeds))
    for row in range(3):
        alone = model.forecast(history[row:row + 1], Z, 3 * L, generator=row_generators(seeds[row:row + 1]))
        assert (alone[0] - together[row]).abs().max() <= 1e-12
    same_window = history[:1].expand(2, -1, -1, -1)
    pair = model.forecast(same_window, Z, 3 * L, generator=row_generators([(5, 0), (5, 1)]))
    assert (pair[0] - pair[1]).abs().amin(dim=(1, 2)).gt(0).all()  # the same window, other noise at every step
    with pytest.raises(ValueError, match="2 generators for a batch of 3 rows"):
        model.forecast(history, Z, L, generator=row_generators(seeds[:2]))


def test_sampled_steps_have_the_predicted_scale_and_feed_forward():
    """Scored under the teacher-forced pass given the sampled frames themselves (the one-step conditionals the
    sampler drew from, across rolled windows too), the standardised residuals are N(0, 1)."""
    model = model_of(stochastic=True)
    history = window(batch=1).expand(3000, -1, -1, -1)
    horizon = 2 * (L - 1) + 1  # three passes: the later ones start from windows that hold samples
    with torch.no_grad():
        drawn = model(history, Z, horizon, generator=seeded(0))
        conditional = model(history, Z, horizon, drawn.forecast)
    assert torch.allclose(conditional.scale, drawn.scale, rtol=1e-9)  # the σ the sampler used
    z = (drawn.forecast - conditional.forecast) / conditional.scale.unsqueeze(-1)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02
    per_step = z.std(dim=(0, 2, 3))
    assert ((per_step - 1.0).abs() < 0.03).all()
    spread = drawn.forecast[:, -1].std(dim=0)  # the rollouts spread out: thermal motion kept, not averaged away
    assert (spread > drawn.scale[0, 0].unsqueeze(-1)).all()


def test_a_system_split_into_domains_is_refused_when_sampling_not_for_the_means():
    class Split(WholeSystem):
        owned_mask = torch.ones(N, dtype=torch.bool)

    model, history = model_of(stochastic=True), window()
    with pytest.raises(UserError, match="spatial domains"):
        model(history, Z, 2, domain=Split())
    model(history, Z, 2, domain=Split(), mean_only=True)


# ------------------------------------------------------------------------------ symmetry, boxes, files

def test_rotating_the_input_rotates_the_mean_and_leaves_the_scale_unchanged():
    model, history = model_of(stochastic=True), window()
    future = window(seed=4, frames=2 * L)
    rotation = random_rotations(2, dtype=torch.float64, generator=seeded(2))
    centre = history.mean(dim=(1, 2), keepdim=True)
    with torch.no_grad():
        for target in (None, future):
            base = model(history, Z, 2 * L, target, mean_only=True)
            turned = model(rotate_about(history, rotation, centre), Z, 2 * L,
                           None if target is None else rotate_about(target, rotation, centre), mean_only=True)
            assert torch.allclose(turned.forecast, rotate_about(base.forecast, rotation, centre), atol=1e-9)
            assert torch.allclose(turned.scale, base.scale, rtol=1e-9)
    assert rotation_equivariance_error(model, history, Z, 2 * L, num_rotations=2) < 1e-9  # on the means


def test_a_stochastic_model_round_trips_through_its_weights_file(tmp_path):
    model = model_of(stochastic=True)
    with torch.no_grad():
        for parameter in model.scale_head.parameters():  # away from the initial constant σ
            parameter.add_(torch.randn_like(parameter) * 0.3)
    model = model.float()
    loaded = load_weights(save_weights(model, tmp_path / "thermal.safetensors"))
    assert loaded.cfg.stochastic and loaded.cfg == model.cfg
    history = window().float()
    assert torch.equal(loaded.forecast(history, Z, 5, generator=seeded(4)),
                       model.forecast(history, Z, 5, generator=seeded(4)))
    scales = [m.eval()(history, Z, 5, mean_only=True).scale for m in (loaded, model)]
    assert torch.equal(*scales) and scales[0].std() > 0


def test_in_a_periodic_box_the_noise_does_not_depend_on_the_box():
    """Moving every atom by a lattice vector moves the seeded samples by it (same draws, Cartesian noise)."""
    cell = torch.from_numpy(cell_matrix([9.0, 9.5, 10.0, 90.0, 90.0, 90.0]))
    model = model_of(stochastic=True, attention="local_global", cutoff_angstrom=3.0, max_neighbors=8)
    history = window()
    shift = cell[0] - 2 * cell[2]
    base = model.forecast(history, Z, 2 * L, cell=cell, generator=seeded(9))
    moved = model.forecast(history + shift, Z, 2 * L, cell=cell, generator=seeded(9))
    assert torch.allclose(moved - shift, base, atol=1e-9)
    assert not torch.allclose(base, model.forecast(history, Z, 2 * L, cell=cell, mean_only=True), atol=1e-4)


# ------------------------------------------------------------------------------ the likelihood and training

def test_gaussian_nll_is_the_per_coordinate_negative_log_density_and_safe_at_the_floor():
    gen = seeded(0)
    mean, target = torch.randn(2, 3, 4, 3, generator=gen), torch.randn(2, 5, 4, 3, generator=gen)
    scale = torch.rand(2, 3, 4, generator=gen) + 0.1
    density = torch.distributions.Normal(mean.double(), scale.double().unsqueeze(-1))
    expected = -density.log_prob(target[:, :3].double()).mean()
    assert float(gaussian_nll(mean, scale, target)) == pytest.approx(float(expected), rel=1e-5)
    floor = torch.full_like(scale, SCALE_FLOOR_ANGSTROM).half()
    value = gaussian_nll(mean.half(), floor, target.half())  # computed in float32 at least
    assert value.dtype == torch.float32 and torch.isfinite(value)
    mean.requires_grad_(True)
    gaussian_nll(mean, scale.requires_grad_(True), target).backward()
    assert mean.grad is None and scale.grad.abs().sum() > 0  # σ learns from the residuals, the mean does not


def test_the_loss_has_an_nll_term_for_stochastic_models_only():
    history, future = window(), window(seed=3, frames=L - 1)
    plain, noisy = model_of(), model_of(stochastic=True)
    _, parts = sti_losses(plain(history, Z, L - 1, future), history, future, LossWeights())
    assert "nll" not in parts
    total, parts = sti_losses(noisy(history, Z, L - 1, future), history, future, LossWeights(nll=2.0))
    others = 3 * parts["primary"] + parts["conjugate"] + 3 * parts["consistency"] + parts["forecast"]
    assert float(total) == pytest.approx(float(others + 2 * parts["nll"]), rel=1e-12)


class _Engine:
    def __init__(self, module) -> None:
        self.module, self.calls = module, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args[3] is not None, kwargs.get("mean_only", False)))
        return self.module(*args, **kwargs)

    def backward(self, loss) -> None:
        loss.backward()

    def step(self) -> None:
        pass


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_a_training_step_scores_the_nll_on_teacher_forced_steps(teacher_forcing):
    from asteroid_hpc.train.step import LOSS_TERMS, optimizer_step

    model = model_of(stochastic=True).train()
    frames = window(frames=M + 2 * L)
    batch = {"history": frames[:, :M], "target": frames[:, M:], "atomic_numbers": Z}
    with torch.no_grad():
        forced = model(batch["history"], Z, 2 * L, batch["target"])
        expected = float(gaussian_nll(forced.forecast, forced.scale, batch["target"]))

    class OneBatch:
        def next(self):
            return batch

    engine = _Engine(model)
    sums, _ = optimizer_step(engine, OneBatch(), TrainConfig(teacher_forcing=teacher_forcing), "cpu", torch.float64,
                             want_grad_norm=False)
    assert float(sums[1 + LOSS_TERMS.index("nll")]) == pytest.approx(expected, rel=1e-9)
    assert engine.calls == ([(True, True)] if teacher_forcing else [(False, True), (True, False)])
    assert model.scale_head.net[-1].bias.grad.abs().sum() > 0  # σ learns (its last layer starts at zero weight)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_training_input_noise_moves_the_history_and_never_the_targets(noise):
    from asteroid_hpc.train.step import optimizer_step

    torch.manual_seed(0)
    model = model_of().train()
    frames = window(frames=M + L)
    batch = {"history": frames[:, :M], "target": frames[:, M:], "atomic_numbers": Z}
    seen = []

    class Recording(_Engine):
        def __call__(self, *args, **kwargs):
            seen.append((args[0].detach().clone(), args[3].detach().clone()))
            return self.module(*args, **kwargs)

    class OneBatch:
        def next(self):
            return batch

    optimizer_step(Recording(model), OneBatch(), TrainConfig(input_noise_angstrom=noise), "cpu", torch.float64,
                   want_grad_norm=False)
    (history, target), = seen
    assert torch.equal(target, batch["target"].double())
    difference = history - batch["history"].double()
    if noise == 0:
        assert torch.equal(difference, torch.zeros_like(difference))
    else:  # independent Gaussian noise of the given width on every coordinate of every history frame
        assert float(difference.std()) == pytest.approx(noise, rel=0.15) and abs(float(difference.mean())) < noise / 5


def _random_walks(count: int, frames: int, gen: torch.Generator, drift_std: float, step_std: float) -> torch.Tensor:
    """[count, frames, N, 3]: each window a rigid drift v ~ N(0, drift_std²) per frame plus N(0, step_std²) steps."""
    start = torch.randn(count, 1, N, 3, generator=gen) * 1.5
    drift = torch.randn(count, 1, 1, 3, generator=gen) * drift_std
    steps = drift + torch.randn(count, frames, N, 3, generator=gen) * step_std
    return start + steps.cumsum(dim=1)


def test_the_likelihood_teaches_sigma_the_step_scale_of_a_gaussian_random_walk():
    """x_{t+1} = x_t + v + σ ε, v a per-window drift: given the history, frame t+1 is Gaussian about x_t + v̂
    with variance σ² + Var(v | history), known in closed form. After a short training the mean learns the drift
    and σ comes within 10 % of that conditional standard deviation."""
    torch.manual_seed(0)
    model = build_model(config(stochastic=True, history_frames=8))
    drift_std, step_std, horizon = 0.05, 0.02, L - 1
    posterior_var = 1.0 / (1.0 / drift_std**2 + 7 / step_std**2)  # 7 observed steps of the drift in 8 frames
    true_std = (step_std**2 + posterior_var) ** 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = seeded(1)
    for _ in range(300):
        frames = _random_walks(32, 8 + horizon, gen, drift_std, step_std)
        history, target = frames[:, :8], frames[:, 8:]
        loss, _ = sti_losses(model(history, Z, horizon, target), history, target, LossWeights())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    frames = _random_walks(512, 8 + horizon, seeded(2), drift_std, step_std)
    with torch.no_grad():
        out = model(frames[:, :8], Z, horizon, frames[:, 8:])
    residual_std = float((out.forecast - frames[:, 8:]).pow(2).mean().sqrt())
    persistence_std = float((frames[:, 7:8] - frames[:, 8:]).pow(2).mean().sqrt())
    assert residual_std < 1.1 * true_std < 0.5 * persistence_std  # the mean learnt the drift
    assert abs(float(out.scale.pow(2).mean().sqrt()) / true_std - 1.0) < 0.10
