"""A periodic trajectory wrapped into its box but written without its cell (data/wrapped.py): refused with one
line, never read as an open system; and no false alarm on any real open file the suite reads.

Hits on real periodic files with their cell stripped: a TIP3P box from OpenMM (molecules wrapped whole: the
atoms jump across the faces) and GROMACS's adenylate kinase in water (MDAnalysisTests; bonds cut by the faces)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.data import wrapped
from asteroid_hpc.data.readers import TrajectoryReader, read_frames
from asteroid_hpc.data.topology import read_topology
from asteroid_hpc.data.wrapped import box_jump, check_bonds_whole, cut_bond
from asteroid_hpc.errors import UserError
from tests.support.cli import assert_user_error, run_cli
from tests.support.data import write_traj
from tests.test_formats import DATA

ASPIRIN = Path(wrapped.__file__).parents[1] / "resources" / "aspirin_xtb.nc"

# real files without a cell, or periodic ones whose atoms are not wrapped (continuous, or whole molecules
# sampled far apart): (topology or None, trajectory)
OPEN_OR_UNWRAPPED = [
    ("adk.psf", "adk_dims.dcd"),  # CHARMM, no cell
    ("Amber/ache.prmtop", "Amber/ache.mdcrd"),  # AMBER ASCII, no cell
    ("Amber/bala.prmtop", "Amber/bala.ncdf"),
    ("Amber/ace_tip3p.parm7", "Amber/ace_tip3p.nc"),
    ("tip125_tric_C36.psf", "tip125_tric_C36.dcd"),
    ("cobrotoxin.tpr", "cobrotoxin.h5md"),
    ("SiN_tric_namd.psf", "SiN_tric_namd.dcd"),
]


def openmm_water_frames(folder: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """A real TIP3P box from the project's OpenMM tool (2 nm, 40 frames 10 fs apart, molecules wrapped whole by
    OpenMM) in ``folder``: (frames [F, N, 3] Å, atomic numbers, PDB topology)."""
    from asteroid_hpc.datagen.openmm_md import OpenMMRunSpec, generate_openmm_md

    out = folder / "water.dcd"
    folder.mkdir(parents=True, exist_ok=True)
    generate_openmm_md(OpenMMRunSpec(system="water", box_nm=2.0, equilibration_ps=0.1, production_ps=0.4,
                                     frame_interval_fs=10.0, seed=3, chunk_frames=10, minimize_max_iterations=50),
                       out, command="test", progress=False)
    with TrajectoryReader(out) as reader:
        chunk = reader.read(0, reader.n_frames)
        assert chunk.cell is not None  # the file has its cell: read as periodic, no check
    pdb = out.with_suffix(".pdb")
    return np.asarray(chunk.coordinates), read_topology(pdb).atomic_numbers, pdb


def adk_xtc_without_cell(out: Path) -> Path:
    """GROMACS's solvated adenylate kinase (MDAnalysisTests: 47 681 atoms, 10 frames) written again by
    MDAnalysis as an XTC without its box, to ``out``."""
    import MDAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = MDAnalysis.Universe(str(DATA / "adk_oplsaa.tpr"), str(DATA / "adk_oplsaa.xtc"))
        with MDAnalysis.Writer(str(out), n_atoms=len(u.atoms)) as writer:
            for ts in u.trajectory:
                ts.dimensions = None
                writer.write(u.atoms)
    return out


@pytest.fixture(scope="module")
def openmm_water(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, Path]:
    return openmm_water_frames(tmp_path_factory.mktemp("water"))


@pytest.fixture(scope="module")
def adk_without_cell(tmp_path_factory) -> Path:
    out = adk_xtc_without_cell(tmp_path_factory.mktemp("adk") / "adk_nocell.xtc")
    with TrajectoryReader(out, check_time=False) as reader:
        first = reader.read(0, 1).cell
        assert first is None or np.all(first[:, :3] == 0)  # no box written
    return out


@pytest.mark.parametrize("topology, trajectory", OPEN_OR_UNWRAPPED, ids=[t for _, t in OPEN_OR_UNWRAPPED])
def test_no_false_alarm_on_real_open_or_unwrapped_files(topology, trajectory):
    """Every frame (also every 2nd and 5th), and the topology's bonds on the first frame: silent."""
    top = read_topology(DATA / topology)
    with TrajectoryReader(DATA / trajectory, n_atoms=len(top.atomic_numbers), check_time=False) as reader:
        x = np.asarray(reader.read(0, reader.n_frames).coordinates)
    for stride in (1, 2, 5):
        assert box_jump(x[::stride]) is None
    assert cut_bond(x[0], top.bonds) is None and cut_bond(x[-1], top.bonds) is None


def test_no_false_alarm_on_the_aspirin_demo_file():
    with TrajectoryReader(ASPIRIN) as reader:
        x = np.asarray(reader.read(0, reader.n_frames).coordinates)  # 20 000 frames through the check
        assert sum(len(c.coordinates) for c in reader.iter_chunks(1000, 0, None, 7)) == len(x[::7])
    for stride in (1, 10, 50, 500):
        assert box_jump(x[::stride]) is None
    # every pair of atoms closer than 1.6 Å as a bond: none is cut
    close = np.argwhere(np.triu(np.linalg.norm(x[0][:, None] - x[0][None], axis=-1) < 1.6, 1))
    assert len(close) >= 20 and cut_bond(x[0], close) is None


def test_openmm_water_without_its_cell_is_caught_by_the_jumps(openmm_water, tmp_path):
    frames, numbers, _ = openmm_water
    jump = box_jump(frames)
    assert jump is not None and jump.jump_angstrom > 15  # a 20 Å box
    for stride in (2, 5, 10, 20):  # frames up to 200 fs apart
        assert box_jump(frames[::stride]) is not None
    assert box_jump(frames[:, :, :]) == jump and box_jump(frames[:jump.pair + 1]) is None
    stripped = write_traj(tmp_path / "water_nocell.nc", frames, numbers, timestep_ps=0.01)
    with pytest.raises(UserError, match=rf"water_nocell.nc: atom {jump.atom} jumps .* between frames "
                                        rf"{jump.pair} and {jump.pair + 1}, nearly the system's extent"):
        read_frames(stripped)
    # streamed in chunks of one frame: the jump between two chunks is caught as well
    with TrajectoryReader(stripped) as reader, pytest.raises(UserError, match="no unit cell"):
        for _ in reader.iter_chunks(1):
            pass
    # the override, for an open system the heuristic would take for a wrapped one
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(wrapped.ALLOW_ENV, "1")
        assert read_frames(stripped).coordinates.shape == frames.shape


def test_openmm_water_without_its_cell_refused_by_preprocess(openmm_water, tmp_path):
    frames, numbers, pdb = openmm_water
    stripped = write_traj(tmp_path / "water_nocell.nc", frames, numbers, timestep_ps=0.01)
    proc = run_cli("preprocess", stripped, "--topology", pdb, "-o", tmp_path / "ds", "--no-progress",
                   "model.history_frames=3", "data.horizon_frames=2", "data.split_fractions=[1,0,0]")
    assert_user_error(proc, "water_nocell.nc", "jumps", "the file has no unit cell", "write the unit cell")
    assert not (tmp_path / "ds").exists()


def test_openmm_water_without_its_cell_refused_by_evaluate_loading(openmm_water, tmp_path):
    from asteroid_hpc.evaluation.trajectory import load_trajectory

    frames, numbers, _ = openmm_water
    stripped = write_traj(tmp_path / "water_nocell.nc", frames, numbers, timestep_ps=0.01)
    with pytest.raises(UserError, match="water_nocell.nc: atom .* jumps"):
        load_trajectory(stripped)


def test_per_atom_wrapping_is_caught_by_the_cut_bonds(tmp_path):
    """Every atom wrapped alone (molecules cut): the cut bond on the first frame, whatever the frame spacing."""
    from tests.support.ensemble import water_box_frames, wrap_atoms

    frames, numbers, bonds, cell = water_box_frames(n_frames=4)
    assert cut_bond(frames[0], bonds) is None
    found = cut_bond(wrap_atoms(frames, cell)[0], bonds)
    assert found is not None and found[2] > 0.5 * cell[0]
    with pytest.raises(UserError, match=r"x.nc: the bond \d+-\d+ is .* long in frame 0 .* no unit cell"):
        check_bonds_whole("x.nc", wrap_atoms(frames, cell)[0], bonds)


def test_gromacs_adk_without_its_cell_refused_by_preprocess(adk_without_cell, tmp_path):
    proc = run_cli("preprocess", adk_without_cell, "--topology", DATA / "adk_oplsaa.tpr", "-o", tmp_path / "ds",
                   "--no-progress", "data.timestep_fs=100", "data.split_fractions=[1,0,0]", "model.history_frames=3",
                   "data.horizon_frames=2", timeout=300)
    # the topology's own warning (its virtual sites) may come first; the error is the one line that ends it
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert "error:" in error and all(f in error for f in ("adk_nocell.xtc", "the bond", "long in frame 0",
                                                          "the file has no unit cell")), proc.stderr
    assert not (tmp_path / "ds").exists()


def test_a_jump_that_changes_the_extent_is_not_taken_for_wrapping():
    """One atom thrown far out (a corrupt frame) changes the extent: another check's business, not this one;
    the same atom crossing the face at x = 20 Å to x = 0 is a wrap."""
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.uniform(0, 20, size=(1, 500, 3)), 3, axis=0) + rng.normal(scale=0.05, size=(3, 500, 3))
    frames[:, 7, 0] = 19.99
    thrown = frames.copy()
    thrown[2, 7, 0] += 40.0
    assert box_jump(thrown) is None
    frames[2, 7, 0] = 0.01
    hit = box_jump(frames)
    assert hit is not None and (hit.pair, hit.atom, hit.axis) == (1, 7, 0)


def test_partial_velocities_are_named_in_one_line(tmp_path, caplog):
    """Two inputs, one with velocities: none are stored (the shards hold them only when every input has them),
    and one warning names the input without them; with both (or neither) having them, no such line."""
    import logging

    from asteroid_hpc.config import load_config
    from asteroid_hpc.data.amber import AmberWriter
    from asteroid_hpc.data.preprocess import run_preprocess
    from tests.support.data import ATOMIC_NUMBERS, random_walk

    def walk(path: Path, velocities: bool, seed: int) -> Path:
        x = random_walk(120, seed=seed)
        with AmberWriter(path, x.shape[1], ATOMIC_NUMBERS, timestep_ps=0.0005, velocities=velocities) as writer:
            writer.append(x, velocities=np.gradient(x, axis=0) / 0.0005 if velocities else None)
        return path

    with_v, without_v = walk(tmp_path / "with_v.nc", True, 0), walk(tmp_path / "without_v.nc", False, 1)
    cfg = load_config(None, ["data.split=by_file", f"data.val_inputs=[{without_v}]", "model.history_frames=3",
                             "data.horizon_frames=2"])
    with caplog.at_level(logging.WARNING, logger="asteroid_hpc"):
        manifest = run_preprocess([str(with_v), str(without_v)], tmp_path / "mixed", cfg, progress=False)
    assert manifest["has_velocities"] is False
    lines = [r.getMessage() for r in caplog.records if "velocities" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(str(without_v)) and "no velocities" in lines[0], lines
    caplog.clear()
    both = walk(tmp_path / "with_v2.nc", True, 2)
    cfg = load_config(None, ["data.split=by_file", f"data.val_inputs=[{both}]", "model.history_frames=3",
                             "data.horizon_frames=2"])
    with caplog.at_level(logging.WARNING, logger="asteroid_hpc"):
        assert run_preprocess([str(with_v), str(both)], tmp_path / "both", cfg, progress=False)["has_velocities"]
    assert not [r for r in caplog.records if "velocities" in r.getMessage()]
