"""Unit cells and velocities through preprocess: stored in the shards as the AMBER convention has them (MDAnalysis
and mdtraj read them back), recorded in the manifest, checked frame by frame; the read API for them; the
per-frame even-spacing check of MDAnalysis formats. Real files from MDAnalysisTests; the values are compared
with MDAnalysis's own reading of the source file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from asteroid_hpc.errors import UserError
from tests.support.data import preprocess, random_walk, write_traj
from tests.test_formats import DATA


def _universe(*files):
    import MDAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MDAnalysis.Universe(*map(str, files))


def _source_frames(universe, atoms=None):
    """MDAnalysis's positions, velocities and cells of every frame (of ``atoms``: indices)."""
    pick = slice(None) if atoms is None else atoms
    out = {"positions": [], "velocities": [], "cell": []}
    for ts in universe.trajectory:
        out["positions"].append(ts.positions[pick].copy())
        out["velocities"].append(ts.velocities[pick].copy())
        out["cell"].append(ts.dimensions.copy())
    return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def amber_box(tmp_path_factory):
    """AMBER NetCDF with velocities and an NPT orthorhombic box (ace_tip3p.nc), preprocessed into 4-frame shards."""
    out = tmp_path_factory.mktemp("amber-box") / "ds"
    stderr = _run_preprocess(out, DATA / "Amber/ace_tip3p.nc", "--topology", DATA / "Amber/ace_tip3p.parm7",
                             "data.frames_per_shard=4", "data.split_fractions=[1,0,0]")
    return out, stderr


def _run_preprocess(out, *args):
    from tests.support.cli import run_cli

    proc = run_cli("preprocess", "--no-progress", *args, "-o", out, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_shards_store_cells_and_velocities_as_mdanalysis_reads_them(amber_box):
    import netCDF4

    out, stderr = amber_box
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["periodic"], manifest["has_velocities"], manifest["cell_kind"], manifest["constant_box"]) == \
        (True, True, "orthorhombic", False)
    source = manifest["sources"][0]
    assert (source["periodic"], source["has_velocities"], source["cell_kind"], source["constant_box"]) == \
        (True, True, "orthorhombic", False)
    # NPT: one log line, and the box is accepted
    assert stderr.count("the box changes size (NPT); the model will keep the last observed box") == 1
    truth = _source_frames(_universe(DATA / "Amber/ace_tip3p.parm7", DATA / "Amber/ace_tip3p.nc"))
    assert source["first_cell"] == pytest.approx(truth["cell"][0].tolist(), rel=1e-6)
    for shard in manifest["shards"]:
        frames = slice(shard["frame_start"], shard["frame_stop"])
        stored = _universe(DATA / "Amber/ace_tip3p.parm7", out / shard["file"])
        got = _source_frames(stored)
        np.testing.assert_allclose(got["cell"], truth["cell"][frames], rtol=1e-6)
        np.testing.assert_allclose(got["velocities"], truth["velocities"][frames], rtol=1e-6, atol=1e-5)
        centred = truth["positions"][frames] - truth["positions"][frames].mean(axis=1, keepdims=True)
        np.testing.assert_allclose(got["positions"], centred, atol=1e-3)
        with netCDF4.Dataset(out / shard["file"]) as ds:  # the AMBER convention, as pmemd writes it
            assert ds["velocities"].units == "angstrom/picosecond" and ds["velocities"].scale_factor == 20.455
            ds.set_auto_scale(False)
            np.testing.assert_allclose(ds["velocities"][:] * 20.455, truth["velocities"][frames], rtol=1e-5, atol=1e-4)
            assert ds["cell_lengths"].units == "angstrom" and ds["cell_angles"].units == "degree"
            assert b"".join(ds["cell_spatial"][:]) == b"abc"


def test_mdtraj_reads_the_shard_dimensions(amber_box):
    import mdtraj

    out, _ = amber_box
    manifest = json.loads((out / "manifest.json").read_text())
    truth = _source_frames(_universe(DATA / "Amber/ace_tip3p.parm7", DATA / "Amber/ace_tip3p.nc"))["cell"]
    for shard in manifest["shards"]:
        with mdtraj.formats.NetCDFTrajectoryFile(str(out / shard["file"])) as handle:
            _, _, lengths, angles = handle.read()  # angstrom, degrees (the file's own units)
        np.testing.assert_allclose(np.concatenate([lengths, angles], axis=1),
                                   truth[shard["frame_start"]:shard["frame_stop"]], rtol=1e-6)


def test_read_api_returns_cells_and_velocities_with_coordinates(amber_box):
    from asteroid_hpc.data.windows import WindowDataset, read_source_frames

    out, _ = amber_box
    truth = _source_frames(_universe(DATA / "Amber/ace_tip3p.parm7", DATA / "Amber/ace_tip3p.nc"))
    chunk = read_source_frames(out, 0, 2, 9)  # across three shards
    assert chunk.coordinates.shape == (7, 1398, 3) and chunk.start == 2
    np.testing.assert_allclose(chunk.cell, truth["cell"][2:9], rtol=1e-6)
    np.testing.assert_allclose(chunk.velocities, truth["velocities"][2:9], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(chunk.time_ps, np.arange(3, 10))
    with pytest.raises(UserError, match="frames 8..10 of input 0 are not stored consecutively"):
        read_source_frames(out, 0, 8, 11)
    windows = WindowDataset(out, "train", history_frames=2, horizon_frames=3)
    item = windows[4]
    np.testing.assert_allclose(item["cell"].numpy(), truth["cell"][4:9], rtol=1e-6)
    assert item["history"].shape == (2, 1398, 3) and item["target"].shape == (3, 1398, 3)


def test_selection_applies_to_velocities_and_triclinic_cells_are_kept(tmp_path):
    """GROMACS .trr (rhombic dodecahedron, velocities) with an MDAnalysis selection: the stored velocities are
    those of the selected atoms, the cell is recorded as triclinic."""
    out = tmp_path / "ds"
    _run_preprocess(out, DATA / "adk_oplsaa.trr", "--topology", DATA / "adk_oplsaa.tpr",
                    "data.atom_selection=protein and name CA", "data.frames_per_shard=5",
                    "data.split_fractions=[1,0,0]", "data.center=false", "data.unwrap=false")
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["periodic"], manifest["cell_kind"], manifest["has_velocities"]) == (True, "triclinic", True)
    assert manifest["unwrapped"] is False  # data.unwrap=false: the file's own coordinates, compared below
    universe = _universe(DATA / "adk_oplsaa.tpr", DATA / "adk_oplsaa.trr")
    selected = universe.select_atoms("protein and name CA").indices
    assert manifest["atom_indices"] == selected.tolist()
    truth = _source_frames(universe, selected)
    from asteroid_hpc.data.windows import read_source_frames

    chunk = read_source_frames(out, 0, 0, 10)
    # stored in AMBER's time unit (scale_factor 20.455): float32 rounding of v / 20.455
    np.testing.assert_allclose(chunk.velocities, truth["velocities"], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(chunk.coordinates, truth["positions"])
    np.testing.assert_allclose(chunk.cell, truth["cell"], rtol=1e-6)


def test_open_systems_store_no_cells(tmp_path, capsys):
    import netCDF4

    traj = write_traj(tmp_path / "walk.nc", random_walk(300))
    preprocess(traj, "-o", tmp_path / "ds", "data.frames_per_shard=100", capsys=capsys)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert (manifest["periodic"], manifest["has_velocities"], manifest["cell_kind"], manifest["constant_box"]) == \
        (False, False, None, None)
    with netCDF4.Dataset(tmp_path / "ds" / manifest["shards"][0]["file"]) as ds:
        assert not {"cell_lengths", "cell_angles", "velocities"} & set(ds.variables)
    from asteroid_hpc.data.windows import WindowDataset

    assert "cell" not in WindowDataset(tmp_path / "ds", "train", 2, 2)[0]


# ------------------------------------------------------------------------------------------- the checks

def _check(first, cell, frames=None):
    from asteroid_hpc.data.cells import CellCheck

    check = CellCheck(first, "box.nc", lambda f: f + 100)
    cell = None if cell is None else np.asarray(cell, dtype=np.float64)
    check(cell, np.arange(2 if cell is None else len(cell)) if frames is None else frames)
    return check.box_changed


CUBE = [30.0, 30.0, 30.0, 90.0, 90.0, 90.0]
OCTAHEDRON = [40.0, 40.0, 40.0, 109.4712206, 109.4712206, 109.4712206]


@pytest.mark.parametrize("first, cells, message", [
    (CUBE, [CUBE, [np.nan] * 6], "box.nc: frame 101 has no unit cell (missing, NaN or zero)"),
    (CUBE, [CUBE, [0, 0, 0, 90, 90, 90]], "box.nc: frame 101 has no unit cell"),
    (CUBE, [CUBE, [30, -1, 30, 90, 90, 90]], "box.nc: frame 101 has a non-positive unit cell length"),
    (CUBE, [[30, 30, 30, 90, 90, 180]], "box.nc: frame 100 has a unit cell angle outside (0, 180) degrees"),
    (CUBE, [[30, 30, 30, 60, 60, 120]], "box.nc: frame 100 has a degenerate unit cell (volume about zero"),
    (CUBE, [[30, 30, 30, 10, 10, 170]], "box.nc: frame 100 has a degenerate unit cell"),  # impossible triple
    (CUBE, [CUBE, CUBE, [30, 30, 30, 90, 90, 80]], "box.nc: the unit cell changes shape at frame 102"),
    (None, [[0, 0, 0, 90, 90, 90], CUBE], "box.nc: frame 101 has a unit cell, but the first frame has none"),
])
def test_bad_cells_are_one_line_errors_naming_the_frame(first, cells, message):
    with pytest.raises(UserError) as info:
        _check(first, cells)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_good_cells_pass_and_npt_is_noticed():
    assert not _check(CUBE, [CUBE, CUBE])
    assert not _check(OCTAHEDRON, [OCTAHEDRON] * 3)
    assert _check(CUBE, [CUBE, [30.2, 30.2, 30.2, 90, 90, 90]])  # NPT: accepted, noticed
    assert not _check(None, None) and not _check(None, [[np.nan] * 6] * 2)
    from asteroid_hpc.data.cells import cell_kind

    assert (cell_kind(CUBE), cell_kind(OCTAHEDRON), cell_kind([40, 40, 40, 60, 60, 90])) == \
        ("orthorhombic", "triclinic", "triclinic")


def test_missing_cell_of_an_amber_file_is_nan():
    """AMBER NetCDF cells never written (fill values) read as NaN rows: 'no cell'."""
    from asteroid_hpc.data.amber_reader import AmberReader

    with AmberReader(DATA / "Amber/ace_tip3p.nc", read_velocities=True) as reader:
        chunk = reader.read(0, reader.n_frames)
    truth = _source_frames(_universe(DATA / "Amber/ace_tip3p.parm7", DATA / "Amber/ace_tip3p.nc"))
    np.testing.assert_allclose(chunk.cell, truth["cell"], rtol=1e-6)
    np.testing.assert_allclose(chunk.velocities, truth["velocities"], rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------------------ even spacing, every frame

def uneven_xtc(path, frame: int = 5, shift_ps: float = 30.0):
    """The CA atoms of adk_oplsaa.xtc (10 frames, 100 ps apart) written with frame ``frame`` moved in time:
    frames 0, 1 and the last keep their times, so only a check of every frame sees it."""
    import MDAnalysis

    universe = _universe(DATA / "adk_oplsaa.tpr", DATA / "adk_oplsaa.xtc")
    atoms = universe.select_atoms("name CA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MDAnalysis.Writer(str(path), atoms.n_atoms) as writer:
            for ts in universe.trajectory:
                if ts.frame == frame:
                    ts.time = ts.time + shift_ps
                writer.write(atoms)
    return path


def test_mdanalysis_formats_check_every_frame_as_it_is_read(tmp_path):
    from asteroid_hpc.data.readers import TrajectoryReader

    path = uneven_xtc(tmp_path / "uneven.xtc")
    with TrajectoryReader(path) as reader:  # frames 0, 1, last: even
        assert reader.timestep_ps == pytest.approx(100.0)
        reader.read(0, 4)
        with pytest.raises(UserError, match=r"uneven.xtc: uneven time axis: frames 4 -> 5 are 130 ps apart, the "
                                            r"mean spacing is 100 ps per frame"):
            reader.read(4, 8)
    with TrajectoryReader(path) as reader:  # chunk by chunk: the pair across chunks is checked too
        reader.read(0, 5)
        with pytest.raises(UserError, match="frames 4 -> 5 are 130 ps apart"):
            reader.read(5, 7)
    with TrajectoryReader(path) as reader:  # strided single frames: k frames apart must be k spacings
        reader.read(3, 4)
        with pytest.raises(UserError, match="frames 3 -> 5 are 230 ps apart"):
            reader.read(5, 6)
    with TrajectoryReader(path, check_time=False) as reader:  # the spacing given: not checked
        assert reader.read(0, 10).coordinates.shape[0] == 10
    with TrajectoryReader(DATA / "adk_oplsaa.xtc") as reader:  # the real file is even
        assert reader.read(0, 10).coordinates.shape[0] == 10
