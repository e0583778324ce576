"""Periodic observables (asteroid_hpc.metrics.liquid) against values computed independently here."""

import itertools

import numpy as np
import pytest

from asteroid_hpc.metrics import liquid

pytest.importorskip("MDAnalysis")


def _box_vectors(cell):
    from MDAnalysis.lib.mdamath import triclinic_vectors
    return triclinic_vectors(np.asarray(cell, dtype=np.float64)).astype(np.float64)


def _brute_min_image_distances(x, cell, r_max):
    """All pair distances < r_max, each pair once, by trying every one of the 27 neighbouring images."""
    vectors = _box_vectors(cell)
    shifts = np.array([i * vectors[0] + j * vectors[1] + k * vectors[2]
                       for i, j, k in itertools.product((-1, 0, 1), repeat=3)])
    i, j = np.triu_indices(len(x), k=1)
    d = x[j] - x[i]
    best = np.min(np.linalg.norm(d[:, None, :] + shifts[None], axis=-1), axis=1)
    return best[best < r_max]


def test_simple_cubic_lattice_peak_and_coordination():
    spacing, n = 3.0, 6
    grid = np.array(list(itertools.product(range(n), repeat=3)), dtype=float) * spacing
    cell = [n * spacing] * 3 + [90.0] * 3
    r, g = liquid.radial_distribution(grid[None], cell, np.arange(len(grid)), r_max=4.0, bin_angstrom=0.05)
    peak_r, _ = liquid.first_peak(r, g)
    assert abs(peak_r - spacing) <= 0.05
    density = (len(grid) - 1) / liquid.box_volume(cell)  # the other atoms, per volume
    shells = 4 / 3 * np.pi * ((r + 0.025) ** 3 - (r - 0.025) ** 3)
    coordination = (g * shells * density)[r < 3.5].sum()
    assert coordination == pytest.approx(6.0, rel=1e-9)  # six nearest neighbours on a simple cubic lattice


@pytest.mark.parametrize("cell", [
    [20.0, 22.0, 24.0, 90.0, 90.0, 90.0],
    [24.0, 24.0, 24.0, 70.5288, 109.4712, 70.5288],  # truncated octahedron
    [24.0, 24.0, 24.0, 60.0, 60.0, 90.0],  # rhombic dodecahedron (square xy)
])
def test_rdf_counts_match_a_brute_force_minimum_image(cell):
    rng = np.random.default_rng(0)
    frac = rng.random((300, 3))
    x = frac @ _box_vectors(cell)
    r_max = min(7.0, liquid.half_shortest_width(cell))
    r, g = liquid.radial_distribution(x[None], cell, np.arange(len(x)), r_max=r_max, bin_angstrom=0.1)
    edges = np.append(r - 0.05, r[-1] + 0.05)
    expected = np.histogram(_brute_min_image_distances(x, cell, r_max), bins=edges)[0]
    ideal = len(x) * (len(x) - 1) / 2 / liquid.box_volume(cell) * 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    np.testing.assert_allclose(g * ideal, expected, atol=1e-6)


def test_ideal_gas_rdf_is_flat_and_far_from_a_lattice():
    rng = np.random.default_rng(1)
    cell = [30.0, 30.0, 30.0, 90.0, 90.0, 90.0]
    frames = rng.random((20, 800, 3)) * 30.0
    r, g = liquid.radial_distribution(frames, cell, np.arange(800), r_max=10.0, bin_angstrom=0.5)
    assert np.abs(g[r > 3] - 1).max() < 0.1
    assert liquid.rdf_comparison(r, g, g)["l1"] == 0.0
    spiky = np.where(np.abs(r - 3.0) < 0.3, 8.0, 0.5)
    assert liquid.rdf_comparison(r, spiky, g)["l1"] > 0.4


def test_cross_group_rdf_excludes_self_pairs():
    cell = [10.0, 10.0, 10.0, 90.0, 90.0, 90.0]
    x = np.array([[[1.0, 1.0, 1.0], [9.4, 1.0, 1.0]]])  # 1.6 Å apart across the x face
    r, g = liquid.radial_distribution(x, cell, [0, 1], [0, 1], r_max=4.0, bin_angstrom=0.5)
    assert np.flatnonzero(g).tolist() == [3]  # only the 1.5-2 Å shell: both ordered pairs, no zero distance


def test_pair_lengths_use_the_minimum_image():
    cell = [10.0, 10.0, 10.0, 90.0, 90.0, 90.0]
    x = np.array([[[0.2, 5.0, 5.0], [9.4, 5.0, 5.0], [0.2, 6.0, 5.0]]])
    lengths = liquid.periodic_pair_lengths(x, np.array([[0, 1], [0, 2]]), cell)
    np.testing.assert_allclose(lengths, [[0.8, 1.0]], atol=1e-6)


def test_first_peak_is_the_first_shell_not_the_global_maximum():
    r = np.linspace(0.05, 10, 200)
    g = np.where(r < 2.5, 0.0, 1.0) + 1.5 * np.exp(-((r - 2.8) / 0.1) ** 2) + 3.0 * np.exp(-((r - 6.0) / 0.1) ** 2)
    g[(r > 3.2) & (r < 5.5)] = 0.5
    position, height = liquid.first_peak(r, g)
    assert abs(position - 2.8) < 0.06 and height == pytest.approx(2.5, abs=0.05)


def test_diffusion_of_a_random_walk():
    rng = np.random.default_rng(2)
    sigma, frame_fs = 0.05, 10.0  # Å per coordinate per frame
    walk = np.cumsum(rng.normal(0.0, sigma, (4000, 500, 3)), axis=0)
    lags = liquid.msd_lags(201, count=50)
    assert lags[0] == 1 and lags[-1] == 200
    msd = liquid.mean_squared_displacement(walk, lags)
    expected = sigma ** 2 / (2 * frame_fs * 1e-3)  # D = 3σ² / (6 Δt)
    assert liquid.diffusion_coefficient(lags * frame_fs * 1e-3, msd) == pytest.approx(expected, rel=0.05)
    drifted = walk + np.arange(4000)[:, None, None] * np.array([0.1, 0.0, 0.0])  # a whole-system drift
    np.testing.assert_allclose(liquid.mean_squared_displacement(drifted, lags), msd, rtol=1e-9)
    with pytest.raises(ValueError, match="lags must lie"):
        liquid.mean_squared_displacement(walk[:10], [10])


def test_bad_inputs():
    with pytest.raises(ValueError, match="exceeds half"):
        liquid.radial_distribution(np.zeros((1, 2, 3)), [10, 10, 10, 90, 90, 90], [0, 1], r_max=6.0)
    with pytest.raises(ValueError, match="cell must be"):
        liquid.periodic_pair_lengths(np.zeros((2, 2, 3)), np.array([[0, 1]]), np.zeros((3, 6)))


def _two_waters_and_an_ion():
    z = np.array([8, 1, 1, 8, 1, 1, 11])
    bonds = np.array([[0, 1], [0, 2], [4, 3], [3, 5]])
    return z, bonds


def test_waters_molecules_and_exclusions_from_the_bonds():
    z, bonds = _two_waters_and_an_ion()
    np.testing.assert_array_equal(liquid.molecule_labels(bonds, len(z)), [0, 0, 0, 1, 1, 1, 2])
    waters = liquid.water_molecules(bonds, z)
    assert waters.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert liquid.excluded_pairs(bonds) == {(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)}
    methanol_like = np.array([6, 8, 1]), np.array([[0, 1], [1, 2]])  # an O with one H is not water
    assert liquid.water_molecules(methanol_like[1], methanol_like[0]).shape == (0, 3)


def test_periodic_clashes_skip_bonded_and_angle_pairs_and_see_across_faces():
    z, bonds = _two_waters_and_an_ion()
    cell = [12.0, 12.0, 12.0, 90.0, 90.0, 90.0]
    water = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    frame = np.concatenate([water + [6.0, 6.0, 6.0], water + [2.0, 6.0, 6.0], [[9.0, 9.0, 9.0]]])
    far = frame.copy()
    near = frame.copy()
    near[6] = [2.0 - 0.6 + 12.0, 6.0, 6.0]  # the ion 0.6 Å from the second water's O, one box length away
    counts = liquid.periodic_clash_counts(np.stack([far, near]), cell, liquid.excluded_pairs(bonds), 0.8)
    assert counts.tolist() == [0.0, 1.0]  # O–H (0.96 Å) and H–H (1.5 Å) are bonded/angle pairs; the ion clashes
    broken = liquid.periodic_clash_counts(np.full((1, 7, 3), np.nan), cell, set(), 0.8)
    assert np.isnan(broken).all()


def test_periodic_bonds_are_found_across_the_faces():
    cell = [10.0, 10.0, 10.0, 90.0, 90.0, 90.0]
    frame = np.array([[9.7, 5.0, 5.0], [0.66, 5.0, 5.0], [9.7, 5.8, 5.6], [5.0, 5.0, 5.0], [5.0, 5.0, 6.4]])
    z = np.array([8, 1, 1, 18, 18])  # a water split by the x face; two argon atoms (no bonds)
    assert liquid.detect_periodic_bonds(frame, z, cell, 0.45).tolist() == [[0, 1], [0, 2]]
