"""Constraint projection: which distances a window holds fixed, the projection onto them, and forecasts that keep them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asteroid_hpc.errors import UserError
from asteroid_hpc.model import constraints as cons

OH, HH = 0.9572, 1.5139
BOX = 12.0


def _rigid_waters(n_waters: int, n_frames: int, seed: int = 0) -> np.ndarray:
    """[F, 3·n, 3] rigid TIP3P-shaped waters that drift and turn from frame to frame (exact O–H and H–H)."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    half = np.arcsin(HH / (2 * OH))
    body = np.array([[0.0, 0.0, 0.0], [OH * np.sin(half), OH * np.cos(half), 0.0],
                     [-OH * np.sin(half), OH * np.cos(half), 0.0]])
    centres = rng.uniform(0, BOX, (n_waters, 3))
    turns = Rotation.random(n_waters, random_state=seed)
    spin = Rotation.from_rotvec(rng.normal(0, 0.1, (n_waters, 3)))
    frames = []
    for _ in range(n_frames):
        frames.append((turns.as_matrix() @ body.T).transpose(0, 2, 1) + centres[:, None])
        centres = centres + rng.normal(0, 0.05, centres.shape)
        turns = spin * turns
    return np.stack(frames).reshape(n_frames, -1, 3)


def _water_topology(n_waters: int) -> tuple[np.ndarray, np.ndarray]:
    numbers = np.tile([8, 1, 1], n_waters)
    bonds = np.array([[3 * k, 3 * k + h] for k in range(n_waters) for h in (1, 2)])
    return numbers, bonds


def _lengths(frames, pairs, cell=None) -> np.ndarray:
    vectors = frames[..., pairs[:, 1], :] - frames[..., pairs[:, 0], :]
    if cell is not None:
        vectors = vectors - cell * np.round(vectors / cell)
    return np.linalg.norm(vectors, axis=-1)


def test_a_window_of_rigid_waters_holds_their_three_distances_and_not_a_flexible_bond():
    frames = _rigid_waters(20, 4)
    numbers, bonds = _water_topology(20)
    stretched = frames.copy()  # water 0's first O–H vibrates (0.02 Å): a flexible bond, never held
    stretched[:, 1] = frames[:, 0] + (frames[:, 1] - frames[:, 0]) * (1 + 0.02 * np.sin(np.arange(4)))[:, None]
    found = cons.held_distances(bonds, numbers)(torch.as_tensor(stretched[None]), None)
    pairs = {tuple(p) for p in found.pairs.tolist()}
    # the stretched O–H moves its H–H too: 2 of water 0's 3 distances are not held, the 57 of the others are
    assert len(found) == 58 and {(0, 1), (1, 2)}.isdisjoint(pairs) and {(0, 2), (3, 4), (3, 5), (4, 5)} <= pairs
    by_pair = dict(zip(map(tuple, found.pairs.tolist()), found.lengths[0].tolist()))
    assert by_pair[(0, 2)] == pytest.approx(OH, abs=1e-9) and by_pair[(4, 5)] == pytest.approx(HH, abs=1e-9)
    flexible = frames + np.random.default_rng(1).normal(0, 0.01, frames.shape)  # like unconstrained MD
    assert cons.held_distances(bonds, numbers)(torch.as_tensor(flexible[None]), None) is None
    assert cons.held_distances(None, numbers)(torch.as_tensor(frames[None]), None) is None


def test_projection_restores_the_lengths_keeps_each_centre_of_mass_and_works_across_the_faces():
    frames = _rigid_waters(50, 4, seed=2)
    numbers, bonds = _water_topology(50)
    found = cons.held_distances(bonds, numbers)(torch.as_tensor(frames[None]), None)
    pairs = found.pairs.numpy()
    noisy = frames[-1] + np.random.default_rng(3).normal(0, 0.05, frames[-1].shape)
    assert np.abs(_lengths(noisy, pairs) - found.lengths[0].numpy()).max() > 0.02  # the test can fail
    given = noisy.copy()
    held = cons.project(torch.as_tensor(noisy[None]), found)[0].numpy()  # float64: shares noisy's memory
    assert np.array_equal(noisy, given)  # the input is left as it was
    np.testing.assert_allclose(_lengths(held, pairs), found.lengths[0].numpy(), atol=2e-5)
    masses = np.tile([15.999, 1.008, 1.008], 50)[:, None]
    centre = lambda x: (x * masses).reshape(50, 3, 3).sum(1) / masses.reshape(50, 3, 1).sum(1)  # noqa: E731
    np.testing.assert_allclose(centre(held), centre(noisy), atol=1e-9)
    assert np.abs(held - noisy).max() < 0.3  # a correction, not a new structure

    cell = torch.eye(3, dtype=torch.float64)[None] * BOX  # every atom wrapped alone: waters cut by the faces
    wrapped = noisy - BOX * np.floor(noisy / BOX)
    held_wrapped = cons.project(torch.as_tensor(wrapped[None]), found, cell)[0].numpy()
    np.testing.assert_allclose(_lengths(held_wrapped, pairs, BOX), found.lengths[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(held_wrapped - wrapped, held - noisy, atol=1e-9)  # the same moves as unwrapped


def test_a_blown_up_row_does_not_stop_the_others_and_stays_not_finite():
    frames = _rigid_waters(5, 4)
    numbers, bonds = _water_topology(5)
    found = cons.held_distances(bonds, numbers)(torch.as_tensor(np.stack([frames, frames])), None)
    rows = torch.as_tensor(np.stack([frames[-1] + 0.05, frames[-1]]))
    rows[0, 0] = float("nan")
    rows[1] = rows[1] + torch.as_tensor(np.random.default_rng(0).normal(0, 0.05, rows[1].shape))
    held = cons.project(rows, found)
    assert torch.isnan(held[0, 0]).all()
    np.testing.assert_allclose(_lengths(held[1].numpy(), found.pairs.numpy()), found.lengths[1].numpy(), atol=2e-5)


def _periodic_model(tmp_path):
    from asteroid_hpc.model import load_weights
    from tests.support.tiny import tiny_model_file

    model = load_weights(tiny_model_file(tmp_path / "tiny.safetensors", attention="local_global", num_rbf=4,
                                         num_global_tokens=1, cutoff_angstrom=4.0))
    return model.eval()


@pytest.mark.parametrize("sorted_atoms", [False, True])
def test_a_forecast_holds_the_constraints_at_every_step(tmp_path, monkeypatch, sorted_atoms):
    from asteroid_hpc.model import asteroid

    if sorted_atoms:  # the large-system path: atoms in spatial order inside the forward
        monkeypatch.setattr(asteroid, "LOCALITY_SORT_MIN_ATOMS", 8)
    model = _periodic_model(tmp_path)
    m = model.cfg.history_frames
    n_waters = 40
    frames = _rigid_waters(n_waters, m, seed=5)
    numbers, bonds = _water_topology(n_waters)
    history = torch.as_tensor(frames[None], dtype=torch.float32)
    cell = torch.eye(3)[None] * BOX
    found = cons.held_distances(bonds, numbers)(history.double(), cell.double())
    z = torch.as_tensor(numbers)
    free = model.forecast(history, z, 6, cell=cell).double().numpy()[0]
    held = model.forecast(history, z, 6, cell=cell, constraints=found.to(dtype=torch.float32)).double().numpy()[0]
    pairs, lengths = found.pairs.numpy(), found.lengths[0].numpy()
    assert np.abs(_lengths(free, pairs, BOX) - lengths).max() > 1e-3  # an untrained model breaks them
    np.testing.assert_allclose(_lengths(held, pairs, BOX), np.broadcast_to(lengths, (6, len(lengths))), atol=5e-5)
    target = torch.as_tensor(np.repeat(frames[-1:], 6, axis=0)[None], dtype=torch.float32)
    teacher = model(history, z, 6, target, cell=cell, constraints=found.to(dtype=torch.float32)).forecast
    plain = model(history, z, 6, target, cell=cell).forecast
    assert torch.equal(teacher, plain)  # teacher-forced steps are left as they come


def test_spatial_domains_take_constraints_only_with_whole_groups():
    from asteroid_hpc.model.domain import WholeSystem
    from asteroid_hpc.model.inputs import check_domain

    class Split(WholeSystem):
        owned_mask = torch.ones(3, dtype=torch.bool)

    class WholeGroups(Split):
        whole_groups = True

    model = type("M", (), {"uses_reference": False, "cfg": type("C", (), {"rotation_basis": False})})()
    with pytest.raises(UserError, match="spatial domains needs each domain to hold whole constraint groups"):
        check_domain(model, Split(), sample=False, constrained=True)
    domain = WholeGroups()
    assert check_domain(model, domain, sample=False, constrained=True) is domain


def test_unconstrained_xtb_md_holds_nothing():
    """The embedded GFN2-xTB aspirin (no constraints in its MD): nothing is held, forecasts stay as they were."""
    from asteroid_hpc.evaluation.trajectory import load_trajectory
    from asteroid_hpc.metrics.physics import detect_bonds
    from pathlib import Path

    traj = load_trajectory(Path(__file__).resolve().parents[1] / "asteroid_hpc" / "resources" / "aspirin_xtb.nc")
    bonds = detect_bonds(traj.positions[0], traj.atomic_numbers)
    windows = np.stack([traj.positions[s:s + 40:10] for s in (0, 500, 1000)])
    assert cons.held_distances(bonds, traj.atomic_numbers)(torch.as_tensor(windows), None) is None


def test_the_colours_cover_every_pair_once_and_never_share_an_atom():
    frames = _rigid_waters(30, 4, seed=7)
    numbers, bonds = _water_topology(30)
    found = cons.held_distances(bonds, numbers)(torch.as_tensor(frames[None]), None)
    assert len(found.colours) == 3  # a triangle needs three
    every = torch.cat(found.colours).sort().values
    assert torch.equal(every, torch.arange(len(found)))
    for colour in found.colours:
        atoms = found.pairs[colour].reshape(-1)
        assert len(torch.unique(atoms)) == len(atoms)
