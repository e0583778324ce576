"""The physical observables of asteroid_hpc.metrics.physics on synthetic trajectories with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from asteroid_hpc.metrics import physics

WATER_ANGLE_DEGREES = 104.5


def _stretching_dimer(n_frames: int = 50, bond: float = 1.3, amplitude: float = 0.05, omega_per_fs: float = 0.3,
                      frame_fs: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Two carbon atoms on the x axis, bond length bond + 2a·sin(ωt), centre of mass at rest."""
    t = np.arange(n_frames) * frame_fs
    half = bond / 2 + amplitude * np.sin(omega_per_fs * t)
    frames = np.zeros((n_frames, 2, 3))
    frames[:, 0, 0], frames[:, 1, 0] = -half, half
    return frames, t


def _water(angle_degrees: float = WATER_ANGLE_DEGREES, oh: float = 0.96) -> np.ndarray:
    theta = np.radians(angle_degrees)
    return np.array([[0.0, 0.0, 0.0], [oh, 0.0, 0.0], [oh * np.cos(theta), oh * np.sin(theta), 0.0]])


def test_bonds_and_angles_of_a_water_molecule():
    frame = _water()
    bonds = physics.detect_bonds(frame, [8, 1, 1])
    assert bonds.tolist() == [[0, 1], [0, 2]]  # H…H (1.52 Å) is not a bond
    assert physics.bond_lengths(frame, bonds) == pytest.approx(np.array([[0.96, 0.96]]))
    triples = physics.angle_triples(bonds)
    assert triples.tolist() == [[1, 0, 2]]
    assert physics.bond_angles_degrees(frame, triples)[0, 0] == pytest.approx(WATER_ANGLE_DEGREES)


def test_noble_gases_take_no_bonds():
    frame = np.array([[0.0, 0, 0], [2.0, 0, 0], [4.0, 0, 0]])
    assert physics.detect_bonds(frame, [18, 18, 18]).shape == (0, 2)


def test_bond_length_and_finite_difference_temperature_of_a_harmonic_dimer():
    frame_fs, omega, a = 2.0, 0.3, 0.05
    frames, t = _stretching_dimer(frame_fs=frame_fs, omega_per_fs=omega, amplitude=a)
    bonds = physics.detect_bonds(frames[0], [6, 6])
    assert bonds.tolist() == [[0, 1]]
    assert physics.bond_lengths(frames, bonds)[:, 0] == pytest.approx(1.3 + 2 * a * np.sin(omega * t))
    # central difference of a·sin(ωt): a·cos(ωt)·sin(ωΔ)/Δ exactly; each atom carries it, dof = 3·2 − 5 = 1
    velocity = a * np.cos(omega * t[1:-1]) * np.sin(omega * frame_fs) / frame_fs
    mass = physics.ATOMIC_MASSES_AMU[6]
    expected = 2 * mass * velocity ** 2 / physics.BOLTZMANN_AMU_A2_PER_FS2_K
    temperature = physics.kinetic_temperature(frames, [6, 6], frame_fs)
    assert temperature == pytest.approx(expected, rel=1e-9)
    # a rigid translation adds nothing (the centre-of-mass velocity is removed)
    drifting = frames + np.arange(len(frames))[:, None, None] * np.array([0.1, -0.2, 0.05])
    assert physics.kinetic_temperature(drifting, [6, 6], frame_fs) == pytest.approx(expected, rel=1e-9)
    # the constant: 1 amu at 1 Å/fs in one degree of freedom is 1.2027e6 K
    assert 1.0 / physics.BOLTZMANN_AMU_A2_PER_FS2_K == pytest.approx(1.20272e6, rel=1e-5)


def test_the_temperature_splits_into_stiff_rotation_and_soft_parts_that_add_up():
    from asteroid_hpc.geometry import motion_parts
    from tests.support.data import spun

    water = _water()
    masses = physics.masses_amu([8, 1, 1])
    spinning = spun(np.repeat(water[None], 40, axis=0), 0.05)
    centre = (masses[:, None] * water).sum(0) / masses.sum()
    spinning = spinning - (masses[:, None] * spinning).sum(1, keepdims=True) / masses.sum() + centre
    pairs = np.array([[0, 1], [0, 2], [1, 2]])
    parts = physics.kinetic_temperature_parts(spinning, [8, 1, 1], 2.0, pairs)
    total = physics.kinetic_temperature(spinning, [8, 1, 1], 2.0)
    assert parts[:, 1] == pytest.approx(total, rel=1e-9)  # a rigid spin is all rotation
    assert np.abs(parts[:, [0, 2]]).max() < 1e-9 * total.max()
    # a chain's torsion changes no bond and no angle: no stiff part, all rotation and soft motion
    rng = np.random.default_rng(0)
    chain = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.5, 1.0, 0.2]])
    turn = np.array([0.0, 0.0, 0.0, 1.0])[:, None] * np.cross([1.0, 0.0, 0.0], chain - [1.5, 0.0, 0.0])
    masses = physics.masses_amu([1, 6, 6, 1])
    stiff, rotation, soft = motion_parts(chain, turn, np.array([[0, 1], [1, 2], [2, 3], [0, 2], [1, 3]]), masses)
    assert np.abs(stiff).max() < 1e-12 and np.abs(soft).max() > 0.1
    assert rotation + soft == pytest.approx(turn - (masses[:, None] * turn).sum(0) / masses.sum(), abs=1e-12)
    # in general the three are orthogonal in the mass metric and add up to the velocity less its drift
    frames = rng.normal(size=(30, 5, 3))
    numbers = [6, 1, 8, 1, 7]
    split = physics.kinetic_temperature_parts(frames, numbers, 1.0, np.array([[0, 1], [0, 2], [2, 3], [1, 4]]))
    assert split.sum(axis=1) == pytest.approx(physics.kinetic_temperature(frames, numbers, 1.0), rel=1e-9)
    # also where the pairs are redundant: a flat six-ring's bonds and 1–3 pairs (12 distances, 9 in-plane dof)
    angles = np.arange(6) * np.pi / 3
    ring = 1.4 * np.stack([np.cos(angles), np.sin(angles), 0 * angles], axis=1)
    ring_frames = ring + 0.002 * rng.normal(size=(30, 6, 3))
    ring_pairs = np.array([[k, (k + 1) % 6] for k in range(6)] + [[k, (k + 2) % 6] for k in range(6)])
    split = physics.kinetic_temperature_parts(ring_frames, [6] * 6, 1.0, ring_pairs)
    assert split.sum(axis=1) == pytest.approx(physics.kinetic_temperature(ring_frames, [6] * 6, 1.0), rel=1e-9)


def test_radius_of_gyration_is_mass_weighted():
    frame = np.array([[-1.0, 0, 0], [1.0, 0, 0]])
    assert physics.radius_of_gyration(frame, [6, 6])[0] == pytest.approx(1.0)
    # H at x = 0 and C at x = d: centre at m_C·d/(m_H + m_C), Rg² = m_H·m_C·d²/(m_H + m_C)²
    d, m_h, m_c = 2.0, physics.ATOMIC_MASSES_AMU[1], physics.ATOMIC_MASSES_AMU[6]
    frame = np.array([[0.0, 0, 0], [d, 0, 0]])
    assert physics.radius_of_gyration(frame, [1, 6])[0] == pytest.approx(np.sqrt(m_h * m_c) * d / (m_h + m_c))
    assert physics.radius_of_gyration(frame)[0] == pytest.approx(1.0)


def test_clashes_count_non_bonded_pairs_only():
    water = _water()
    bonds = physics.detect_bonds(water, [8, 1, 1])
    squeezed = water.copy()
    squeezed[2] = squeezed[1] + [0.0, 0.5, 0.0]  # H…H 0.5 Å: a clash; O–H bonds stay bonds
    squeezed[1] = [0.5, 0.0, 0.0]  # a bond shortened to 0.5 Å is not a clash
    counts = physics.clash_counts(np.stack([water, squeezed]), bonds, clash_angstrom=0.8)
    assert counts.tolist() == [0, 1]
    assert physics.clash_counts(squeezed, bonds, clash_angstrom=0.4).tolist() == [0]


def test_largest_displacement_catches_a_jump_and_non_finite_frames():
    frames = np.zeros((4, 3, 3))
    frames[:, 0, 0] = [0.0, 0.1, 0.2, 3.2]  # atom 0 jumps 3 Å at frame 3
    frames[:, 2, 1] = [0.0, -0.05, -0.1, -0.15]
    step = physics.max_displacement(frames)
    assert np.isnan(step[0]) and step[1:] == pytest.approx([0.1, 0.1, 3.0])
    assert physics.max_displacement(frames, previous=frames[0] - [[0.4, 0, 0], [0, 0, 0], [0, 0, 0]])[0] \
        == pytest.approx(0.4)
    frames[2, 1] = np.nan
    assert np.isinf(physics.max_displacement(frames)[2])


def test_distribution_distance_and_md_range():
    rng = np.random.default_rng(0)
    reference = rng.normal(2.0, 0.1, size=20000)
    same = physics.distribution_distance(reference, reference)
    assert same == {"wasserstein_angstrom": 0.0, "jensen_shannon": 0.0}
    shifted = physics.distribution_distance(reference + 0.5, reference)
    assert shifted["wasserstein_angstrom"] == pytest.approx(0.5)
    assert shifted["jensen_shannon"] > 0.9  # hardly any overlap
    low, high = physics.md_range(np.arange(101.0))
    assert (low, high) == (1.0, 99.0)
    assert physics.first_exit(np.array([50.0, 60.0, 99.5, 10.0]), low, high) == 2
    assert physics.first_exit(np.array([[50.0, 2.0], [60.0, 0.5]]), np.array([0.0, 1.0]),
                              np.array([100.0, 3.0])) == 1
    assert physics.first_exit(np.array([50.0, np.nan]), low, high) == 1
    assert physics.first_exit(np.array([50.0, 60.0]), low, high) is None


def test_unknown_elements_are_refused():
    with pytest.raises(ValueError, match="atomic masses"):
        physics.masses_amu([6, 92])


def test_a_broken_frame_is_no_clash_count_and_cannot_hide_a_clash():
    """A frame that is not a structure counts NaN, so the mean over a clashing rollout and a broken one is
    out of any range (not 0, as 1 and −1 would average to)."""
    water = _water()
    bonds = physics.detect_bonds(water, [8, 1, 1])
    squeezed = water.copy()
    squeezed[2] = squeezed[1] + [0.0, 0.5, 0.0]
    broken = np.full_like(water, np.nan)
    counts = physics.clash_counts(np.stack([squeezed, broken]), bonds, clash_angstrom=0.8)
    assert counts[0] == 1 and np.isnan(counts[1])
    assert physics.first_exit([counts.mean()], 0, 0) == 0
    assert physics.finite_mean(counts) == 1.0 and np.isnan(physics.finite_mean([np.nan]))
