"""Protocol L of `evaluate`: long free-running rollouts scored by their physics against the reference MD."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.support.cli import REPO
from tests.support.tiny import tiny_model_file

ASPIRIN = REPO / "asteroid_hpc" / "resources" / "aspirin_xtb.nc"
STRIDE = 10  # 5 fs frames of the 0.5 fs file
EV_PER_HARTREE = 27.211386245988
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903


@pytest.fixture(scope="module")
def aspirin():
    from asteroid_hpc.evaluation.trajectory import load_trajectory

    return load_trajectory(ASPIRIN)


def _score(aspirin, forecast, last_history):
    from asteroid_hpc.config.schema import EvaluateConfig
    from asteroid_hpc.evaluation.long_rollout import score_long_rollout

    reference = [aspirin.positions[::STRIDE].astype(np.float64)]
    return score_long_rollout(forecast, last_history, reference, aspirin.atomic_numbers, 5.0,
                              EvaluateConfig(energy_samples=0), "aspirin")


def test_md_itself_stays_inside_and_a_frozen_forecast_is_caught(aspirin):
    from asteroid_hpc.metrics import physics
    from tests.support.data import spun

    md = aspirin.positions[::STRIDE].astype(np.float64)
    starts = np.arange(8) * 200 + 100  # 8 windows, each continued by 80 frames (400 fs) of the true MD
    continuation = np.stack([md[s + 1:s + 81] for s in starts])
    result = _score(aspirin, continuation, md[starts])
    assert all(result.horizon_fs[name] is None for name in physics_observables()), result.horizon_fs
    assert result.horizon_fs["potential energy"] == "not computed"
    assert "not computed (evaluate.energy_samples = 0)" in result.notes[0]
    # MD's numbers are the physics module's on the reference frames
    assert result.md["kinetic temperature"]["mean"] == pytest.approx(
        physics.kinetic_temperature(md, aspirin.atomic_numbers, 5.0).mean())
    assert result.md["radius of gyration"]["mean"] == pytest.approx(
        physics.radius_of_gyration(md, aspirin.atomic_numbers).mean())
    assert len(result.bonds) == 21 and result.bond_table[0]["bond"] == "C0–C1"
    assert result.md["bond lengths"]["mean"][0] == pytest.approx(
        physics.bond_lengths(md, np.array([[0, 1]])).mean())
    assert abs(result.bond_table[0]["mean_deviation"]) < 0.02
    # the temperature's parts (stiff: bonds and angles; rigid rotation; soft) add up, for MD and each block
    assert sum(result.md["kinetic temperature"]["parts"]) == pytest.approx(result.md["kinetic temperature"]["mean"])
    for block in result.blocks:
        assert sum(block["kinetic_temperature_parts_K"]) == pytest.approx(block["kinetic_temperature_K"])
    # the same MD spun as a whole: the rotation part takes the extra temperature, the stiff part stays MD's
    turned = _score(aspirin, np.stack([spun(c, 0.01) for c in continuation]), md[starts])
    stiff, rotation, _ = turned.blocks[-1]["kinetic_temperature_parts_K"]
    assert rotation > 50.0 and result.blocks[-1]["kinetic_temperature_parts_K"][1] < 1.0
    assert stiff == pytest.approx(result.blocks[-1]["kinetic_temperature_parts_K"][0], rel=0.02)

    # the frozen model: the last frame forever; no motion, zero temperature, bonds of a real frame
    frozen = np.repeat(md[starts][:, None], 80, axis=1)
    result = _score(aspirin, frozen, md[starts])
    assert result.horizon_fs["kinetic temperature"] == 5.0
    assert result.horizon_fs["largest displacement"] == 5.0
    assert result.horizon_fs["bond lengths"] is None and result.horizon_fs["radius of gyration"] is None
    assert all(block["kinetic_temperature_K"] == 0.0 for block in result.blocks)
    assert all(block["bond_width_ratio_median"] < 0.5 for block in result.blocks)  # 8 frozen frames vary little


def physics_observables():
    from asteroid_hpc.evaluation.long_rollout import OBSERVABLES

    return [name for name in OBSERVABLES if name != "potential energy"]


def test_a_molecule_coming_apart_is_dated(aspirin):
    """A rollout that stretches every atom away from the centre at 0.2 %/frame leaves MD's bonds, Rg and
    pair distances at known lead times."""
    md = aspirin.positions[::STRIDE].astype(np.float64)
    starts = np.arange(8) * 200 + 100
    centre = md[starts].mean(axis=1, keepdims=True)
    growth = 1.0 + 0.002 * np.arange(1, 201)[None, :, None, None]
    forecast = centre[:, None] + (md[starts][:, None] - centre[:, None]) * growth
    result = _score(aspirin, forecast, md[starts])
    horizon = result.horizon_fs
    assert 0 < horizon["bond lengths"] < horizon["radius of gyration"] <= 1000.0, horizon
    blocks = result.blocks
    assert blocks[-1]["lead_fs"] == [505.0, 1000.0]
    # Rg grows with the scale: exactly Rg₀·(1 + 0.002 j) at lead j
    from asteroid_hpc.metrics import physics

    rg0 = physics.radius_of_gyration(md[starts], aspirin.atomic_numbers).mean()
    assert blocks[-1]["radius_of_gyration_angstrom"] == pytest.approx(rg0 * (1 + 0.002 * np.arange(101, 201)).mean())
    first_out = np.flatnonzero(rg0 * (1 + 0.002 * np.arange(1, 201)) > result.md["radius of gyration"]["high"])[0]
    assert horizon["radius of gyration"] == 5.0 * (first_out + 1)


def test_xtb_energy_of_aspirin_frames_matches_a_direct_tblite_call(aspirin):
    from tblite.interface import Calculator

    from asteroid_hpc.datagen.molecules import molecule_of
    from asteroid_hpc.datagen.xtb import xtb_potential_energies

    assert molecule_of(aspirin.atomic_numbers) == "aspirin"
    assert molecule_of(aspirin.atomic_numbers[::-1]) is None
    frames = aspirin.positions[[0, 5000, 19999]].astype(np.float64)
    energies = xtb_potential_energies(frames, aspirin.atomic_numbers)
    for frame, energy in zip(frames, energies):
        calc = Calculator("GFN2-xTB", np.asarray(aspirin.atomic_numbers), frame * BOHR_PER_ANGSTROM)
        calc.set("verbosity", 0)
        assert energy == pytest.approx(calc.singlepoint().get("energy") * EV_PER_HARTREE, abs=1e-4)
    assert np.ptp(energies) < 1.5  # three frames of one 500 K run: within an eV or so of each other
    broken = frames[:1].copy()
    broken[0, 0] = np.nan
    assert np.isnan(xtb_potential_energies(broken, aspirin.atomic_numbers)).all()


def test_thermal_excess_is_the_mean_above_the_minimum():
    from asteroid_hpc.evaluation.long_rollout_energy import thermal_excess

    excess = thermal_excess(np.array([-9.0, -7.0]), np.array([[-8.0, np.nan], [-5.0, -8.0]]), -10.0)
    assert excess == {"md_eV": 2.0, "forecast_eV": 3.0, "ratio": 1.5}


def test_the_relaxed_aspirin_minimum_is_below_its_md_frames_and_within_a_thermal_excess(aspirin):
    from asteroid_hpc.datagen.xtb import xtb_minimum_energy, xtb_potential_energies

    frames = aspirin.positions[[0, 5000, 19999]].astype(np.float64)
    energies = xtb_potential_energies(frames, aspirin.atomic_numbers)
    minimum = xtb_minimum_energy(frames[np.argmin(energies)], aspirin.atomic_numbers, 300, 0.01)
    # 500 K MD of a 21-atom molecule: (3N − 6)·k_B·T/2 ≈ 1.2 eV of potential energy above the minimum, give or take
    assert 0.3 < energies.mean() - minimum < 4.0


def test_protocol_l_end_to_end_on_the_tiny_model(tmp_path, capsys):
    from asteroid_hpc.cli.main import main

    model = tiny_model_file(tmp_path / "tiny.safetensors", attention="local_global", num_rbf=4, num_global_tokens=1,
                            cutoff_angstrom=4.0, symmetry="augment")
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(model), str(ASPIRIN), "-o", str(out), "--protocol", "L", "--rollout-ps", "0.1",
              "--energy-samples", "2"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    table = (out / "results.md").read_text()
    assert "### Protocol L" in table and "| kinetic temperature |" in table and "### Protocol L" in captured.out
    record = json.loads((out / "results.json").read_text())
    long = record["long_rollout"]
    assert record["protocols"] == [] and long["protocol"] == "L"
    assert long["n_rollouts"] == 8 and long["rollout_frames"] == 20 and long["frame_fs"] == 5.0
    assert [s["frame"] for s in long["starts"]] == sorted({s["frame"] for s in long["starts"]})
    assert long["molecule"] == "aspirin" and len(long["bonds"]) == 21
    energy = long["md"]["potential energy"]
    assert energy["low"] < energy["high"] < -1000
    # the relaxed minimum lies below every MD frame; MD's thermal excess is the mean above it
    assert energy["minimum"] < min(long["series"]["potential_energy_eV"]["md"])
    assert energy["thermal_excess"]["md_eV"] == pytest.approx(energy["mean"] - energy["minimum"])
    assert "Thermal excess over the relaxed minimum" in table
    # the untrained model does not keep aspirin together: its bonds leave MD's range within the 100 fs
    assert isinstance(long["horizon_fs"]["bond lengths"], float) and long["horizon_fs"]["bond lengths"] <= 100
    assert len(long["series"]["kinetic_temperature_K"]) == 8
    assert (out / "long_rollout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "error_vs_lead_time.png").exists() and not list(out.glob("*.tmp-*"))


def test_protocol_l_needs_a_model_and_trajectory_files(tmp_path, capsys):
    from asteroid_hpc.cli.main import main

    from tests.support.cli import assert_user_error

    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)

    assert_user_error(run("evaluate", "none", ASPIRIN, "-o", tmp_path / "a", "--protocol", "L"), "protocol L")
    assert_user_error(run("evaluate", "none", tmp_path, "-o", tmp_path / "b", "--protocol", "L"),
                      "protocol L reads trajectory files")
    model = tiny_model_file(tmp_path / "tiny.safetensors")
    assert_user_error(run("evaluate", model, ASPIRIN, "-o", tmp_path / "c", "--protocol", "L",
                          "--rollout-stride-fs", "0.7"), "aspirin_xtb.nc", "0.7 fs is not a whole number")
    assert_user_error(run("evaluate", model, ASPIRIN, "-o", tmp_path / "d", "--protocol", "L",
                          "--rollout-starts", "0"), "evaluate.long_rollout_starts must be >= 1")


def test_protocol_l_refuses_a_spacing_other_than_the_models(aspirin, tmp_path, capsys):
    """A model that steps 10 fs, rolled out at protocol L's default 5 fs, would give confident nonsense."""
    from asteroid_hpc.cli.main import main
    from asteroid_hpc.model import load_weights, save_weights
    from tests.support.cli import assert_user_error

    model = load_weights(tiny_model_file(tmp_path / "tiny.safetensors"))
    n_atoms = len(aspirin.atomic_numbers)
    model.data_signature = {"input_atoms": n_atoms, "atom_indices": list(range(n_atoms)),
                            "atomic_numbers": [int(z) for z in aspirin.atomic_numbers], "timestep_fs": 10.0,
                            "frame_stride": 20, "input_timestep_fs": 0.5, "topology": None}
    path = save_weights(model, tmp_path / "ten-fs.safetensors")

    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)

    assert_user_error(run("evaluate", path, ASPIRIN, "-o", tmp_path / "e", "--protocol", "L"),
                      "ten-fs.safetensors", "steps 10 fs", "evaluate.long_rollout_stride_fs=10")
