"""model.local_geometry=sampled: the fit of the stiff distances' motion, the step that imposes it, the model around it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support.cli import REPO, run_cli
from tests.support.tiny import tiny_model_config

ASPIRIN = REPO / "asteroid_hpc" / "resources" / "aspirin_xtb.nc"
OH = [8, 1]
A1, A2, MU, SIGMA = 1.2, -0.5, 0.97, 0.004  # a stable second-order autoregression of the O–H length


def _oh_trajectory(n_frames: int, seed: int = 0) -> np.ndarray:
    """O at the origin, H on x at a length following d_t = μ + A1 (d_{t−1} − μ) + A2 (d_{t−2} − μ) + σ ε."""
    rng = np.random.default_rng(seed)
    d = np.full(n_frames + 100, MU)
    for t in range(2, len(d)):
        d[t] = MU + A1 * (d[t - 1] - MU) + A2 * (d[t - 2] - MU) + SIGMA * rng.standard_normal()
    frames = np.zeros((n_frames, 2, 3))
    frames[:, 1, 0] = d[100:]
    return frames


def _stationary_std() -> float:
    """The standard deviation of the AR(2) above (Yule–Walker)."""
    rho1 = A1 / (1 - A2)
    return SIGMA / np.sqrt(1 - A1 * rho1 - A2 * (A1 * rho1 + A2))


def test_the_fit_recovers_a_known_autoregression_of_a_bond():
    from asteroid_hpc.model.local_geometry import fit_local_geometry

    state = fit_local_geometry([_oh_trajectory(20000)], OH)
    assert state["pairs"].tolist() == [[0, 1]] and state["excluded_pairs"].shape == (0, 2)
    assert float(state["mean"][0]) == pytest.approx(MU, abs=5e-4)
    assert state["transition"][0].tolist() == pytest.approx([A1, A2], abs=0.03)
    assert float(state["noise"][0, 0]) == pytest.approx(SIGMA, rel=0.03)


def test_runs_are_fitted_within_themselves_never_across_their_ends():
    from asteroid_hpc.model.local_geometry import fit_local_geometry

    # 2 000 independent runs of 10 frames: lag pairs across their ends would pull the coefficients toward 0
    state = fit_local_geometry([_oh_trajectory(10, seed=k) for k in range(2000)], OH)
    assert state["transition"][0].tolist() == pytest.approx([A1, A2], abs=0.05)


def test_sampling_from_a_frozen_proposal_gives_the_bonds_mean_and_width():
    from asteroid_hpc.model.local_geometry import LocalGeometry, fit_local_geometry

    geometry = LocalGeometry(fit_local_geometry([_oh_trajectory(20000)], OH)).double()
    window = torch.as_tensor(_oh_trajectory(4, seed=1))[None]
    step = geometry.stepper(window, torch.Generator().manual_seed(0))
    lengths, frame = [], window[:, -1]
    for _ in range(20000):
        frame = step(frame)  # the proposal is the last frame: all motion comes from the sampler
        lengths.append(float(torch.linalg.vector_norm(frame[0, 1] - frame[0, 0])))
    lengths = np.array(lengths[100:])
    assert lengths.mean() == pytest.approx(MU, abs=1e-3)
    assert lengths.std() == pytest.approx(_stationary_std(), rel=0.08)
    lag1 = np.corrcoef(lengths[1:], lengths[:-1])[0, 1]
    assert lag1 == pytest.approx(A1 / (1 - A2), abs=0.03)


def _peroxide(n_frames: int, seed: int = 0) -> np.ndarray:
    """H0–O1–O2–H3 with stiff bonds and angles and a free torsion (a rotor); O1→O2 along x."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n_frames, 4, 3))
    oo, oh0, oh3 = (np.array([1.45, 0.97, 0.97])[:, None] + 0.01 * rng.standard_normal((3, n_frames)))
    angle0, angle3 = np.deg2rad(100 + rng.standard_normal((2, n_frames)))
    torsion = rng.uniform(-np.pi, np.pi, n_frames)
    frames[:, 2, 0] = oo
    frames[:, 0] = oh0[:, None] * np.stack([np.cos(angle0), np.sin(angle0), 0 * angle0], axis=1)
    frames[:, 3] = frames[:, 2] + oh3[:, None] * np.stack(
        [-np.cos(angle3), np.sin(angle3) * np.cos(torsion), np.sin(angle3) * np.sin(torsion)], axis=1)
    return frames


def test_a_rotor_is_left_free_and_its_atoms_are_kept_apart():
    from asteroid_hpc.model.local_geometry import LocalGeometry, fit_local_geometry

    frames = _peroxide(2000)
    state = fit_local_geometry([frames], [1, 8, 8, 1])
    assert sorted(map(tuple, state["pairs"].tolist())) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    assert state["excluded_pairs"].tolist() == [[0, 3]]  # the H–H of the torsion: its spread is a rotor's
    closest = float(state["closest"][0])
    assert closest == pytest.approx(np.linalg.norm(frames[:, 3] - frames[:, 0], axis=-1).min())
    geometry = LocalGeometry(state).double()
    proposal = torch.as_tensor(frames[:1]).clone()
    proposal[0, 3] = proposal[0, 0] + torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)  # H on top of H
    kept = geometry.impose(proposal, geometry.mean[None])
    assert float(torch.linalg.vector_norm(kept[0, 3] - kept[0, 0])) >= closest - 1e-3
    bonds = torch.linalg.vector_norm(kept[0, state["pairs"][:, 1]] - kept[0, state["pairs"][:, 0]], dim=-1)
    assert bonds.tolist() == pytest.approx(state["mean"].tolist(), abs=1e-3)
    centre = lambda x: (x[0] / geometry.inverse_mass[:, None]).sum(0) / (1 / geometry.inverse_mass).sum()  # noqa
    assert centre(kept).tolist() == pytest.approx(centre(proposal).tolist(), abs=1e-9)  # mass-weighted moves


def test_what_the_data_cannot_support_is_a_one_line_error():
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.model.local_geometry import fit_local_geometry

    with pytest.raises(UserError, match="too few"):
        fit_local_geometry([_oh_trajectory(6)], OH, where="data/x")
    with pytest.raises(UserError, match="needs bonds"):
        fit_local_geometry([_oh_trajectory(200) * 3.0], OH)  # 2.9 Å apart: no bond
    with pytest.raises(UserError, match="up to 512 atoms"):
        fit_local_geometry([np.zeros((10, 600, 3))], [1] * 600)


@pytest.fixture(scope="module")
def aspirin_geometry():
    """The local geometry of the embedded aspirin trajectory at 5 fs (its first 1 500 frames) and its frames."""
    from asteroid_hpc.evaluation.trajectory import load_trajectory
    from asteroid_hpc.model.local_geometry import fit_local_geometry

    aspirin = load_trajectory(ASPIRIN)
    frames = aspirin.positions[::10].astype(np.float64)
    return fit_local_geometry([frames[:1500]], aspirin.atomic_numbers), frames, aspirin.atomic_numbers


def _model(state, seed: int = 0):
    from asteroid_hpc.model import build_model

    torch.manual_seed(seed)
    cfg = tiny_model_config(local_geometry="sampled" if state is not None else "free")
    return build_model(cfg, local_geometry=state).eval()


def test_a_model_with_a_local_geometry_keeps_its_means_and_samples_its_free_runs(aspirin_geometry):
    state, frames, numbers = aspirin_geometry
    plain, sampled = _model(None), _model(state)
    history = torch.as_tensor(frames[1600:1604], dtype=torch.float32)[None].repeat(2, 1, 1, 1)
    z = torch.as_tensor(numbers)
    means = sampled.forecast(history, z, 30, mean_only=True)
    assert torch.equal(means, plain.forecast(history, z, 30))  # protocols A, B, C score exactly the model
    from asteroid_hpc.model.thermal import row_generators

    runs = sampled.forecast(history, z, 30, generator=row_generators([(0, 0), (0, 1)]))
    again = sampled.forecast(history[:1], z, 30, generator=row_generators([(0, 0)]))
    # row 0's draws are its own, whatever the batch (the model's batched forward differs from the single one by
    # ~1e-7 Å, which the untrained model's wild proposals amplify over a rollout; the exact check is the next test)
    assert torch.allclose(runs[0, :1], again[0, :1], atol=1e-5)
    assert not torch.allclose(runs[0], runs[1])
    pairs, mean = state["pairs"], state["mean"]
    lengths = torch.linalg.vector_norm(runs[..., pairs[:, 1], :] - runs[..., pairs[:, 0], :], dim=-1).double()
    free = torch.linalg.vector_norm(means[..., pairs[:, 1], :] - means[..., pairs[:, 0], :], dim=-1).double()
    x = torch.as_tensor(frames[:1500])
    md = float((torch.linalg.vector_norm(x[:, pairs[:, 1]] - x[:, pairs[:, 0]], dim=-1) - mean).abs().mean())
    # the untrained model's own path leaves the stiff distances; the sampled one keeps them as MD does
    assert float((lengths - mean).abs().mean()) < 1.5 * md and float((free - mean).abs().mean()) > 3 * md


def test_each_row_is_sampled_and_imposed_as_if_it_were_alone(aspirin_geometry):
    from asteroid_hpc.model.local_geometry import LocalGeometry
    from asteroid_hpc.model.thermal import row_generators

    state, frames, _ = aspirin_geometry
    geometry = LocalGeometry(state)
    window = torch.as_tensor(frames[[np.arange(1600, 1604), np.arange(1700, 1704)]])
    proposals = window[:, -1] + 0.05 * torch.randn(2, 21, 3, generator=torch.Generator().manual_seed(1),
                                                  dtype=torch.float64)
    proposals[1, 13] = proposals[1, 0]  # a hydrogen on a carbon: row 1 alone needs the excluded volume
    both = geometry.stepper(window, row_generators([(3, 0), (3, 1)]))(proposals)
    for row in range(2):
        alone = geometry.stepper(window[row:row + 1], row_generators([(3, row)]))(proposals[row:row + 1])
        gap = float((both[row:row + 1] - alone).abs().max())
        assert gap < 1e-5, gap


def test_the_local_geometry_travels_with_the_weights_and_is_refused_where_it_cannot_apply(aspirin_geometry,
                                                                                          tmp_path):
    from asteroid_hpc.errors import UserError
    from asteroid_hpc.model import load_weights, save_weights

    state, frames, numbers = aspirin_geometry
    path = save_weights(_model(state), tmp_path / "m.safetensors")
    loaded = load_weights(path)
    assert loaded.cfg.local_geometry == "sampled"
    assert torch.equal(loaded.local_geometry.transition, state["transition"])
    history = torch.as_tensor(frames[1600:1604], dtype=torch.float32)[None]
    z = torch.as_tensor(numbers)
    with pytest.raises(UserError, match="isolated molecules"):
        loaded.forecast(history, z, 3, cell=torch.eye(3) * 30.0)
    with pytest.raises(UserError, match="needs, and only it takes"):
        _model(None).__class__(tiny_model_config(local_geometry="sampled"))
    with pytest.raises(Exception, match="model.local_geometry"):
        tiny_model_config(local_geometry="bogus")


@pytest.fixture(scope="module")
def aspirin_dataset(tmp_path_factory):
    """The embedded aspirin trajectory preprocessed at 5 fs with the tiny config."""
    dataset = tmp_path_factory.mktemp("local-geometry") / "aspirin"
    proc = run_cli("preprocess", str(ASPIRIN), "-o", str(dataset), "--config", str(REPO / "configs/tiny/train.yaml"),
                   "data.frame_stride=10", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return dataset


@pytest.mark.slow
def test_trained_with_a_local_geometry_end_to_end_its_rollout_keeps_the_bonds(aspirin_dataset, tmp_path):
    """train (model.local_geometry=sampled) → export → protocol L: no clash, bonds at MD's means and widths."""
    from tests.support.train import run_train

    run = tmp_path / "run"
    trained = run_train(aspirin_dataset, run, "train.max_steps=3", "train.checkpoint_every=3", "train.val_every=3",
                        "data.frame_stride=10", "model.local_geometry=sampled")
    import re

    fitted = re.search(r"local geometry: (\d+) stiff distances", trained.stderr)
    assert fitted and int(fitted[1]) >= 21 + 32, trained.stderr[-3000:]  # aspirin's bonds and angles, stiff torsions
    model = tmp_path / "m.safetensors"
    assert run_cli("export", str(run), str(model)).returncode == 0
    out = tmp_path / "eval"
    proc = run_cli("evaluate", str(model), str(ASPIRIN), "-o", str(out), "--protocol", "L", "--rollout-ps", "0.5",
                   "--energy-samples", "0")
    assert proc.returncode == 0, proc.stderr
    long = json.loads((out / "results.json").read_text())["long_rollout"]
    assert all(block["clashes_per_frame"] == 0 for block in long["blocks"])
    assert max(block["bond_mean_deviation_max_angstrom"] for block in long["blocks"]) < 0.03
    assert all(0.6 < block["bond_width_ratio_median"] < 1.5 for block in long["blocks"])


def _add_local_geometry(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools/add_local_geometry.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_the_tool_gives_a_trained_model_its_local_geometry(aspirin_dataset, tmp_path):
    from asteroid_hpc.model import load_weights
    from tests.support.tiny import make_tiny_dataset, tiny_model_file

    model = tiny_model_file(tmp_path / "m.safetensors")
    out = tmp_path / "lg.safetensors"
    proc = _add_local_geometry(model, aspirin_dataset, out)
    assert proc.returncode == 0, proc.stderr
    plain, sampled = load_weights(model), load_weights(out)
    assert sampled.cfg.local_geometry == "sampled" and len(sampled.local_geometry.pairs) >= 21 + 32
    history = torch.randn(1, 4, 21, 3)
    z = torch.as_tensor([6, 6, 8, 8, 6, 6, 6, 6, 6, 6, 6, 8, 8] + [1] * 8)
    assert torch.equal(sampled.forecast(history, z, 4, mean_only=True), plain.forecast(history, z, 4))
    # the tiny ethanol dataset is too short for a fit of its stiff distances' motion: one line, exit 2, no file
    proc = _add_local_geometry(model, make_tiny_dataset(tmp_path), tmp_path / "no.safetensors")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "too few" in proc.stderr, proc.stderr
    assert not (tmp_path / "no.safetensors").exists()


def test_an_ensemble_of_a_local_geometry_model_samples_its_members_keeps_them_whole_and_resumes(aspirin_geometry,
                                                                                                 tmp_path):
    """ensemble-forecast: each member draws its own local geometry (members differ), none blows up, and a member
    resumed from its written frames continues exactly as it would have."""
    from asteroid_hpc.model import save_weights
    from tests.support.ensemble import member_frames, truncate_to_partial

    state, _, _ = aspirin_geometry
    model = save_weights(_model(state), tmp_path / "m.safetensors")

    def forecast(out):
        proc = run_cli("ensemble-forecast", model, ASPIRIN, "-o", out, "ensemble.members=3", "ensemble.horizon_frames=12",
                       "ensemble.chunk_frames=4", "ensemble.batch_members=3", timeout=180)
        assert proc.returncode == 0, proc.stderr
        return json.loads((out / "summary.json").read_text())

    summary = forecast(tmp_path / "run")
    assert summary["watch"]["blown_up"] == [] and all(m["frames_with_clashes"] == 0
                                                      for m in summary["watch"]["per_member"])
    members = [member_frames(tmp_path / "run", k) for k in range(3)]
    assert np.abs(members[0] - members[1]).max() > 1e-3  # seeded per member: not one trajectory three times
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", out)
    for name in ("summary.json", "summary.nc", "mean.nc", "COMPLETE"):
        (out / name).unlink()
    truncate_to_partial(out, 1, 4)
    forecast(out)
    assert np.array_equal(member_frames(out, 1), members[1])
