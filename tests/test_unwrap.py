"""Unwrapping periodic trajectories (asteroid_hpc.data.unwrap): whole molecules on the first frame, no jumps
after, exact minimum images in orthorhombic and triclinic cells, streaming, and ranges of a source that
compose bit-identically to one pass. Synthetic molecules wrapped at random, and real GROMACS/CHARMM files."""

from __future__ import annotations

import importlib.util
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.data.unwrap import (OFFSET_UNIT_ANGSTROM, Cells, Unwrapper, cell_vectors, exclusive_prefix,
                                      image_counts, path_sums, range_start_offsets, selected_bonds,
                                      spanning_parents)
from asteroid_hpc.errors import UserError
from asteroid_hpc.runtime.mpi import SingleProcess

BOXES = {  # lengths Å, angles °
    "orthorhombic": [22.0, 24.0, 26.0, 90.0, 90.0, 90.0],
    "truncated octahedron": [30.0, 30.0, 30.0, 109.4712206, 109.4712206, 109.4712206],
    "rhombic dodecahedron": [28.0, 28.0, 28.0, 60.0, 60.0, 90.0],
}


def _mdanalysis_data() -> Path:
    spec = importlib.util.find_spec("MDAnalysisTests")  # not imported: its __init__ imports pytest plugins
    if spec is None:
        pytest.fail("MDAnalysisTests is a test dependency (pip install MDAnalysisTests)")
    return Path(spec.origin).parent / "data"


# ------------------------------------------------------------------------------ synthetic molecules

def _templates() -> list[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Water (0.957 Å, 104.5°), a 10-atom zigzag chain (1.53 Å, 112°), a 6-ring (1.39 Å): (positions, bonds)."""
    hoh = np.radians(104.5)
    water = np.array([[0, 0, 0], [0.957, 0, 0], [0.957 * np.cos(hoh), 0.957 * np.sin(hoh), 0]])
    half = np.radians(112.0) / 2
    chain = np.array([[k * 1.53 * np.sin(half), (k % 2) * 1.53 * np.cos(half), 0] for k in range(10)])
    ring = np.array([[1.39 * np.cos(a), 1.39 * np.sin(a), 0] for a in np.arange(6) * np.pi / 3])
    return [(water, [(0, 1), (0, 2)]), (chain, [(k, k + 1) for k in range(9)]),
            (ring, [(k, (k + 1) % 6) for k in range(6)])]


def _rotation(rng, angle_rad: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


def molecular_trajectory(box, n_frames=60, seed=0, counts=(12, 3, 2), step_angstrom=0.5):
    """Continuous trajectory [F, N, 3] of molecules diffusing (translation + rotation steps) through ``box``,
    their bonds [B, 2] and the molecule of every atom [N]."""
    rng = np.random.default_rng(seed)
    h = cell_vectors(np.asarray(box, float))
    pieces, bonds, molecule, n = [], [], [], 0
    for (shape, links), count in zip(_templates(), counts):
        for _ in range(count):
            centre = rng.random(3) @ h
            frames, x = [], shape - shape.mean(axis=0)
            for _ in range(n_frames):
                frames.append(centre + x)
                centre = centre + rng.normal(scale=step_angstrom, size=3)
                x = x @ _rotation(rng, 0.15).T
            pieces.append(np.stack(frames))
            bonds += [(n + i, n + j) for i, j in links]
            molecule += [len(pieces) - 1] * len(shape)
            n += len(shape)
    return np.concatenate(pieces, axis=1), np.array(bonds), np.array(molecule)


def wrap_at_random(x, cells, seed=1):
    """What an engine writes: every atom of every frame at a random periodic image of the frame's own cell,
    the images taken step by step (p_t = p_{t-1} + (x_t - x_{t-1}) + k_t·H_t, k_t in {-1, 0, 1})."""
    rng = np.random.default_rng(seed)
    h = cell_vectors(cells)
    images = rng.integers(-1, 2, size=x.shape)
    steps = np.diff(x, axis=0, prepend=np.zeros_like(x[:1]))
    return np.cumsum(steps + np.einsum("fnk,fkj->fnj", images, h), axis=0)


def npt_cells(box, n_frames):
    """A box that breathes by ±1.5 % (lengths), the shape kept."""
    scale = 1 + 0.015 * np.sin(np.arange(n_frames) / 7.0)
    cells = np.tile(np.asarray(box, float), (n_frames, 1))
    cells[:, :3] *= scale[:, None]
    return cells


def bond_lengths(x, bonds):
    return np.linalg.norm(x[..., bonds[:, 0], :] - x[..., bonds[:, 1], :], axis=-1)


# ------------------------------------------------------------------------------ cells and minimum images

@pytest.mark.parametrize("box", [*BOXES.values(), [31.0, 29.0, 35.0, 80.0, 100.0, 65.0],
                                 [40.0, 40.0, 40.0, 60.0, 60.0, 60.0]])
def test_cell_vectors_match_mdanalysis(box):
    from MDAnalysis.lib.mdamath import triclinic_vectors

    np.testing.assert_allclose(cell_vectors(np.array(box)), triclinic_vectors(np.array(box, np.float32)),
                               atol=2e-4)  # MDAnalysis works in float32


@pytest.mark.parametrize("name", BOXES)
def test_rounding_gives_the_exact_minimum_image(name):
    """Vectors shorter than half the smallest width, moved by random lattice vectors (up to ±3 per axis):
    rounding finds them back, and they are the shortest of the 27 neighbouring images (brute force)."""
    rng = np.random.default_rng(3)
    cells = Cells(np.array([BOXES[name]]), "box", np.arange(1))
    h, half = cells.vectors[0], cells.half_width[0]
    true = rng.normal(size=(4000, 3))
    true *= (rng.random((4000, 1)) * 0.999 * half) / np.linalg.norm(true, axis=1, keepdims=True)
    d = true + rng.integers(-3, 4, size=(4000, 3)) @ h
    counts, length2 = image_counts(d[None], cells)
    np.testing.assert_allclose(d - counts[0] @ h, true, atol=1e-9)
    neighbours = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ h
    brute = np.linalg.norm(true[:, None, :] + neighbours[None], axis=-1).min(axis=1)
    np.testing.assert_allclose(np.sqrt(length2[0]), brute, atol=1e-9)


def test_half_widths_of_the_standard_boxes():
    half = {name: Cells(np.array([box]), "", np.arange(1)).half_width[0] for name, box in BOXES.items()}
    assert half["orthorhombic"] == pytest.approx(11.0)
    assert half["truncated octahedron"] == pytest.approx(30.0 * np.sqrt(2 / 3) / 2, rel=1e-6)
    assert half["rhombic dodecahedron"] == pytest.approx(28.0 / np.sqrt(2) / 2, rel=1e-6)


@pytest.mark.parametrize("cell, cause", [
    ([np.nan] * 6, "has no unit cell (missing, NaN or zero), but the file is periodic"),
    ([0.0] * 6, "has no unit cell (missing, NaN or zero)"),
    ([20, -20, 20, 90, 90, 90], "has a non-positive unit cell length"),
    ([20, 20, 20, 90, 180, 90], "has a unit cell angle outside (0, 180) degrees"),
    ([20, 20, 20, 120, 120, 120], "has a degenerate unit cell")])
def test_a_bad_cell_is_the_same_one_line_as_preprocess_gives(cell, cause):
    """The cells are checked by data.cells alone: unwrapping and the shard checks give the same line."""
    from asteroid_hpc.data.cells import CellCheck

    cells = np.tile([20.0, 20, 20, 90, 90, 90], (5, 1))
    cells[3] = cell
    with pytest.raises(UserError) as err:
        Unwrapper(2, where="traj.dcd")(np.zeros((5, 2, 3)) + 1.0, cells)
    message = str(err.value)
    assert message.startswith(f"traj.dcd: frame 3 {cause}") and "\n" not in message
    with pytest.raises(UserError) as err:
        CellCheck(cells[0].tolist(), "traj.dcd", lambda f: f)(cells, np.arange(5))
    assert str(err.value) == message


def test_a_periodic_chunk_without_cells_is_refused():
    with pytest.raises(UserError, match="^traj.nc: frame 0 has no unit cell .*, but the file is periodic$"):
        Unwrapper(2, where="traj.nc")(np.ones((3, 2, 3)), None)


# ------------------------------------------------------------------------------ whole and continuous

@pytest.mark.parametrize("npt", [False, True], ids=["constant box", "NPT box"])
@pytest.mark.parametrize("name", BOXES)
def test_molecules_wrapped_at_random_come_back_whole_and_continuous(name, npt):
    x, bonds, molecule = molecular_trajectory(BOXES[name], seed=len(name))
    cells = npt_cells(BOXES[name], len(x)) if npt else np.tile(BOXES[name], (len(x), 1))
    wrapped = wrap_at_random(x, cells)
    assert bond_lengths(wrapped, bonds).max() > 10 and np.linalg.norm(np.diff(wrapped, axis=0), axis=-1).max() > 10
    unwrapped = Unwrapper(x.shape[1], bonds, name)(wrapped, cells)
    shift = unwrapped - x  # one lattice vector of the first cell per molecule, the same in every frame
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-6)
    for m in np.unique(molecule):
        np.testing.assert_allclose(shift[0, molecule == m], np.broadcast_to(shift[0, molecule == m][0],
                                                                            ((molecule == m).sum(), 3)), atol=1e-6)
    fractional = shift[0] @ np.linalg.inv(cell_vectors(cells[0]))
    np.testing.assert_allclose(fractional, np.rint(fractional), atol=1e-7)
    assert np.abs(fractional).max() >= 1  # the test moved molecules: the answer is not the input
    assert np.abs(bond_lengths(unwrapped, bonds) - bond_lengths(x, bonds)).max() < 1e-6


def test_without_bonds_every_atom_is_its_own_molecule():
    x, _, _ = molecular_trajectory(BOXES["truncated octahedron"], n_frames=30, seed=5)
    cells = np.tile(BOXES["truncated octahedron"], (len(x), 1))
    wrapped = wrap_at_random(x, cells, seed=6)
    unwrapped = Unwrapper(x.shape[1])(wrapped, cells)
    assert np.array_equal(unwrapped[0], wrapped[0])  # nothing to make whole
    np.testing.assert_allclose(np.diff(unwrapped, axis=0), np.diff(x, axis=0), atol=1e-6)


def test_a_polymer_longer_than_the_box_is_made_whole():
    """300 bonded atoms (a random coil about 4 box lengths long) in a 20 Å box, wrapped atom by atom: every
    bond comes back at its length, through a deep tree (pointer jumping over ~300 levels)."""
    rng = np.random.default_rng(7)
    steps = rng.normal(size=(300, 3))
    steps = 1.5 * steps / np.linalg.norm(steps, axis=1, keepdims=True)
    steps[:, 0] = np.abs(steps[:, 0]) + 0.3  # drifting along x: longer than the box
    chain = np.cumsum(steps, axis=0)[None]
    bonds = np.array([(k, k + 1) for k in range(299)])
    box = np.array([[20.0, 20.0, 20.0, 90.0, 90.0, 90.0]])
    wrapped = chain - np.floor(chain / 20.0) * 20.0
    parents = spanning_parents(300, bonds[rng.permutation(len(bonds))])
    assert parents[0] == 0 and (parents[1:] == np.arange(299)).all()
    unwrapped = Unwrapper(300, bonds)(wrapped, box)
    np.testing.assert_allclose(unwrapped[0] - unwrapped[0, 0], chain[0] - chain[0, 0], atol=1e-9)


def test_path_sums_add_up_each_atoms_path_to_its_root():
    parents = np.array([0, 0, 1, 2, 2, 5, 5])  # two trees: 0-1-2-{3,4} and 5-6
    values = np.arange(21, dtype=np.int64).reshape(7, 3)
    expected = np.zeros_like(values)
    for atom in range(7):
        a = atom
        while parents[a] != a:
            expected[atom] += values[a]
            a = parents[a]
    assert np.array_equal(path_sums(parents, values), expected)


def test_a_molecule_bonded_to_its_own_image_is_logged(caplog):
    """An infinite chain through the box (bond 9-0 crosses the face): no whole form exists, said once."""
    x = np.array([[2.0 * k + 1, 5.0, 5.0] for k in range(10)])[None]
    bonds = np.array([(k, (k + 1) % 10) for k in range(10)])
    with caplog.at_level(logging.WARNING):
        out = Unwrapper(10, bonds, "crystal.nc")(x, np.array([[20.0, 20, 20, 90, 90, 90]]))
    assert "crystal.nc: 1 bond(s) still cross the box" in caplog.text
    lengths = np.sort(bond_lengths(out[0], bonds))  # nine bonds whole, the one left split across the box
    np.testing.assert_allclose(lengths, [2.0] * 9 + [18.0], atol=1e-9)


def test_a_jump_of_half_the_box_is_refused_with_one_line():
    cells = np.tile(BOXES["rhombic dodecahedron"], (4, 1))
    half = Cells(cells[:1], "", np.arange(1)).half_width[0]
    x = np.zeros((4, 3, 3))
    x[3, 2] = [half * 1.01, 0, 0]  # atom 2 moves a little over half the smallest width
    with pytest.raises(UserError) as err:
        Unwrapper(3, where="md.xtc")(x, cells, frames=np.arange(10, 14))
    assert str(err.value) == ("md.xtc: frame 13: atom 2 moved half the box's smallest width (9.90 Å) or more at "
                              "every periodic image: frames too far apart (or a broken trajectory) to unwrap")


def test_a_bond_of_half_the_box_is_refused():
    x = np.array([[[0.0, 0, 0], [9.0, 9.0, 0]]])  # no image of it is shorter than 9.5 Å in a 19 Å box
    with pytest.raises(UserError, match="frame 0: the bond between atoms 0 and 1 is half the box's smallest "
                                        "width .* the topology's bonds do not fit this box"):
        Unwrapper(2, np.array([[0, 1]]), "top")(x, np.array([[19.0, 19, 19, 90, 90, 90]]))


def test_selected_bonds_are_renumbered_within_the_selection():
    bonds = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [5, 6]])
    assert selected_bonds(bonds, [1, 2, 3, 6], 7).tolist() == [[0, 1], [1, 2]]


# ------------------------------------------------------------------------------ streaming and ranges

def _pass(unwrapper, x, cells, chunk, advance=False):
    outs = []
    for a in range(0, len(x), chunk):
        if advance:
            unwrapper.advance(x[a:a + chunk], cells[a:a + chunk])
        else:
            outs.append(unwrapper(x[a:a + chunk], cells[a:a + chunk]))
    return None if advance else np.concatenate(outs)


def unwrap_in_ranges(wrapped, cells, bonds, bounds, chunk):
    """The wiring of a source split into ranges [bounds[k], bounds[k+1]): pass 1 (shifts), the exclusive
    prefix, pass 2 — as ranks would, each range on its own."""
    n = wrapped.shape[1]
    ranges = list(zip(bounds[:-1], bounds[1:]))

    def fresh(k, start=None):
        a = ranges[k][0]
        return Unwrapper(n, bonds) if k == 0 else Unwrapper.after(wrapped[a - 1], start)

    shifts = []
    for k, (a, b) in enumerate(ranges):
        u = fresh(k)
        _pass(u, wrapped[a:b], cells[a:b], chunk, advance=True)
        shifts.append(u.offset)
    starts = exclusive_prefix(shifts)
    assert all(np.array_equal(s, t) for s, t in
               zip(starts, range_start_offsets(SingleProcess(), [0] * len(ranges), dict(enumerate(shifts))).values()))
    return np.concatenate([_pass(fresh(k, starts[k]), wrapped[a:b], cells[a:b], chunk)
                           for k, (a, b) in enumerate(ranges)])


@pytest.mark.parametrize("npt", [False, True], ids=["constant box", "NPT box"])
def test_ranges_and_chunks_unwrap_bit_identically_to_one_pass(npt):
    box = BOXES["truncated octahedron"]
    x, bonds, _ = molecular_trajectory(box, n_frames=80, seed=11)
    cells = npt_cells(box, len(x)) if npt else np.tile(box, (len(x), 1))
    wrapped = wrap_at_random(x, cells, seed=12).astype(np.float32)  # as files store them
    sequential = Unwrapper(x.shape[1], bonds)(wrapped, cells)
    for bounds in ([0, 80], [0, 37, 80], [0, 1, 52, 80], [0, 26, 27, 80]):
        for chunk in (1, 9, 80):
            assert np.array_equal(unwrap_in_ranges(wrapped, cells, bonds, bounds, chunk), sequential), \
                (bounds, chunk)


def test_offsets_are_whole_multiples_of_the_grid():
    u = Unwrapper.after(np.zeros((2, 3)))
    u(np.array([[[19.0, 0, 0], [0, 0, 0]]]), np.array([[20.0, 20, 20, 90, 90, 90]]))
    assert u.offset.dtype == np.int64 and u.offset[0, 0] == -round(20.0 / OFFSET_UNIT_ANGSTROM)
    assert u.offset_angstrom[0].tolist() == [-20.0, 0.0, 0.0]


# ------------------------------------------------------------------------------ real files

def _read(path: Path, chunk_frames: int):
    from asteroid_hpc.data.readers import TrajectoryReader

    with TrajectoryReader(path, n_atoms=None, check_time=False) as reader:
        chunks = list(reader.iter_chunks(chunk_frames))
    return chunks


def test_adk_protein_in_a_rhombic_dodecahedron_comes_back_whole_and_continuous():
    """GROMACS adenylate kinase in a rhombic dodecahedron (80 Å, 60/60/90°), 10 frames 100 ps apart, wrapped
    atom by atom: its protein, streamed in chunks of 3 frames, unwraps with bonds under 2 Å and steps under
    12 Å (in the file: bonds of 80 Å and jumps of 80 Å)."""
    import MDAnalysis

    from asteroid_hpc.data.topology import read_topology

    data = _mdanalysis_data()
    protein = MDAnalysis.Universe(str(data / "adk_oplsaa.tpr")).select_atoms("protein").indices
    topology = read_topology(data / "adk_oplsaa.tpr")
    bonds = selected_bonds(topology.bonds, protein, topology.n_atoms)
    unwrapper = Unwrapper(len(protein), bonds, "adk_oplsaa.xtc")
    raw, out = [], []
    for chunk in _read(data / "adk_oplsaa.xtc", 3):
        raw.append(chunk.coordinates[:, protein])
        out.append(unwrapper(raw[-1], chunk.cell))
    raw, out = np.concatenate(raw), np.concatenate(out)
    assert len(out) == 10 and len(bonds) > 3000
    assert bond_lengths(raw, bonds).max() > 40 and np.linalg.norm(np.diff(raw, axis=0), axis=-1).max() > 40
    assert bond_lengths(out, bonds).max() < 2.0
    assert np.linalg.norm(np.diff(out, axis=0), axis=-1).max() < 12.0


@pytest.mark.parametrize("files, frame", [(("adk_oplsaa.xtc", "adk_oplsaa.tpr"), 1),
                                          (("tip125_tric_C36.dcd", "tip125_tric_C36.psf"), 2)])
def test_real_trajectories_too_coarse_to_unwrap_are_refused(files, frame):
    """Water 100 ps apart (adk: atoms that moved over 28 Å), and a CHARMM water box whose triclinic cell
    shears by degrees per frame (TIP125): some step is ambiguous, so no guess, one line."""
    from asteroid_hpc.data.topology import read_topology

    data = _mdanalysis_data()
    topology = read_topology(data / files[1])
    chunk = _read(data / files[0], 100)[0]
    with pytest.raises(UserError, match=rf"^{files[0]}: frame {frame}: atom \d+ moved half the box's smallest "
                                        r"width \(\d+\.\d+ Å\) or more"):
        Unwrapper(topology.n_atoms, topology.bonds, files[0])(chunk.coordinates, chunk.cell)


def test_grid_shifts_are_exact_on_both_paths():
    """Small counts take a float64 product (exact below 2^53), huge ones int64 arithmetic: both exact."""
    from asteroid_hpc.data.unwrap import _grid_shifts

    grid = Cells(np.array([BOXES["truncated octahedron"]]), "", np.arange(1)).grid
    rng = np.random.default_rng(2)
    for bound in (5, 2 ** 20):  # 2^20 x 2^37 (30 Å on the 2^-32 grid) x 3 is beyond 2^53: the int64 path
        counts = rng.integers(-bound, bound + 1, size=(1, 50, 3))
        exact = -np.array([[sum(int(c[k]) * int(grid[0, k, j]) for k in range(3)) for j in range(3)]
                           for c in counts[0]], dtype=np.int64)
        assert np.array_equal(_grid_shifts(counts.astype(np.float64), grid)[0], exact)
