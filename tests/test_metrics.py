"""Per-lead-time errors and ensemble scores on hand-computed arrays."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from asteroid_hpc.metrics import (ade_fde, crps_per_lead_time, displacement_per_lead_time, ensemble_mean,
                                  ensemble_spread_per_atom, kabsch_rmsd, kabsch_superpose, mse_per_lead_time,
                                  mse_per_sample, rmsd, rmsd_per_lead_time,
                                  superposed_mse_per_lead_time)


def test_mse_and_displacement_by_hand():
    reference = np.zeros((1, 2, 1, 3))
    prediction = np.zeros((1, 2, 1, 3))
    prediction[0, 0, 0] = [1.0, 2.0, 3.0]  # lead 0: squares 1, 4, 9
    prediction[0, 1, 0] = [3.0, 4.0, 0.0]  # lead 1: distance 5
    assert mse_per_lead_time(prediction, reference) == pytest.approx([14 / 3, 25 / 3])
    assert mse_per_sample(prediction, reference).shape == (1, 2)
    assert displacement_per_lead_time(prediction, reference) == pytest.approx([np.sqrt(14), 5.0])
    ade, fde = ade_fde(prediction, reference)
    assert ade == pytest.approx((np.sqrt(14) + 5) / 2) and fde == pytest.approx(5.0)


def test_mse_averages_over_samples_and_atoms():
    reference = np.zeros((2, 1, 2, 3))
    prediction = np.zeros((2, 1, 2, 3))
    prediction[1, 0, 1] = [6.0, 0.0, 0.0]  # one coordinate of 12 is off by 6
    assert mse_per_lead_time(prediction, reference) == pytest.approx([36 / 12])


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        mse_per_lead_time(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 4, 3)))
    with pytest.raises(ValueError):
        crps_per_lead_time(np.zeros((2, 2, 3, 3)), np.zeros((3, 3, 3)))


def test_ensemble_mean_and_spread_by_hand():
    members = np.zeros((2, 1, 1, 3))
    members[1, 0, 0, 0] = 2.0
    assert ensemble_mean(members)[0, 0] == pytest.approx([1.0, 0.0, 0.0])
    assert ensemble_spread_per_atom(members) == pytest.approx(np.array([[1.0]]))  # sqrt((1 + 1) / 2)


def _chiral_points(rng):
    return rng.normal(size=(7, 3)) * 2.0


def test_rmsd_with_and_without_superposition():
    rng = np.random.default_rng(0)
    reference = _chiral_points(rng)
    shifted = reference + np.array([1.0, 0.0, 0.0])
    assert rmsd(shifted, reference) == pytest.approx(1.0)
    moved = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).apply(reference) + 4.0
    assert rmsd(moved, reference) > 1.0
    assert kabsch_rmsd(moved, reference) == pytest.approx(0.0, abs=1e-9)
    assert kabsch_superpose(moved, reference) == pytest.approx(reference, abs=1e-9)


def test_superposed_mse_ignores_rigid_motion_and_keeps_shape_error():
    rng = np.random.default_rng(2)
    reference = _chiral_points(rng)[None, None]  # [1, 1, 7, 3]
    moved = Rotation.from_euler("xyz", [0.4, 0.2, -0.9]).apply(reference[0, 0]) + 3.0
    assert mse_per_lead_time(moved[None, None], reference)[0] > 1.0
    assert superposed_mse_per_lead_time(moved[None, None], reference)[0] == pytest.approx(0.0, abs=1e-18)
    deformed = reference + rng.normal(scale=0.1, size=reference.shape)
    expected = kabsch_rmsd(deformed[0, 0], reference[0, 0]) ** 2 / 3  # per coordinate
    assert superposed_mse_per_lead_time(deformed, reference)[0] == pytest.approx(expected, rel=1e-9)
    assert superposed_mse_per_lead_time(deformed, reference)[0] < mse_per_lead_time(deformed, reference)[0]


def test_kabsch_matches_scipy_and_never_reflects():
    rng = np.random.default_rng(1)
    reference = _chiral_points(rng)
    for mobile in (reference + rng.normal(scale=0.3, size=reference.shape), reference * np.array([-1.0, 1.0, 1.0])):
        p = mobile - mobile.mean(0)
        q = reference - reference.mean(0)
        rotation, _ = Rotation.align_vectors(q, p)  # proper rotation only
        expected = np.sqrt(((rotation.apply(p) - q) ** 2).sum(-1).mean())
        assert kabsch_rmsd(mobile, reference) == pytest.approx(expected, rel=1e-9)
    mirror = reference * np.array([-1.0, 1.0, 1.0])
    assert kabsch_rmsd(mirror, reference) > 0.1  # a mirror image of a chiral set cannot be rotated onto it


def test_numpy_and_torch_kabsch_rotations_agree_including_reflections():
    import torch

    from asteroid_hpc.geometry import kabsch_rotation, kabsch_rotation_torch

    rng = np.random.default_rng(3)
    reference = np.stack([_chiral_points(rng) for _ in range(4)])
    mobile = reference + rng.normal(scale=0.3, size=reference.shape)
    mobile[1] *= np.array([-1.0, 1.0, 1.0])  # a mirror image: both must still return a proper rotation
    expected = kabsch_rotation(mobile, reference)
    got = kabsch_rotation_torch(torch.from_numpy(mobile).float(), torch.from_numpy(reference).float()).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.det(got), 1.0)


def test_metrics_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, asteroid_hpc.metrics, asteroid_hpc.geometry; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_rmsd_per_lead_time_shapes():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(3, 5, 3))
    members = np.stack([reference, reference + 1.0])
    unaligned = rmsd_per_lead_time(members, reference, superpose=False)
    aligned = rmsd_per_lead_time(members, reference, superpose=True)
    assert unaligned.shape == (2, 3)
    assert unaligned[0] == pytest.approx(0.0) and unaligned[1] == pytest.approx(np.sqrt(3.0))
    assert aligned == pytest.approx(np.zeros((2, 3)), abs=1e-9)  # a translation is removed


def test_crps_by_hand_and_against_brute_force():
    reference = np.zeros((1, 1, 3))
    one = np.ones((1, 1, 1, 3)) * 2.0
    assert crps_per_lead_time(one, reference) == pytest.approx([2.0])  # one member: absolute error
    two = np.zeros((2, 1, 1, 3))
    two[1] = 2.0
    # E|X - y| = 1, E|X - X'| = (0 + 2 + 2 + 0) / 4 = 1  ->  1 - 0.5
    assert crps_per_lead_time(two, reference) == pytest.approx([0.5])

    rng = np.random.default_rng(3)
    members = rng.normal(size=(5, 4, 3, 3))
    truth = rng.normal(size=(4, 3, 3))
    skill = np.abs(members - truth).mean(0)
    pairs = np.abs(members[:, None] - members[None, :]).mean((0, 1))
    assert crps_per_lead_time(members, truth) == pytest.approx((skill - 0.5 * pairs).mean(axis=(1, 2)))
