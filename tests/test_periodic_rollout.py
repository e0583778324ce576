"""Protocol L's periodic observables (asteroid_hpc.evaluation.periodic_rollout) on a synthetic water box whose
statistics are known: the MD itself passes its own targets, a frozen or exploding forecast fails them."""

import warnings

import numpy as np
import pytest

from asteroid_hpc.evaluation import periodic_rollout as pr

pytest.importorskip("MDAnalysis")

WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # TIP3P geometry, Å
FRAME_FS = 10.0


def _water_box(n_frames: int, drift_angstrom: float, oscillation_angstrom: float, seed: int = 0):
    """216 waters on a 6×6×6 lattice (3.5 Å) in a 21 Å box: molecule centres oscillate about their sites
    (Ornstein–Uhlenbeck: a stationary structure) and, with ``drift_angstrom`` > 0, also wander (a random walk per
    frame: finite diffusion); every atom jitters 0.01 Å."""
    rng = np.random.default_rng(seed)
    sites = np.stack(np.meshgrid(*[np.arange(6) * 3.5] * 3, indexing="ij"), -1).reshape(-1, 3)
    oscillation, drift, frames = np.zeros((216, 3)), np.zeros((216, 3)), []
    for _ in range(n_frames):
        oscillation = 0.8 * oscillation + rng.normal(0, oscillation_angstrom, (216, 3))
        drift = drift + rng.normal(0, drift_angstrom, (216, 3))
        centres = sites + oscillation + drift
        frames.append((centres[:, None] + WATER[None]).reshape(-1, 3) + rng.normal(0, 0.01, (648, 3)))
    z = np.tile([8, 1, 1], 216)
    bonds = np.concatenate([[[3 * w, 3 * w + 1], [3 * w, 3 * w + 2]] for w in range(216)])
    return np.array(frames), z, bonds, np.array([21.0, 21.0, 21.0, 90.0, 90.0, 90.0])


def _rollouts(frames, starts, n_leads):
    """MD's own continuations after ``starts``: (forecast [S, H, N, 3], last history frames [S, N, 3])."""
    return np.stack([frames[s + 1:s + 1 + n_leads] for s in starts]), frames[starts]


@pytest.fixture(scope="module")
def box():
    """A stationary box (no drift): structure, distances, temperature and clashes are the same at all times."""
    frames, z, bonds, cell = _water_box(1200, drift_angstrom=0.0, oscillation_angstrom=0.08)
    return frames, pr.PeriodicSystem.of(z, bonds, cell)


def _met(result) -> dict:
    return {row["target"]: row["met"] for row in result["targets"]}


def test_system_description_from_the_bonds(box):
    _, system = box
    assert len(system.waters) == 216 and system.type_names == ["H–H (water)", "H–O"]
    assert len(system.solute) == 0 and len(system.pairs) == 3 * 216


def test_the_md_itself_meets_the_structure_and_stability_targets(box):
    frames, system = box
    forecast, last = _rollouts(frames, [620, 800, 950], 200)  # later stretches of the same process
    result = pr.score_periodic_rollout(forecast, last, [frames[:600]], system, FRAME_FS, clash_angstrom=0.8)
    distances = {row["type"]: row for row in result["distances"]}
    assert distances["H–O"]["md_mean"] == pytest.approx(0.9572, abs=2e-3)
    assert distances["H–H (water)"]["md_mean"] == pytest.approx(1.5139, abs=2e-3)
    met = _met(result)
    del met["self-diffusion, relative error"]  # no drift: both MSDs are flat, their slopes noise (next test)
    assert all(met.values()), pr.targets_markdown(result)
    assert result["horizon_fs"]["largest displacement"] is None


def test_the_md_itself_meets_the_diffusion_target():
    frames, z, bonds, cell = _water_box(900, drift_angstrom=0.02, oscillation_angstrom=0.04, seed=3)
    system = pr.PeriodicSystem.of(z, bonds, cell)
    forecast, last = _rollouts(frames, [420, 560, 690], 200)
    result = pr.score_periodic_rollout(forecast, last, [frames[:400]], system, FRAME_FS, clash_angstrom=0.8)
    dynamics = result["dynamics"]
    expected = 3 * 0.02 ** 2 / (6 * FRAME_FS * 1e-3)  # Å²/ps of the molecules' random walk
    assert dynamics["diffusion_md_A2_per_ps"] == pytest.approx(expected, rel=0.15)
    assert _met(result)["self-diffusion, relative error"], pr.targets_markdown(result)


def test_a_frozen_forecast_has_no_temperature_and_no_diffusion(box):
    frames, system = box
    _, last = _rollouts(frames, [620, 800], 200)
    frozen = np.repeat(last[:, None], 200, axis=1)
    result = pr.score_periodic_rollout(frozen, last, [frames[:600]], system, FRAME_FS, clash_angstrom=0.8)
    met = _met(result)
    assert not met["kinetic temperature, relative error"] and not met["self-diffusion, relative error"]
    assert not met["H–O width ratio"] and met["H–O mean deviation (Å)"]
    assert result["horizon_fs"]["kinetic temperature"] == FRAME_FS


def test_an_exploding_forecast_blows_up_and_clashes(box):
    frames, system = box
    forecast, last = _rollouts(frames, [620, 800], 200)
    growth = np.linspace(1.0, 1.6, 200)[None, :, None, None]
    centre = forecast.mean(axis=2, keepdims=True)
    exploding = centre + (forecast - centre) * growth  # molecules stretched apart, and into each other's images
    exploding[1, 150:] += np.random.default_rng(1).normal(0, 3.0, exploding[1, 150:].shape)
    result = pr.score_periodic_rollout(exploding, last, [frames[:600]], system, FRAME_FS, clash_angstrom=0.8)
    met = _met(result)
    assert not met["no blow-up (largest displacement, Å)"] and not met["no clashes (most in one frame)"]
    assert not met["H–O mean deviation (Å)"] and not met["O–O g(r) L1 distance"]
    assert result["horizon_fs"]["H–O distance"] is not None


def test_a_distance_md_holds_constrained_gets_an_absolute_width_target(box):
    frames, system = box
    rigid = frames.copy()
    rigid.reshape(len(frames), -1, 3, 3)[:] = rigid.reshape(len(frames), -1, 3, 3)[:, :, :1] + WATER  # exact geometry
    forecast, last = _rollouts(rigid, [620, 800], 100)
    result = pr.score_periodic_rollout(forecast, last, [rigid[:600]], system, FRAME_FS, clash_angstrom=0.8)
    assert _met(result)["H–O width (Å; constrained in MD)"]
    shaken = forecast + np.random.default_rng(4).normal(0, 0.03, forecast.shape)
    result = pr.score_periodic_rollout(shaken, last, [rigid[:600]], system, FRAME_FS, clash_angstrom=0.8)
    assert not _met(result)["H–O width (Å; constrained in MD)"]


def _wrapped_water_file(path, n_frames: int = 120):
    """The drifting water box written as an MD engine would: every atom wrapped into the box, cell per frame."""
    from asteroid_hpc.data.amber import AmberWriter

    frames, z, bonds, cell = _water_box(n_frames, drift_angstrom=0.02, oscillation_angstrom=0.04, seed=5)
    frames = frames + 7.0  # molecules sit across the faces
    wrapped = frames - np.floor(frames / 21.0) * 21.0
    writer = AmberWriter(path, len(z), z, cell=True, timestep_ps=FRAME_FS / 1000)
    writer.append(wrapped, cell_lengths=np.tile(cell[:3], (n_frames, 1)), cell_angles=np.tile(cell[3:], (n_frames, 1)))
    writer.close()
    return frames, z


def test_protocol_l_end_to_end_on_a_wrapped_periodic_file(tmp_path, capsys):
    import json

    from asteroid_hpc.cli.main import main
    from asteroid_hpc.evaluation.trajectory import load_trajectory
    from asteroid_hpc.model import load_weights, save_weights
    from tests.support.tiny import tiny_model_file

    truth, z = _wrapped_water_file(tmp_path / "water.nc")
    loaded = load_trajectory(tmp_path / "water.nc")
    assert loaded.cell.shape == (120, 6) and loaded.bonds is None
    steps = np.abs(np.diff(loaded.positions, axis=0)).max()
    assert steps < 1.0  # unwrapped: no jump by a box length between frames
    # unwrapped up to one lattice translation per atom, constant in time (bonds from covalent radii come later)
    shift = (loaded.positions - truth)[0]
    np.testing.assert_allclose(loaded.positions - truth, np.broadcast_to(shift, truth.shape), atol=1e-3)
    np.testing.assert_allclose(shift / 21.0, np.round(shift / 21.0), atol=1e-4)

    model = load_weights(tiny_model_file(tmp_path / "tiny.safetensors", attention="local_global", num_rbf=4,
                                         num_global_tokens=1, cutoff_angstrom=4.0))
    model.data_signature = {"input_atoms": len(z), "atom_indices": list(range(len(z))),
                            "atomic_numbers": [int(v) for v in z], "timestep_fs": FRAME_FS, "frame_stride": 1,
                            "input_timestep_fs": FRAME_FS, "topology": None, "periodic": True}
    path = save_weights(model, tmp_path / "periodic.safetensors")
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(path), str(tmp_path / "water.nc"), "-o", str(out), "--protocol", "L",
              "--rollout-ps", "0.5", "--rollout-stride-fs", "10", "--rollout-starts", "4"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    record = json.loads((out / "results.json").read_text())["long_rollout"]
    assert record["kind"] == "periodic" and record["n_rollouts"] == 4 and record["rollout_frames"] == 50
    assert record["waters"] == 216 and record["cell"] == [21.0, 21.0, 21.0, 90.0, 90.0, 90.0]
    assert "covalent radii" in " ".join(record["notes"])
    table = (out / "results.md").read_text()
    assert "### Targets" in table and "O–O g(r) L1 distance" in table
    assert (out / "long_rollout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_protocols_in_a_box_skip_superposition_and_rigid_body_baselines(box):
    from asteroid_hpc.evaluation.protocols import ProtocolSamples
    from asteroid_hpc.evaluation.run import score_samples

    frames, system = box
    starts = np.array([10, 50, 90])
    history = np.stack([frames[s - 3:s + 1] for s in starts])
    target = np.stack([frames[s + 1:s + 3] for s in starts])
    samples = ProtocolSamples("C", "test", history, target, system.atomic_numbers, np.arange(648), np.array([1, 2]), 1,
                              FRAME_FS, starts, cell=np.tile(system.cell, (3, 1)))
    result = score_samples(samples, None)
    assert "persistence" in result.headline and "constant rotation" not in result.headline
    assert "aligned history mean" not in result.headline and not result.superposed_headline
    assert any("periodic system" in note for note in result.notes)
    open_result = score_samples(ProtocolSamples("C", "test", history, target, system.atomic_numbers, np.arange(648),
                                                np.array([1, 2]), 1, FRAME_FS, starts), None)
    assert "constant rotation" in open_result.headline and open_result.superposed_headline


def test_a_solute_is_scored_and_a_broken_rollout_does_not_stop_the_scores(box):
    """A 24-atom chain (a solute) among the waters: Rg and RMSD of its heavy atoms; one rollout blowing up to
    inf and NaN leaves the others' numbers and NaN (out of every range) for itself."""
    frames, water_system = box
    chain = np.stack([np.arange(24) * 1.5, np.zeros(24), np.zeros(24)], -1) + [1.0, 1.7, 1.7]
    jitter = np.random.default_rng(6).normal(0, 0.02, (len(frames), 24, 3))
    every = np.concatenate([frames, chain[None] + jitter], axis=1)
    z = np.concatenate([water_system.atomic_numbers, np.full(24, 6)])
    bonds = np.concatenate([np.concatenate([[[3 * w, 3 * w + 1], [3 * w, 3 * w + 2]] for w in range(216)]),
                            [[648 + i, 649 + i] for i in range(23)]])
    system = pr.PeriodicSystem.of(z, bonds, water_system.cell)
    assert len(system.solute) == 24 and len(system.waters) == 216
    forecast, last = _rollouts(every, [620, 800], 100)
    forecast[1, 60:] = np.inf
    forecast[1, 80:] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning leaks to the user
        result = pr.score_periodic_rollout(forecast, last, [every[:600]], system, FRAME_FS, clash_angstrom=0.8)
    assert "solute RMSD" in result["horizon_fs"] and "solute_rmsd_angstrom" in result["blocks"][0]
    assert not _met(result)["no blow-up (largest displacement, Å)"]
    assert result["blocks"][0]["solute_rg_angstrom"] == pytest.approx(np.sqrt(((np.arange(24) * 1.5 - 17.25) ** 2)
                                                                               .mean()), rel=0.01)
