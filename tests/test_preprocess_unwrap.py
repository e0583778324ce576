"""Unwrapping wired into preprocess: periodic inputs come out continuous (no step of half a box between
frames) with whole molecules, bit-identical to unwrapping the whole source in one pass, whatever the shards,
the gaps between splits, dropped frames, resume; data.unwrap=false keeps the file's coordinates; a stride too
coarse to unwrap is one line. A synthetic wrapped water box (AmberWriter + a PDB topology with CONECT
bonds), and real files: GROMACS adk (.xtc + .tpr, rhombic dodecahedron) and AMBER ace_tip3p (.nc + .parm7)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.data.amber import AmberWriter, read_frames
from asteroid_hpc.data.unwrap import Unwrapper, cell_vectors, selected_bonds
from tests.support.data import preprocess
from tests.test_formats import DATA
from tests.test_unwrap import bond_lengths, molecular_trajectory, wrap_at_random

BOX = [21.0, 22.0, 23.0, 90.0, 90.0, 90.0]
TRICLINIC = [28.0, 28.0, 28.0, 60.0, 60.0, 90.0]  # rhombic dodecahedron
N_WATERS = 40


def water_box(root: Path, box=BOX, n_frames: int = 120, seed: int = 3, nan_frames=(),
              jump_frame: int | None = None) -> tuple[Path, Path, dict]:
    """A wrapped water box: ``N_WATERS`` rigid waters diffusing (0.5 Å steps) through ``box``, every atom
    of every frame at a random periodic image (molecules split across faces, jumps of a box length), written
    with AmberWriter (cells per frame); its topology as a PDB with CONECT bonds. ``jump_frame``: every atom
    moves by (8, 8, 8) Å there (no wrap tells it from a jump). Returns (trajectory, topology, truth: the
    continuous frames and the bonds)."""
    x, bonds, _ = molecular_trajectory(box, n_frames=n_frames, seed=seed, counts=(N_WATERS, 0, 0))
    if jump_frame is not None:
        x[jump_frame:] += 8.0
    cells = np.tile(np.asarray(box, float), (n_frames, 1))
    wrapped = wrap_at_random(x, cells, seed=seed + 1).astype(np.float32)
    for f in nan_frames:
        wrapped[f, 4] = np.nan
    numbers = [8, 1, 1] * N_WATERS
    path = root / "water.nc"
    with AmberWriter(path, x.shape[1], numbers, cell=True, timestep_ps=0.01) as writer:
        writer.append(wrapped, cell_lengths=cells[:, :3], cell_angles=cells[:, 3:])
    return path, _pdb(root / "water.pdb", x[0], numbers, bonds), {"x": x, "bonds": bonds, "wrapped": wrapped,
                                                                  "cells": cells}


def _pdb(path: Path, x0: np.ndarray, numbers, bonds) -> Path:
    import MDAnalysis

    n = len(numbers)
    universe = MDAnalysis.Universe.empty(n, n_residues=n // 3, atom_resindex=np.arange(n) // 3, trajectory=True)
    universe.add_TopologyAttr("name", ["OW", "HW1", "HW2"] * (n // 3))
    universe.add_TopologyAttr("elements", ["O", "H", "H"] * (n // 3))
    universe.add_TopologyAttr("resname", ["HOH"] * (n // 3))
    universe.add_TopologyAttr("bonds", [tuple(b) for b in bonds.tolist()])
    universe.atoms.positions = x0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        universe.atoms.write(str(path), bonds="all")
    return path


def _shards(out: Path) -> tuple[dict, dict[int, dict]]:
    """The manifest and, per source, its stored frames {strided frame: coordinates [n, 3]}."""
    manifest = json.loads((out / "manifest.json").read_text())
    frames: dict[int, dict] = {}
    for shard in manifest["shards"]:
        x = read_frames(out / shard["file"]).coordinates
        kept = [f for f in range(shard["frame_start"], shard["frame_stop"]) if f not in shard["dropped_frames"]]
        assert len(kept) == len(x)
        frames.setdefault(shard["source"], {}).update(zip(kept, x))
    return manifest, frames


def _one_pass(wrapped: np.ndarray, cells: np.ndarray, bonds, keep=None) -> np.ndarray:
    """Unwrapping the whole (strided) source in one pass, as preprocess stores it with data.center=false."""
    keep = np.arange(len(wrapped)) if keep is None else np.asarray(keep)
    return Unwrapper(wrapped.shape[1], bonds)(wrapped[keep], cells[keep]).astype(np.float32)


def _max_step(x: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(x, axis=0), axis=-1).max())


def _max_stored_step(frames: dict) -> float:
    """The longest step of any atom between consecutive stored frames {frame: [n, 3]}."""
    return max(float(np.linalg.norm(frames[f + 1] - frames[f], axis=-1).max()) for f in frames if f + 1 in frames)


OPTS = ("data.frames_per_shard=16", "data.chunk_frames=7", "model.history_frames=4", "data.horizon_frames=3",
        "data.center=false")


@pytest.mark.parametrize("box", [BOX, TRICLINIC], ids=["orthorhombic", "rhombic dodecahedron"])
def test_a_wrapped_water_box_comes_out_whole_continuous_and_as_one_pass(tmp_path, capsys, box):
    traj, pdb, truth = water_box(tmp_path, box)
    half_width = 0.5 * min(box[:3]) * (np.sqrt(0.5) if box is TRICLINIC else 1.0)
    assert bond_lengths(truth["wrapped"], truth["bonds"]).max() > half_width  # molecules split across faces
    assert _max_step(truth["wrapped"]) > half_width  # and jumps of a box length
    preprocess(traj, "--topology", pdb, "-o", tmp_path / "ds", *OPTS, capsys=capsys)
    manifest, stored = _shards(tmp_path / "ds")
    assert manifest["unwrapped"] is True and manifest["periodic"] is True
    one_pass = _one_pass(truth["wrapped"], truth["cells"], truth["bonds"])
    frames = sorted(stored[0])
    assert len(frames) < len(one_pass)  # the chronological split leaves gaps: no shard holds them
    got = np.stack([stored[0][f] for f in frames])
    np.testing.assert_array_equal(got, one_pass[frames])  # bit-identical to one pass through the gaps
    assert bond_lengths(got, truth["bonds"]).max() < 1.0  # whole waters (0.957 Å bonds)
    assert _max_stored_step(stored[0]) < 4.0  # no jump: 0.5 Å steps (+ rotation)
    # the unwrapped trajectory is the true one up to one lattice translation per molecule
    shift = got - truth["x"][frames].astype(np.float32)
    images = np.rint(shift[0] @ np.linalg.inv(cell_vectors(np.asarray(box, float))))
    np.testing.assert_allclose(shift, np.broadcast_to(images @ cell_vectors(np.asarray(box, float)), shift.shape),
                               atol=1e-3)
    assert (images.reshape(N_WATERS, 3, 3) == images.reshape(N_WATERS, 3, 3)[:, :1]).all()  # whole molecules


def test_without_bonds_atoms_are_unwrapped_one_by_one(tmp_path, capsys):
    traj, _, truth = water_box(tmp_path)
    err = preprocess(traj, "-o", tmp_path / "ds", *OPTS, capsys=capsys)
    assert "no bonds: atoms unwrapped one by one, molecules may stay split across the box" in err
    _, stored = _shards(tmp_path / "ds")
    frames = sorted(stored[0])
    got = np.stack([stored[0][f] for f in frames])
    np.testing.assert_array_equal(got, _one_pass(truth["wrapped"], truth["cells"], None)[frames])
    assert _max_stored_step(stored[0]) < 4.0
    assert bond_lengths(got, truth["bonds"]).max() > 10  # molecules split at the first frame stay split


def test_unwrap_false_keeps_the_files_coordinates_and_changes_the_plan(tmp_path, capsys):
    traj, pdb, truth = water_box(tmp_path)
    preprocess(traj, "--topology", pdb, "-o", tmp_path / "raw", *OPTS, "data.unwrap=false", capsys=capsys)
    manifest, stored = _shards(tmp_path / "raw")
    assert manifest["unwrapped"] is False and manifest["config"]["data"]["unwrap"] is False
    frames = sorted(stored[0])
    np.testing.assert_array_equal(np.stack([stored[0][f] for f in frames]), truth["wrapped"][frames])
    # the same directory with unwrapping: another plan, so the shards are not reused
    preprocess(traj, "--topology", pdb, "-o", tmp_path / "raw", *OPTS, expect=2, capsys=capsys)
    preprocess(traj, "--topology", pdb, "-o", tmp_path / "raw", *OPTS, "--overwrite", capsys=capsys)
    manifest2, _ = _shards(tmp_path / "raw")
    assert manifest2["plan_key"] != manifest["plan_key"] and manifest2["unwrapped"] is True


def test_open_inputs_keep_their_plan_key_whatever_data_unwrap(tmp_path):
    from asteroid_hpc.config import load_config
    from asteroid_hpc.data.plan import make_plan
    from tests.support.data import random_walk, write_traj

    traj = write_traj(tmp_path / "walk.nc", random_walk(200))
    options = ["data.split_fractions=[1,0,0]"]
    keys = {make_plan([str(traj)], load_config(None, [*options, f"data.unwrap={v}"])).key for v in ("true", "false")}
    assert len(keys) == 1
    plan = make_plan([str(traj)], load_config(None, options))
    assert plan.unwrap is False


def test_dropped_frames_and_a_centred_dataset_match_one_pass(tmp_path, capsys):
    """Non-finite frames (inside a shard, the last of a shard, inside the gap before the validation split
    [91, 101) and the frame just before it) are skipped by both passes alike; centring comes after unwrapping."""
    traj, pdb, truth = water_box(tmp_path, nan_frames=(5, 47, 87, 90))
    preprocess(traj, "--topology", pdb, "-o", tmp_path / "ds", *OPTS[:-1], "--drop-nonfinite", capsys=capsys)
    manifest, stored = _shards(tmp_path / "ds")
    assert manifest["split"]["ranges"]["0"]["val"] == [91, 101]
    assert manifest["dropped_nonfinite_frames"] == 2  # frames 87 and 90 lie in a gap: skipped, not counted
    keep = [f for f in range(len(truth["wrapped"])) if f not in (5, 47, 87, 90)]
    one_pass = dict(zip(keep, _one_pass(truth["wrapped"], truth["cells"], truth["bonds"], keep)))
    for f, x in stored[0].items():
        expected = one_pass[f] - one_pass[f].mean(axis=0, dtype=np.float64).astype(np.float32)
        np.testing.assert_allclose(x, expected, atol=2e-5)


def test_resume_after_deleting_a_shard_gives_the_same_shards(tmp_path, capsys):
    from tests.support.data import dataset_fingerprint

    traj, pdb, _ = water_box(tmp_path)
    preprocess(traj, "--topology", pdb, "-o", tmp_path / "ds", *OPTS, capsys=capsys)
    before = dataset_fingerprint(tmp_path / "ds")
    sidecar = json.loads((tmp_path / "ds" / "shards" / "shard-00002.json").read_text())
    assert "unwrap_shift" in sidecar  # the pass-1 shift, for a resumed run
    (tmp_path / "ds" / "manifest.json").unlink()  # as if killed before the end
    (tmp_path / "ds" / "shards" / "shard-00001.nc").unlink()
    err = preprocess(traj, "--topology", pdb, "-o", tmp_path / "ds", *OPTS, capsys=capsys)
    assert "(resuming)" in err
    after = dataset_fingerprint(tmp_path / "ds")
    assert after == before


@pytest.mark.parametrize("stride, hint", [(40, "use a smaller data.frame_stride"),
                                          (1, "save frames more often, or set data.unwrap=false")])
def test_frames_too_far_apart_are_one_line_with_a_hint(tmp_path, capsys, stride, hint):
    """Waters drifting 0.25 Å per frame along each axis: 40 frames apart, a step of (10, 10, 10) Å, whose
    minimum image is itself, longer than half the box: refused. At stride 1 one jump of (8, 8, 8) Å."""
    x, _, _ = molecular_trajectory(BOX, n_frames=400, seed=5, counts=(6, 0, 0), step_angstrom=0.02)
    x += 0.25 * np.arange(len(x))[:, None, None]
    if stride == 1:
        x[200:] += 8.0
    cells = np.tile(np.asarray(BOX, float), (len(x), 1))
    path = tmp_path / "far.nc"
    with AmberWriter(path, x.shape[1], [8, 1, 1] * 6, cell=True, timestep_ps=0.01) as writer:
        writer.append(wrap_at_random(x, cells).astype(np.float32), cell_lengths=cells[:, :3], cell_angles=cells[:, 3:])
    err = preprocess(path, "-o", tmp_path / "ds", f"data.frame_stride={stride}", "model.history_frames=2",
                     "data.horizon_frames=1", "data.split_fractions=[1,0,0]", expect=2, capsys=capsys)
    line = err.strip().splitlines()[-1]
    assert f"far.nc: frame {200 if stride == 1 else 40}: atom " in line and hint in line
    assert "moved half the box's smallest width" in line and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_adk_heavy_atoms_unwrap_whole_with_the_tpr_bonds(tmp_path, capsys):
    """GROMACS adenylate kinase (rhombic dodecahedron, frames 100 ps apart, wrapped atom by atom): its
    protein heavy atoms come out whole and continuous, bit-identical to one pass."""
    import MDAnalysis

    from asteroid_hpc.data.topology import read_topology

    tpr = DATA / "adk_oplsaa.tpr"
    selection = "protein and not name H*"
    preprocess(DATA / "adk_oplsaa.xtc", "--topology", tpr, "-o", tmp_path / "ds", f"data.atom_selection={selection}",
               "data.split_fractions=[1,0,0]", "data.frames_per_shard=3", "data.center=false",
               "model.history_frames=2", "data.horizon_frames=1", capsys=capsys)
    manifest, stored = _shards(tmp_path / "ds")
    atoms = np.asarray(manifest["atom_indices"])
    topology = read_topology(tpr)
    bonds = selected_bonds(topology.bonds, atoms, topology.n_atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        universe = MDAnalysis.Universe(str(tpr), str(DATA / "adk_oplsaa.xtc"))
        raw = np.stack([ts.positions[atoms].copy() for ts in universe.trajectory])
        cells = np.stack([ts.dimensions.copy() for ts in universe.trajectory])
    got = np.stack([stored[0][f] for f in range(len(raw))])
    np.testing.assert_array_equal(got, _one_pass(raw, cells, bonds))
    assert bond_lengths(raw, bonds).max() > 40 and bond_lengths(got, bonds).max() < 2.0
    assert _max_step(got) < 12.0 < _max_step(raw)


def test_amber_ace_tip3p_unwraps_with_its_prmtop(tmp_path, capsys):
    """AMBER NetCDF (NPT box) with its .parm7 bonds: whole molecules, no jumps, equal to one pass."""
    from asteroid_hpc.data.amber_reader import AmberReader
    from asteroid_hpc.data.topology import read_topology

    preprocess(DATA / "Amber/ace_tip3p.nc", "--topology", DATA / "Amber/ace_tip3p.parm7", "-o", tmp_path / "ds",
               "data.split_fractions=[1,0,0]", "data.frames_per_shard=4", "data.center=false",
               "model.history_frames=2", "data.horizon_frames=1", capsys=capsys)
    manifest, stored = _shards(tmp_path / "ds")
    with AmberReader(DATA / "Amber/ace_tip3p.nc") as reader:
        chunk = reader.read(0, reader.n_frames)
    bonds = read_topology(DATA / "Amber/ace_tip3p.parm7").bonds
    got = np.stack([stored[0][f] for f in range(len(chunk.coordinates))])
    np.testing.assert_array_equal(got, _one_pass(chunk.coordinates.astype(np.float32), chunk.cell, bonds))
    assert manifest["unwrapped"] is True and bond_lengths(got, bonds).max() < 1.7
    assert _max_step(got) < 0.5 * min(chunk.cell[0, :3])
