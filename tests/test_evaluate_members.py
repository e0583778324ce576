"""``evaluate.members``: a stochastic model scored on the mean of K sampled rollouts, with its path of means, the
members' CRPS and spread beside it; deterministic models and ``members: 0`` exactly as before."""

import itertools
import json
import logging
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from asteroid_hpc.config import load_config
from asteroid_hpc.config.schema import EvaluateConfig, ModelConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.evaluation import Trajectory, evaluate_samples, protocol_c
from asteroid_hpc.evaluation.members import PATH_OF_MEANS_LABEL, member_mean_label, member_scores
from asteroid_hpc.evaluation.run import model_forecast
from asteroid_hpc.metrics import coordinate_crps, crps_per_lead_time, mse_per_lead_time
from asteroid_hpc.model import build_model
from asteroid_hpc.model.thermal import SCALE_FLOOR_ANGSTROM
from tests.support.tiny import tiny_model_file

ASPIRIN = Path(__file__).resolve().parents[1] / "asteroid_hpc" / "resources" / "aspirin_xtb.nc"
M, N = 4, 6
ELEMENTS = np.array([6, 6, 8, 1, 1, 1])


def tiny(stochastic: bool, sigma_angstrom: float | None = None, seed: int = 0):
    """A float32 tiny model; with ``sigma_angstrom`` its scale head gives that σ to every atom (its last layer's
    weights are zero at initialisation, so σ = softplus(bias) + floor), 0 for the floor alone."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(history_frames=M, delay_length=3, hidden_size=16, num_heads=2, encoder_layers=1,
                                    decoder_layers=1, attention="full", num_global_tokens=1, num_rbf=4,
                                    symmetry="equivariant", stochastic=stochastic)).eval()
    if sigma_angstrom is not None:
        bias = -60.0 if sigma_angstrom == 0 else math.log(math.expm1(sigma_angstrom))
        with torch.no_grad():
            model.scale_head.net[-1].bias.fill_(bias)
    return model


@pytest.fixture(scope="module")
def samples():
    """Protocol C test windows of a smooth random walk of six atoms (0.5 fs frames)."""
    rng = np.random.default_rng(0)
    start = rng.normal(size=(1, N, 3)) * 1.5
    positions = start + (rng.normal(size=(2400, N, 3)) * 0.002).cumsum(axis=0)
    return protocol_c(Trajectory(positions, ELEMENTS, 0.5, "walk"), split="test", history_frames=M, max_samples=6)


# ------------------------------------------------------------------------------ the estimator

def test_coordinate_crps_equals_a_brute_force_sum_over_member_pairs():
    rng = np.random.default_rng(1)
    members, observed = rng.normal(size=(5, 3, 4, 2)), rng.normal(size=(3, 4, 2))
    expected = np.empty(observed.shape)
    for index in np.ndindex(observed.shape):
        x = members[(slice(None), *index)]
        pairs = sum(abs(a - b) for a, b in itertools.product(x, x)) / len(x) ** 2
        expected[index] = np.mean(np.abs(x - observed[index])) - 0.5 * pairs
    assert coordinate_crps(members, observed) == pytest.approx(expected, abs=1e-12)
    one = coordinate_crps(members[:1], observed)  # one member: the absolute error
    assert one == pytest.approx(np.abs(members[0] - observed), abs=1e-15)
    four_d = rng.normal(size=(3, 2, 4, 3))  # crps_per_lead_time is its mean over atoms and x, y, z
    assert crps_per_lead_time(four_d, four_d[0] + 0.1) == pytest.approx(
        coordinate_crps(four_d, four_d[0] + 0.1).mean(axis=(1, 2)), abs=0)
    with pytest.raises(ValueError, match="observed their shape"):
        coordinate_crps(members, observed[:2])


def test_member_scores_equal_brute_force_crps_and_spread_on_the_scored_atoms():
    rng = np.random.default_rng(2)
    members = rng.normal(size=(3, 4, 2, 5, 3)).astype(np.float32)  # [S, K, H, N, 3]
    atoms = np.array([0, 2, 3])
    target = rng.normal(size=(3, 2, len(atoms), 3))
    scores = member_scores(members, target, atoms)
    chosen = members[:, :, :, atoms].astype(np.float64)
    crps, spread = np.zeros(2), np.zeros(2)
    for s, h, a, c in itertools.product(range(3), range(2), range(3), range(3)):
        x, y = chosen[s, :, h, a, c], target[s, h, a, c]
        crps[h] += np.mean(np.abs(x - y)) - 0.5 * np.mean(np.abs(x[:, None] - x[None, :]))
    for s, h, a in itertools.product(range(3), range(2), range(3)):
        centre = chosen[s, :, h, a].mean(axis=0)
        spread[h] += np.mean(np.sum((chosen[s, :, h, a] - centre) ** 2, axis=-1))
    assert scores["crps_per_lead_angstrom"] == pytest.approx(crps / (3 * 3 * 3), abs=1e-12)
    assert scores["spread_per_lead_angstrom"] == pytest.approx(np.sqrt(spread / (3 * 3)), abs=1e-12)
    assert scores["count"] == 4 and scores["label"] == member_mean_label(4) == "ASTEROID (mean of 4 members)"
    assert scores["crps_mean_angstrom"] == pytest.approx(np.mean(crps / 27))


# ------------------------------------------------------------------------------ the model's members

def test_members_are_the_model_rolled_out_k_times_and_evaluate_scores_their_mean(samples):
    model = tiny(stochastic=True)
    members = model_forecast(model, samples, batch_size=8, seed=5, members=4)  # 2 samples per forward
    assert members.shape == (6, 4, 20, N, 3) and members.dtype == np.float32
    assert np.abs(members[:, 0] - members[:, 1]).min(axis=(1, 2, 3)).min() > 0  # every member its own draw
    result = evaluate_samples(model, samples, batch_size=8, members=4, seed=5)
    mean_label = member_mean_label(4)
    assert list(result.headline)[:2] == [mean_label, PATH_OF_MEANS_LABEL] and "ASTEROID" not in result.headline
    mean = members.mean(axis=1, dtype=np.float64)
    expected_mse = ((mean - samples.target) ** 2).mean(axis=(0, 2, 3))
    assert result.mse_per_lead_angstrom2[mean_label] == pytest.approx(expected_mse, rel=1e-12)
    path = model_forecast(model, samples, batch_size=8)
    assert result.mse_per_lead_angstrom2[PATH_OF_MEANS_LABEL] == pytest.approx(
        ((path - samples.target) ** 2).mean(axis=(0, 2, 3)), rel=1e-12)
    brute = np.mean([crps_per_lead_time(members[s], samples.target[s]) for s in range(6)], axis=0)
    assert result.members["crps_per_lead_angstrom"] == pytest.approx(brute, rel=1e-9)
    assert result.members["seed"] == 5 and result.members["count"] == 4
    assert 0 < result.members["spread_mean_angstrom"] < 0.2  # σ starts at 0.01 Å per step, 20 steps


def test_seeding_reproduces_and_different_seeds_differ(samples):
    model = tiny(stochastic=True)
    first = evaluate_samples(model, samples, members=3, seed=11)
    again = evaluate_samples(model, samples, members=3, seed=11)
    other = evaluate_samples(model, samples, members=3, seed=12)
    assert first.headline == again.headline and first.members == again.members
    assert first.members["crps_per_lead_angstrom"] != other.members["crps_per_lead_angstrom"]
    assert first.headline[member_mean_label(3)] != other.headline[member_mean_label(3)]
    assert first.headline[PATH_OF_MEANS_LABEL] == other.headline[PATH_OF_MEANS_LABEL]  # no noise in the means
    one = model_forecast(model, samples, batch_size=64, seed=11, members=3)
    assert np.array_equal(one, model_forecast(model, samples, batch_size=64, seed=11, members=3))
    # each sample's members draw from their own seeds: the batch size changes nothing but float reassociation
    assert np.abs(one - model_forecast(model, samples, batch_size=3, seed=11, members=3)).max() <= 1e-5


def test_the_mean_of_the_members_converges_to_the_path_of_means_as_sigma_goes_to_zero(samples):
    path = model_forecast(tiny(stochastic=True), samples)
    gaps, spreads = [], []
    for sigma in (1e-2, 1e-3, 0.0):  # 0: every σ at the floor
        model = tiny(stochastic=True, sigma_angstrom=sigma)
        assert np.array_equal(model_forecast(model, samples), path)  # the scale head leaves the means alone
        members = model_forecast(model, samples, seed=1, members=8)
        gaps.append(np.abs(members.mean(axis=1, dtype=np.float64) - path).max())
        spreads.append(member_scores(members, samples.target, samples.scored_atoms)["spread_mean_angstrom"])
    assert gaps[1] < 0.3 * gaps[0] and gaps[2] < 0.3 * gaps[1]
    assert gaps[2] < 20 * SCALE_FLOOR_ANGSTROM and spreads[2] < 20 * SCALE_FLOOR_ANGSTROM
    assert spreads[0] > 3 * spreads[1] > 9 * spreads[2]


def test_a_deterministic_model_with_members_is_scored_exactly_as_without_and_says_so(samples, caplog):
    model = tiny(stochastic=False)
    before = evaluate_samples(model, samples)
    with caplog.at_level(logging.WARNING):
        after = evaluate_samples(model, samples, members=4, seed=3)
    assert "deterministic: it has no members" in caplog.text
    assert after.members == {} and list(after.headline)[0] == "ASTEROID"
    assert after.headline == before.headline and after.mse_per_lead_angstrom2 == before.mse_per_lead_angstrom2
    assert after.superposed_headline == before.superposed_headline and after.notes == before.notes


def test_without_members_a_stochastic_model_is_scored_on_its_path_of_means(samples):
    model = tiny(stochastic=True)
    result = evaluate_samples(model, samples)
    path = model_forecast(model, samples)
    assert list(result.headline)[0] == "ASTEROID" and result.members == {}
    atoms = samples.scored_atoms  # (all six: indexed as score_samples does, so the sums run in the same order)
    assert result.mse_per_lead_angstrom2["ASTEROID"] == mse_per_lead_time(path[:, :, atoms],
                                                                          samples.target[:, :, atoms]).tolist()


def test_members_setting_is_zero_or_at_least_two():
    assert EvaluateConfig().members == 0 and EvaluateConfig(members=2).members == 2
    for bad in (1, -1):
        with pytest.raises(UserError, match="evaluate.members must be 0"):
            load_config(None, [f"evaluate.members={bad}"])


# ------------------------------------------------------------------------------ the CLI

def test_cli_on_the_embedded_aspirin_writes_the_members_columns(tmp_path, capsys):
    from asteroid_hpc.cli.main import main

    model = tiny_model_file(tmp_path / "thermal.safetensors", stochastic=True)
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(model), str(ASPIRIN), "-o", str(out), "--protocol", "c", "--max-samples", "5",
              "--members", "4"])
    captured = capsys.readouterr()
    proc = subprocess.CompletedProcess([], exit_info.value.code, captured.out, captured.err)
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads((out / "results.json").read_text())["protocols"]
    members = record["members"]
    assert members["count"] == 4 and members["seed"] == 0 and len(members["crps_per_lead_angstrom"]) == 20
    assert all(v > 0 for v in members["crps_per_lead_angstrom"] + members["spread_per_lead_angstrom"])
    assert list(record["headline"])[:2] == ["ASTEROID (mean of 4 members)", "ASTEROID (path of means)"]
    table = (out / "results.md").read_text()
    assert "| members | CRPS mean (Å) |" in table and "| ASTEROID (mean of 4 members) |" in table
    assert "| ASTEROID (path of means) |" in table and "the model is given 4 history frames" in table
    assert (out / "error_vs_lead_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
