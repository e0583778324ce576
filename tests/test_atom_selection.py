"""data.atom_selection: keywords and the MDAnalysis selection language, recorded in the manifest and carried
into the model, which evaluate and ensemble-forecast then apply to the whole system it was cut from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.errors import UserError
from tests.support.cli import assert_user_error, run_cli


def _test_data() -> Path:
    spec = importlib.util.find_spec("MDAnalysisTests")  # not imported: its __init__ imports pytest plugins
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("MDAnalysisTests is a test dependency (pip install MDAnalysisTests)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


DATA = _test_data()


# ------------------------------------------------------------------------------------------ choosing atoms

def test_keywords_and_element_selections_without_a_topology(tmp_path):
    from asteroid_hpc.data.selection import select_atoms

    numbers = np.array([6, 1, 8, 1, 7, 1])
    assert select_atoms("all", numbers, "in.nc") == [0, 1, 2, 3, 4, 5]
    assert select_atoms("heavy", numbers, "in.nc") == [0, 2, 4]
    assert select_atoms("indices:0,3-4", numbers, "in.nc") == [0, 3, 4]
    assert select_atoms("element C O", numbers, "in.nc") == [0, 2]
    assert select_atoms("not element H and index 1:4", numbers, "in.nc") == [2, 4]
    with pytest.raises(UserError) as info:  # names need a topology
        select_atoms("name CA", numbers, "in.nc")
    message = str(info.value)
    assert message.startswith("in.nc: data.atom_selection 'name CA': ") and "--topology" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="in.nc: data.atom_selection 'element Fe' selects no atoms"):
        select_atoms("element Fe", numbers, "in.nc")


def test_selection_language_on_a_real_topology():
    """GROMACS adenylate kinase in TIP4P water (47 681 atoms): selections agree with MDAnalysis's own."""
    import MDAnalysis

    from asteroid_hpc.data.selection import select_atoms
    from asteroid_hpc.data.topology import read_topology

    tpr = DATA / "adk_oplsaa.tpr"
    numbers = read_topology(tpr).atomic_numbers
    universe = MDAnalysis.Universe(str(tpr))
    for selection in ("resname SOL and name OW", "protein and not name H*", "backbone"):
        picked = select_atoms(selection, numbers, "md.xtc", tpr)
        assert picked == [int(i) for i in universe.select_atoms(selection).indices] and picked
    assert set(numbers[select_atoms("resname SOL and name OW", numbers, "md.xtc", tpr)]) == {8}
    assert 1 not in set(numbers[select_atoms("protein and not name H*", numbers, "md.xtc", tpr)])
    with pytest.raises(UserError) as info:
        select_atoms("protein and nott", numbers, "md.xtc", tpr)
    assert str(info.value) == f"{tpr}: data.atom_selection 'protein and nott': Unknown selection token: 'nott'"


def test_preprocess_records_a_language_selection(tmp_path):
    out = tmp_path / "ow"
    proc = run_cli("preprocess", DATA / "adk_oplsaa.xtc", "--topology", DATA / "adk_oplsaa.tpr", "-o", out,
                   "--no-progress", "data.split_fractions=[1,0,0]", "data.atom_selection=resname SOL and name OW",
                   "data.unwrap=false")  # water 100 ps apart: too far to unwrap
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["atom_selection"] == "resname SOL and name OW"
    assert len(manifest["atom_indices"]) == manifest["n_atoms"] == 11084 and set(manifest["atomic_numbers"]) == {8}
    assert manifest["atom_indices"][0] == 3341 and manifest["atom_indices"][1] - manifest["atom_indices"][0] == 4

    from asteroid_hpc.data.signature import signature_of_manifest

    signature = signature_of_manifest(manifest)
    assert signature["atom_selection"] == "resname SOL and name OW" and signature["input_atoms"] == 47681


def test_preprocess_refuses_a_bad_selection_in_one_line(tmp_path):
    proc = run_cli("preprocess", DATA / "adk_oplsaa.xtc", "--topology", DATA / "adk_oplsaa.tpr", "-o",
                   tmp_path / "bad", "--no-progress", "data.atom_selection=protein and nott")
    line = assert_user_error(proc, "adk_oplsaa.tpr: data.atom_selection 'protein and nott'",
                             "Unknown selection token")
    assert "\n" not in line.strip()


# ------------------------------------------------------------------------ a heavy-atom model, whole inputs

def _heavy_model(tmp_path: Path, trajectory: Path) -> tuple[Path, list[int]]:
    """A tiny model with a reference structure of the trajectory's heavy atoms, signed as if trained on them."""
    from asteroid_hpc.data.amber import AmberReader
    from asteroid_hpc.model import build_model, save_weights
    from tests.support.tiny import tiny_model_config

    with AmberReader(trajectory) as reader:
        numbers, coords, dt_ps = reader.atomic_numbers, reader.read(0, reader.n_frames).coordinates, reader.timestep_ps
    heavy = [i for i, z in enumerate(numbers) if z > 1]
    reference = coords[:, heavy].mean(axis=0)
    import torch

    torch.manual_seed(0)
    model = build_model(tiny_model_config(reference_structure="training_mean", attention="local_global",
                                          max_neighbors=16), (reference - reference.mean(axis=0)).tolist())
    model.data_signature = {"input_atoms": len(numbers), "atom_selection": "heavy", "atom_indices": heavy,
                            "atomic_numbers": [int(numbers[i]) for i in heavy], "timestep_fs": dt_ps * 1000,
                            "frame_stride": 1, "input_timestep_fs": dt_ps * 1000, "topology": None}
    return save_weights(model, tmp_path / "heavy.safetensors"), heavy


@pytest.fixture
def whole_system(tmp_path):
    from tests.support.ensemble import write_trajectory

    rng = np.random.default_rng(3)  # a vibrating 12-atom molecule, MD17's 0.5 fs frames
    base, phases = rng.normal(scale=1.5, size=(12, 3)), rng.uniform(0, 2 * np.pi, size=(12, 3))
    frames = base + 0.05 * np.sin(0.07 * np.arange(3000)[:, None, None] + phases)
    trajectory = write_trajectory(tmp_path / "whole.nc", frames, [6, 1, 8, 1, 1, 6, 7, 1, 6, 1, 8, 1],
                                  timestep_ps=0.0005)
    model, heavy = _heavy_model(tmp_path, trajectory)
    assert 2 < len(heavy) < 12
    return trajectory, model, heavy


def test_evaluate_applies_the_models_selection_to_the_whole_system(tmp_path, whole_system):
    trajectory, model, heavy = whole_system
    out = tmp_path / "eval"
    proc = run_cli("evaluate", model, trajectory, "-o", out, "--protocol", "C", "--max-samples", "4")
    assert proc.returncode == 0, proc.stderr
    assert f"the model's {len(heavy)} of 12 atoms (its data.atom_selection 'heavy')" in proc.stderr
    record = json.loads((out / "results.json").read_text())
    by_protocol = {p["protocol"]: p for p in record["protocols"]}
    assert set(by_protocol) == {"C"} and by_protocol["C"]["n_atoms_scored"] == len(heavy)


def test_trajectory_loader_cuts_the_whole_system_to_the_models_atoms(whole_system):
    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.evaluation.trajectory import load_trajectory
    from asteroid_hpc.model import load_weights

    trajectory, model, heavy = whole_system
    signature = load_weights(model).data_signature
    traj = load_trajectory(trajectory, signature=signature, model=model)
    np.testing.assert_array_equal(traj.positions, read_frames(trajectory).coordinates[:, heavy])
    assert list(traj.atomic_numbers) == signature["atomic_numbers"]


def test_ensemble_forecast_of_the_selection_and_of_the_full_system(tmp_path, whole_system):
    """Member files of the selected atoms by default; with ensemble.write_full_system every atom, the selected
    ones exactly those of the default run, the others held at the last starting frame."""
    from asteroid_hpc.data.amber import AmberReader, read_frames

    trajectory, model, heavy = whole_system
    common = ("ensemble.members=2", "ensemble.horizon_frames=6", "ensemble.chunk_frames=4")
    selected, full = tmp_path / "sel", tmp_path / "full"
    proc = run_cli("ensemble-forecast", model, trajectory, "-o", selected, *common)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("ensemble-forecast", model, trajectory, "-o", full, *common, "ensemble.write_full_system=true")
    assert proc.returncode == 0, proc.stderr
    last = read_frames(trajectory).coordinates[-1]
    others = [i for i in range(12) if i not in heavy]
    for member in range(2):
        name = f"members/member_{member:05d}.nc"
        with AmberReader(selected / name) as a, AmberReader(full / name) as b:
            assert a.n_atoms == len(heavy) and b.n_atoms == 12 and a.n_frames == b.n_frames == 6
            np.testing.assert_array_equal(b.atomic_numbers[heavy], a.atomic_numbers)
            ours, whole = a.read(0, 6).coordinates, b.read(0, 6).coordinates
        np.testing.assert_array_equal(whole[:, heavy], ours)
        np.testing.assert_array_equal(whole[:, others], np.broadcast_to(last[others], (6, len(others), 3)))
    for run in (selected, full):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["n_atoms"] == len(heavy)
    assert json.loads((selected / "summary.json").read_text())["spread_rms_angstrom_final"] == \
        json.loads((full / "summary.json").read_text())["spread_rms_angstrom_final"]
    # a continued run's window comes from a full-system file as the model's atoms
    from asteroid_hpc.ensemble.batch import MemberState, window_at
    from asteroid_hpc.ensemble.member import MemberJob

    start = np.zeros((4, len(heavy), 3), dtype=np.float32)
    window = window_at(start, MemberJob(full, 0, 6, 4, {}), MemberState(6, 6, True), 6, np.asarray(heavy))
    with AmberReader(selected / "members/member_00000.nc") as a:
        np.testing.assert_array_equal(window, a.read(2, 6).coordinates)


def test_full_system_flag_and_a_reference_in_another_format(tmp_path, whole_system):
    """--full-system / --selected-atoms win over ensemble.write_full_system; --reference takes any trajectory
    format (here extended XYZ of the whole system, cut to the model's atoms): its scores equal those against
    the same frames of the model's atoms as AMBER NetCDF."""
    from ase import Atoms
    from ase.io import write

    from asteroid_hpc.data.amber import AmberReader, read_frames
    from tests.support.ensemble import write_trajectory

    trajectory, model, heavy = whole_system
    truth = read_frames(trajectory, 0, 40).coordinates
    with AmberReader(trajectory) as reader:
        numbers = reader.atomic_numbers
    xyz = tmp_path / "truth.xyz"
    write(xyz, [Atoms(numbers=numbers, positions=x) for x in truth], format="extxyz")
    heavy_nc = write_trajectory(tmp_path / "truth_heavy.nc", truth[:, heavy], numbers[heavy], timestep_ps=0.0005)
    common = ("ensemble.members=2", "ensemble.horizon_frames=6", "--reference-start", "3")
    runs = {"full": ("--full-system", "ensemble.write_full_system=false", "--reference", xyz),
            "selected": ("--selected-atoms", "ensemble.write_full_system=true", "--reference", heavy_nc)}
    summaries = {}
    for name, options in runs.items():
        proc = run_cli("ensemble-forecast", model, trajectory, "-o", tmp_path / name, *common, *options)
        assert proc.returncode == 0, proc.stderr
        with AmberReader(tmp_path / name / "members/member_00000.nc") as member:
            assert member.n_atoms == (12 if name == "full" else len(heavy))
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    for summary in summaries.values():
        assert summary["reference"].pop("path") and summary["reference"]["lead_times_scored"] == 6
    assert summaries["full"]["reference"] == summaries["selected"]["reference"]


def test_reference_reader_takes_any_format_and_the_whole_system():
    """A reference in AMBER ASCII (no atom count of its own: the input's is used), read as the ensemble's atoms;
    one of other atoms is a one-line error."""
    import warnings

    import MDAnalysis

    from asteroid_hpc.ensemble.summary import Reference, open_reference

    path = DATA / "Amber/ache.mdcrd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no element column in the .prmtop
        truth = MDAnalysis.Universe(str(DATA / "Amber/ache.prmtop"), str(path)).trajectory[2].positions
    with open_reference(Reference(path, 0, 252), 252, None) as reader:
        np.testing.assert_array_equal(reader.read(2, 3).coordinates[0], truth)
    picked = np.array([0, 5, 9])
    with open_reference(Reference(path, 0, 252), 3, picked) as reader:
        np.testing.assert_array_equal(reader.read(2, 3).coordinates[0], truth[picked])
    with pytest.raises(UserError, match=r"ache.mdcrd: has 252 atoms, the ensemble has 7$"):
        open_reference(Reference(path, 0, 252), 7, None)
