"""ensemble-forecast watches its own output: bonds, displacements and clashes per member and lead time; a
blown-up member is flagged (and with ensemble.stop_on_blowup stopped), never passed off as healthy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import cli_env, run_cli
from tests.support.ensemble import ensemble_model_file, molecule_trajectory

SINGLE_THREAD = cli_env(OMP_NUM_THREADS="1")


def _water_window(frames: int = 4) -> np.ndarray:
    theta = np.radians(104.5)
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [0.96 * np.cos(theta), 0.96 * np.sin(theta), 0.0]])
    return np.repeat(water[None], frames, axis=0)


def _watch(**thresholds):
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.watch import Watch

    return Watch.from_window(_water_window(), [8, 1, 1], EnsembleConfig(**thresholds))


def test_watch_dates_a_stretching_bond_a_jump_and_a_nan():
    watch = _watch(blowup_bond_angstrom=0.5, blowup_displacement_angstrom=2.0)
    assert watch.bonds.tolist() == [[0, 1], [0, 2]] and watch.reference_lengths == pytest.approx([0.96, 0.96])
    start = _water_window(1)[0]
    frames = np.repeat(start[None], 10, axis=0)
    frames[:, 1, 0] += 0.1 * np.arange(1, 11)  # O–H1 grows by 0.1 Å per frame: 0.6 Å off at frame 6
    checks = watch.check(frames, start)
    assert checks.bond_deviation_angstrom == pytest.approx(0.1 * np.arange(1, 11))
    assert checks.displacement_angstrom == pytest.approx(np.full(10, 0.1))
    found = watch.first_blowup(checks, first_lead=21)
    assert found == {"first_frame": 26, "cause": "bond 0-1 (O–H) off by 0.60 Å (threshold 0.5)"}

    jump = np.repeat(start[None], 5, axis=0)
    jump[3:, 2] += [2.5, 0.0, 0.0]  # H2 jumps 2.5 Å at frame 3: also a bond change, checked first
    found = _watch(blowup_bond_angstrom=5.0).first_blowup(watch.check(jump, start), first_lead=1)
    assert found == {"first_frame": 4, "cause": "atom 2 (H) moved 2.50 Å in one frame (threshold 2)"}

    broken = np.repeat(start[None], 3, axis=0)
    broken[2, 0] = np.nan
    assert watch.first_blowup(watch.check(broken, start), first_lead=1)["first_frame"] == 3
    squeezed = start.copy()
    squeezed[2] = start[1] + [0.0, 0.5, 0.0]  # H…H 0.5 Å
    assert watch.clashes(np.stack([start, squeezed])).tolist() == [0, 1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("watch")
    return {"model": ensemble_model_file(root / "tiny.safetensors"),
            "molecule": molecule_trajectory(root / "molecule.nc", n_frames=40)}


def _forecast(files, outdir: Path, *overrides: str):
    return run_cli("ensemble-forecast", files["model"], files["molecule"], "-o", outdir, "ensemble.members=3",
                   "ensemble.horizon_frames=40", "ensemble.chunk_frames=8", *overrides, env=SINGLE_THREAD)


def test_the_untrained_model_blows_up_and_is_flagged_then_stopped(files, tmp_path):
    """The untrained tiny model pulls the 9-atom cluster apart within 40 frames: every member is flagged
    at the same frame with and without stopping, and stopped members end there and leave the statistics."""
    import netCDF4

    from asteroid_hpc.data.amber import read_frames

    flagged = _forecast(files, tmp_path / "flag")
    assert flagged.returncode == 0, flagged.stderr
    summary = json.loads((tmp_path / "flag" / "summary.json").read_text())
    watch = summary["watch"]
    assert watch["bonds"] > 0 and watch["blowup_bond_angstrom"] == 0.5 and watch["stopped"] == []
    assert [b["member"] for b in watch["blown_up"]] == [0, 1, 2], watch
    assert all(b["stopped"] is False and "off by" in b["cause"] for b in watch["blown_up"])
    for b in watch["blown_up"]:
        assert f"member {b['member']}: blew up at lead time frame {b['first_frame']}" in flagged.stderr
        assert b["lead_time_ps"] == pytest.approx(b["first_frame"] * 0.01)
    assert "3 blown up (member 0, 1, 2" in flagged.stdout
    with netCDF4.Dataset(tmp_path / "flag" / "summary.nc") as nc:
        bond = nc["max_bond_deviation"][:]
        assert bond.shape == (40, 3) and np.isfinite(bond).all()
        for b in watch["blown_up"]:  # the first frame over the threshold is the one named
            column = bond[:, b["member"]]
            assert column[b["first_frame"] - 1] > 0.5 and (column[:b["first_frame"] - 1] <= 0.5).all()
        assert (nc["clashes"][:] >= 0).all()
    # recomputed from the member file and its starting window: the summary's displacement series
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.perturb import inspect_initial, starting_window

    settings = EnsembleConfig(members=3, horizon_frames=40)
    window = starting_window(inspect_initial(files["molecule"], settings, 4), settings, 1, 4)
    frames = read_frames(tmp_path / "flag" / "members" / "member_00001.nc").coordinates
    steps = np.linalg.norm(np.diff(np.concatenate([window[-1:], frames]).astype(np.float64), axis=0), axis=-1)
    assert watch["per_member"][1]["frames"] == 40
    assert watch["per_member"][1]["max_displacement_angstrom"] == pytest.approx(steps.max(), rel=1e-6)

    stopped = _forecast(files, tmp_path / "stop", "ensemble.stop_on_blowup=true")
    assert stopped.returncode == 0, stopped.stderr
    summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert summary["watch"]["stopped"] == [0, 1, 2] and summary["members_in_statistics"] == []
    assert summary["spread_rms_angstrom_final"] is None and not (tmp_path / "stop" / "mean.nc").exists()
    assert "stopping it (ensemble.stop_on_blowup)" in stopped.stderr
    for b, before in zip(summary["watch"]["blown_up"], watch["blown_up"]):
        assert b["first_frame"] == before["first_frame"] and b["stopped"] is True
        marker = json.loads((tmp_path / "stop" / "members" / f"member_{b['member']:05d}.done").read_text())
        assert marker["stopped"]["first_frame"] == b["first_frame"]
        kept = read_frames(tmp_path / "stop" / "members" / f"member_{b['member']:05d}.nc").coordinates
        assert b["first_frame"] <= len(kept) == marker["frames"] < 40  # ends with the pass that blew up
        full = read_frames(tmp_path / "flag" / "members" / f"member_{b['member']:05d}.nc").coordinates
        assert np.array_equal(kept, full[:len(kept)])
    # a re-run with the same settings finds every member finished; other thresholds are another run
    assert _forecast(files, tmp_path / "stop", "ensemble.stop_on_blowup=true").returncode == 0
    other = _forecast(files, tmp_path / "stop", "ensemble.stop_on_blowup=true", "ensemble.blowup_bond_angstrom=0.7")
    assert other.returncode == 2 and "different ensemble run" in other.stderr


def test_a_healthy_short_run_flags_nothing(files, tmp_path):
    proc = run_cli("ensemble-forecast", files["model"], files["molecule"], "-o", tmp_path / "ok",
                   "ensemble.members=2", "ensemble.horizon_frames=6", env=SINGLE_THREAD)
    assert proc.returncode == 0, proc.stderr
    watch = json.loads((tmp_path / "ok" / "summary.json").read_text())["watch"]
    assert watch["blown_up"] == [] and "no member blew up" in proc.stdout
    assert all(0 < m["max_bond_deviation_angstrom"] < 0.5 for m in watch["per_member"])
