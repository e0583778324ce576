"""OpenMM periodic systems: DCD + PDB topology read back with bonds and cells, seeds, resume, rigid water, preprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.datagen.openmm_md import OpenMMRunSpec, generate_openmm_md, work_dir
from asteroid_hpc.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TIP3P_OH_ANGSTROM = 0.9572
TIP3P_HH_ANGSTROM = 1.5139  # 2 · 0.9572 · sin(104.52° / 2)


def _spec(**changes) -> OpenMMRunSpec:
    """A 2 nm TIP3P box (774 atoms): 50 equilibration steps, 40 frames 10 fs apart in chunks of 10."""
    base = OpenMMRunSpec(system="water", box_nm=2.0, equilibration_ps=0.1, production_ps=0.4, frame_interval_fs=10.0,
                         seed=3, chunk_frames=10, minimize_max_iterations=50)
    return replace(base, **changes)


def _frames(dcd: Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions [F, N, 3] and cells [F, 6] of an OpenMM DCD through MDAnalysis."""
    import MDAnalysis as mda

    u = mda.Universe(str(dcd.with_suffix(".pdb")), str(dcd))
    frames = [(ts.positions.copy(), ts.dimensions.copy()) for ts in u.trajectory]
    return np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames])


@pytest.fixture(scope="module")
def water(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("water") / "water.dcd"
    report = generate_openmm_md(_spec(), out, command="test", progress=False)
    assert report is not None and report.n_frames == 40
    return out


def test_output_files_read_with_elements_bonds_and_cells(water):
    import MDAnalysis as mda

    from asteroid_hpc.data.topology import read_topology

    report = json.loads(water.with_name("water.dcd.json").read_text())
    assert not work_dir(water).exists() and water.with_suffix(".md").is_file()
    topology = read_topology(water.with_suffix(".pdb"))
    n_waters = report["n_waters"]
    assert topology.n_atoms == report["n_atoms"] == 3 * n_waters == 774
    assert topology.element_source == "file"
    np.testing.assert_array_equal(topology.atomic_numbers, np.tile([8, 1, 1], n_waters))
    oxygens = 3 * np.arange(n_waters)
    expected = np.sort(np.concatenate([np.stack([oxygens, oxygens + 1], 1), np.stack([oxygens, oxygens + 2], 1)]),
                       axis=0)
    np.testing.assert_array_equal(np.unique(np.sort(topology.bonds, axis=1), axis=0), expected)

    u = mda.Universe(str(water.with_suffix(".pdb")), str(water))
    assert len(u.trajectory) == 40 and u.trajectory.dt == pytest.approx(0.01, rel=1e-4)
    positions, cells = _frames(water)
    np.testing.assert_allclose(cells[:, :3], np.broadcast_to(report["box_angstrom"], (40, 3)), rtol=1e-6)
    np.testing.assert_allclose(cells[:, 3:], 90.0)
    assert report["box_angstrom"] != [20.0, 20.0, 20.0]  # the NPT equilibration moved the box
    assert report["spec"]["seed"] == 3 and report["versions"]["openmm"] and report["ms_per_step"] > 0
    assert report["production_steps"] == 40 * 5 and report["engine"]["platform"] == "CPU"


def test_rigid_water_holds_and_molecules_are_wrapped_whole(water):
    positions, cells = _frames(water)
    oxygen, h1, h2 = positions[:, 0::3], positions[:, 1::3], positions[:, 2::3]
    for a, b, length in ((oxygen, h1, TIP3P_OH_ANGSTROM), (oxygen, h2, TIP3P_OH_ANGSTROM),
                         (h1, h2, TIP3P_HH_ANGSTROM)):
        distance = np.linalg.norm(a - b, axis=-1)  # no minimum image: molecules must be written whole
        np.testing.assert_allclose(distance, length, atol=2e-3)
    box = cells[:, None, :3]
    centres = positions.reshape(len(positions), -1, 3, 3).mean(axis=2)
    assert (centres > -1.0).all() and (centres < box + 1.0).all()  # every molecule wrapped near the box
    assert (positions.min(axis=1) < 1.0).all() and (positions.max(axis=1) > box[:, 0] - 1.0).all()


def test_seeded_runs_are_identical_and_seeds_differ(water, tmp_path):
    again = generate_openmm_md(_spec(), tmp_path / "again.dcd", progress=False)
    assert again.n_frames == 40
    expected = _frames(water)
    for got, want in zip(_frames(tmp_path / "again.dcd"), expected):
        np.testing.assert_array_equal(got, want)
    generate_openmm_md(_spec(seed=4, production_ps=0.1), tmp_path / "other.dcd", progress=False)
    assert not np.allclose(_frames(tmp_path / "other.dcd")[0], expected[0][:10], atol=1e-3)


def test_interrupted_run_resumes_to_the_same_frames(water, tmp_path):
    out = tmp_path / "resumed.dcd"
    assert generate_openmm_md(_spec(), out, max_chunks=2, progress=False) is None
    partial = work_dir(out) / "trajectory.dcd"
    assert not out.exists() and not out.with_suffix(".pdb").exists() and partial.exists()
    with open(partial, "ab") as fh:  # frames written after the last checkpoint, the last one cut short
        fh.write(os.urandom(3 * (56 + 3 * (8 + 4 * 774)) + 100))
    with pytest.raises(UserError, match="other settings.*threads"):
        generate_openmm_md(_spec(threads=2), out, progress=False)
    generate_openmm_md(_spec(), out, progress=False)
    for got, want in zip(_frames(out), _frames(water)):
        np.testing.assert_array_equal(got, want)


def test_tool_killed_resumes_to_the_same_frames(water, tmp_path):
    """The tool killed (SIGKILL) after its first production checkpoint resumes and writes the uninterrupted frames."""
    out = tmp_path / "killed.dcd"
    args = [sys.executable, str(REPO / "tools" / "gen_openmm_md.py"), "water", "--box-nm", "2.0",
            "--equilibration-ps", "0.1", "--production-ps", "0.4", "--seed", "3", "--chunk-frames", "10",
            "--minimize-max-iterations", "50", "--progress", "log", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = work_dir(out) / "state.npz"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not (state.exists() and _frames_done(state) > 0):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be interrupted"
    done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    assert "resuming after frame" in done.stderr
    for got, want in zip(_frames(out), _frames(water)):
        np.testing.assert_array_equal(got, want)
    assert "exists, skipped" in subprocess.run(args, check=True, capture_output=True, text=True).stderr


def test_run_killed_while_finishing_completes_on_the_next_run(water, tmp_path, monkeypatch):
    import asteroid_hpc.datagen.openmm_report as openmm_report

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "finishing.dcd"
    monkeypatch.setattr(openmm_report, "write_report_md", killed)  # after the topology moved, before the DCD
    with pytest.raises(KeyboardInterrupt):
        generate_openmm_md(_spec(), out, progress=False)
    assert out.with_suffix(".pdb").exists() and not out.exists()
    monkeypatch.undo()
    assert generate_openmm_md(_spec(), out, progress=False).n_frames == 40
    assert not work_dir(out).exists()
    for got, want in zip(_frames(out), _frames(water)):
        np.testing.assert_array_equal(got, want)


def _frames_done(state: Path) -> int:
    try:
        with np.load(state) as npz:
            return int(npz["frames"])
    except (OSError, ValueError, KeyError):  # being replaced
        return 0


def test_preprocess_accepts_the_water_trajectory(water, tmp_path, capsys):
    from tests.support.data import preprocess

    preprocess(water, "--topology", water.with_suffix(".pdb"), "-o", tmp_path / "ds", "model.history_frames=3",
               "data.horizon_frames=3", "data.split_fractions=[1,0,0]", capsys=capsys)  # 40 frames: one split
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["n_atoms"] == 774 and manifest["timestep_fs"] == pytest.approx(10.0, rel=1e-4)
    assert manifest["atomic_numbers"] == [8, 1, 1] * 258 and manifest["split"]["ranges"]["0"]["train"] == [0, 40]


def test_villin_topology_keeps_every_bond(tmp_path):
    from openmm import app

    from asteroid_hpc.data.topology import read_topology
    from asteroid_hpc.datagen.openmm_files import write_pdb_with_bonds
    from asteroid_hpc.datagen.openmm_systems import villin_pdb_path

    pdb = app.PDBFile(str(villin_pdb_path()))
    assert pdb.topology.getNumAtoms() == 8867
    written = read_topology(write_pdb_with_bonds(tmp_path / "villin.pdb", pdb.topology, pdb.positions))
    expected = np.sort([[a.index, b.index] for a, b in pdb.topology.bonds()], axis=1)
    np.testing.assert_array_equal(np.unique(np.sort(written.bonds, axis=1), axis=0), np.unique(expected, axis=0))
    np.testing.assert_array_equal(written.atomic_numbers, [a.element.atomic_number for a in pdb.topology.atoms()])
    assert written.element_source == "file"


def test_topology_bonds_survive_ter_records_between_chains(tmp_path):
    """PDBFile numbers a TER record after each chain; the CONECT records must use the same serials."""
    from openmm import Vec3, app, unit

    from asteroid_hpc.data.topology import read_topology
    from asteroid_hpc.datagen.openmm_files import write_pdb_with_bonds

    topology, positions = app.Topology(), []
    for k in range(3):
        residue = topology.addResidue("HOH", topology.addChain())
        o = topology.addAtom("O", app.element.oxygen, residue)
        for name, dx in (("H1", 0.1), ("H2", -0.1)):
            topology.addBond(o, topology.addAtom(name, app.element.hydrogen, residue))
        positions += [Vec3(k, 0, 0), Vec3(k + 0.1, 0.05, 0), Vec3(k - 0.1, 0.05, 0)]
    topology.setUnitCellDimensions(Vec3(3, 3, 3) * unit.nanometer)
    written = read_topology(write_pdb_with_bonds(tmp_path / "chains.pdb", topology, positions * unit.nanometer))
    np.testing.assert_array_equal(np.unique(np.sort(written.bonds, axis=1), axis=0),
                                  [[0, 1], [0, 2], [3, 4], [3, 5], [6, 7], [6, 8]])
    assert (tmp_path / "chains.pdb").read_text().count("TER") == 3


@pytest.mark.parametrize("changes, match", [
    ({"frame_interval_fs": 5.0}, "frame_interval_fs must be a whole multiple of timestep_fs"),
    ({"production_ps": 0.405}, "production_ps must be a whole multiple"),
    ({"box_nm": 1.5}, "shorter than twice"),
    ({"system": "villin"}, "box_nm is for the water box only"),
    ({"system": "argon"}, "unknown system"),
    ({"threads": 0}, "threads must be positive"),
])
def test_bad_settings_are_user_errors(changes, match):
    with pytest.raises(UserError, match=match):
        _spec(**changes)


def test_output_must_be_named_dcd(tmp_path):
    with pytest.raises(UserError, match="DCD"):
        generate_openmm_md(_spec(), tmp_path / "water.nc", progress=False)


@pytest.mark.slow
def test_villin_runs_with_hbond_constraints(tmp_path):
    from asteroid_hpc.data.topology import read_topology

    spec = OpenMMRunSpec(system="villin", equilibration_ps=0.0, production_ps=0.04, frame_interval_fs=20.0,
                         minimize_max_iterations=20, chunk_frames=1)
    report = generate_openmm_md(spec, tmp_path / "villin.dcd", progress=False)
    assert report.n_atoms == 8867 and report.constraints == "HBonds" and report.n_frames == 2
    from openmm import app

    from asteroid_hpc.datagen.openmm_systems import villin_pdb_path

    source = app.PDBFile(str(villin_pdb_path())).topology
    x_h = np.array([[a.index, b.index] for a, b in source.bonds() if a.residue.name != "HOH"
                    and "H" in (a.element.symbol, b.element.symbol)])
    assert len(x_h) > 200
    positions, cells = _frames(tmp_path / "villin.dcd")
    np.testing.assert_allclose(cells[:, :3], [[49.163, 45.981, 38.869]] * 2, atol=1e-3)  # NVT: the PDB's box
    lengths = np.linalg.norm(positions[:, x_h[:, 0]] - positions[:, x_h[:, 1]], axis=-1)
    np.testing.assert_allclose(lengths[0], lengths[1], atol=2e-3)  # bonds to H constrained
    assert read_topology(tmp_path / "villin.pdb").n_atoms == 8867


def test_cost_against_openmm_on_the_same_periodic_system(water, tmp_path):
    """tools/cost_report.py on a periodic system: OpenMM on the trajectory's own PDB system and the model from
    its last frames, both timed in one run; ns/day follow from the measured CPU times."""
    import json
    import subprocess
    import sys

    from asteroid_hpc.data.topology import read_topology
    from asteroid_hpc.evaluation.cost_periodic import PeriodicCostReport
    from asteroid_hpc.model import load_weights, save_weights
    from tests.support.cli import REPO, cli_env
    from tests.support.tiny import tiny_model_file

    report = PeriodicCostReport("water", 774, 100, 5e-3, 10.0, 20, 1, 2.5e-2, 1000)
    assert report.openmm_ns_per_day == pytest.approx(86400 / 5e-3 * 2e-6)  # 34.56 ns/day
    assert report.forecast_ns_per_day == pytest.approx(86400 / 2.5e-2 * 10e-6)  # also 34.56
    assert "forecast / OpenMM: 1.00x" in report.markdown()

    topology = water.with_suffix(".pdb")
    z = read_topology(topology).atomic_numbers
    model = load_weights(tiny_model_file(tmp_path / "tiny.safetensors", attention="local_global", num_rbf=4,
                                         num_global_tokens=1, cutoff_angstrom=4.0))
    model.data_signature = {"input_atoms": len(z), "atom_indices": list(range(len(z))),
                            "atomic_numbers": [int(v) for v in z], "timestep_fs": 10.0, "frame_stride": 1,
                            "input_timestep_fs": 10.0, "topology": None, "periodic": True}
    path = save_weights(model, tmp_path / "periodic.safetensors")
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "cost_report.py"), str(path), "water",
                           "--trajectory", str(water), "--topology", str(topology), "--frames", "4",
                           "--md-steps", "20", "-o", str(out)], capture_output=True, text=True, timeout=300,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["n_atoms"] == len(z) and record["forecast_stride_fs"] == 10.0
    assert record["openmm_cpu_seconds_per_step"] > 0 and record["model_cpu_seconds_per_frame"] > 0
    assert record["speedup"] == pytest.approx(record["forecast_ns_per_day"] / record["openmm_ns_per_day"])


def test_the_distances_openmm_constrains_are_found_and_held_by_a_rollout(water, tmp_path, capsys):
    """Rigid TIP3P (SETTLE): every O–H and H–H is found fixed in real frames and protocol L's rollouts keep them."""
    import torch

    from asteroid_hpc.cli.main import main
    from asteroid_hpc.data.topology import read_topology
    from asteroid_hpc.geometry import cell_matrix
    from asteroid_hpc.model import load_weights, save_weights
    from asteroid_hpc.model.constraints import held_distances
    from tests.support.tiny import tiny_model_file

    positions, cells = _frames(water)
    topology = read_topology(water.with_suffix(".pdb"))
    cell = torch.as_tensor(cell_matrix(cells[:1]))
    held = held_distances(topology.bonds, topology.atomic_numbers)(torch.as_tensor(positions[None, :4]), cell)
    assert len(held) == 3 * 258
    lengths = held.lengths[0].numpy()
    assert np.isclose(lengths, TIP3P_OH_ANGSTROM, atol=1e-4).sum() == 2 * 258
    assert np.isclose(lengths, TIP3P_HH_ANGSTROM, atol=1e-4).sum() == 258

    model = load_weights(tiny_model_file(tmp_path / "tiny.safetensors", attention="local_global", num_rbf=4,
                                         num_global_tokens=1, cutoff_angstrom=4.0))
    z = topology.atomic_numbers
    model.data_signature = {"input_atoms": len(z), "atom_indices": list(range(len(z))),
                            "atomic_numbers": [int(v) for v in z], "timestep_fs": 10.0, "frame_stride": 1,
                            "input_timestep_fs": 10.0, "topology": None, "periodic": True}
    path = save_weights(model, tmp_path / "periodic.safetensors")
    scored = {}
    for setting in ("auto", "none"):
        out = tmp_path / setting
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(path), str(water), "--topology", str(water.with_suffix(".pdb")), "-o", str(out),
                  "--protocol", "L", "--rollout-ps", "0.1", "--rollout-stride-fs", "10", "--rollout-starts", "2",
                  f"evaluate.constraints={setting}"])
        assert exit_info.value.code == 0, capsys.readouterr().err
        record = json.loads((out / "results.json").read_text())["long_rollout"]
        scored[setting] = {row["type"]: row for row in record["distances"]}
        assert ("774 bond and 1–3 distances" in " ".join(record["notes"])) == (setting == "auto")
    for name in ("H–O", "H–H (water)"):
        assert abs(scored["auto"][name]["mean_deviation"]) < 1e-4 and scored["auto"][name]["forecast_width"] < 1e-4
        assert scored["none"][name]["forecast_width"] > 1e-3  # the untrained model alone breaks them
