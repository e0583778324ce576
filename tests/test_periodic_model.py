"""Periodic boxes through the model: exact minimum-image neighbour search (orthorhombic, truncated octahedron,
rhombic dodecahedron), and forecasts that do not depend on where the atoms sit in the box: invariant to
translating the system, re-wrapping atoms and rotating atoms with their box. Refusals in one line."""

import itertools

import numpy as np
import pytest
import torch

from asteroid_hpc.config.schema import LossWeights, ModelConfig
from asteroid_hpc.errors import UserError
from asteroid_hpc.geometry import cell_matrix
from asteroid_hpc.model import (build_model, load_weights, radius_graph, rotation_equivariance_error, save_weights,
                                sti_losses)
from asteroid_hpc.model.neighbors import VerletNeighbors
from asteroid_hpc.model.periodic import minimum_image, minimum_image_shift, perpendicular_widths
from asteroid_hpc.model.symmetry import random_rotations, rotate_about

M, L, N = 4, 4, 40
OUTPUTS = ("forecast", "hankel", "reconstruction", "readoff")
CELLS = {  # lengths Å, angles °: GROMACS's truncated octahedron and (xy-square) rhombic dodecahedron
    "orthorhombic": [9.5, 10.0, 10.5, 90.0, 90.0, 90.0],
    "truncated_octahedron": [11.0, 11.0, 11.0, 70.528779, 109.471221, 70.528779],
    "rhombic_dodecahedron": [11.0, 11.0, 11.0, 60.0, 60.0, 90.0],
}


def cell_of(kind: str) -> np.ndarray:
    return cell_matrix(CELLS[kind])


def brute_force_minimum_image(vectors: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The shortest of 7³ images of each vector [..., 3] (rounded in fractional coordinates first)."""
    base = vectors - np.round(vectors @ np.linalg.inv(cell)) @ cell
    images = base[..., None, :] + np.array(list(itertools.product(range(-3, 4), repeat=3))) @ cell
    best = np.linalg.norm(images, axis=-1).argmin(-1)
    return np.take_along_axis(images, best[..., None, None], axis=-2)[..., 0, :]


def scattered_atoms(cell: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` atoms [n, 3] Å: a third at the faces, edges and corners, all moved by random lattice vectors."""
    rng = np.random.default_rng(seed)
    frac = rng.random((n, 3))
    frac[: n // 3] = np.round(frac[: n // 3]) + rng.normal(0.0, 0.02, (n // 3, 3))
    return (frac + rng.integers(-2, 3, (n, 3))) @ cell


def small_config(**overrides) -> ModelConfig:
    base = dict(history_frames=M, delay_length=L, hidden_size=16, num_heads=2, encoder_layers=2, decoder_layers=2,
                num_global_tokens=2, num_rbf=6, cutoff_angstrom=3.0, max_neighbors=8, symmetry="equivariant")
    return ModelConfig(**{**base, **overrides})


def make_model(**overrides):
    torch.manual_seed(0)
    return build_model(small_config(**overrides)).eval().double()


def box_window(cell: np.ndarray, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A continuous (unwrapped) window [B, M, N, 3] of atoms spread through the box and beyond its faces."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.from_numpy(np.stack([scattered_atoms(cell, N, seed + b) for b in range(batch)])).unsqueeze(1)
    steps = torch.randn(batch, M, N, 3, generator=gen, dtype=torch.float64) * 0.05
    return start + steps.cumsum(dim=1), torch.tensor([8, 1, 1, 6] * (N // 4))


# ----------------------------------------------------------------------------------------- geometry

def test_cell_matrix_gives_the_lengths_and_angles_back():
    assert np.array_equal(cell_matrix(CELLS["orthorhombic"]), np.diag([9.5, 10.0, 10.5]))  # exactly diagonal
    matrices = cell_matrix(np.array([CELLS[kind] for kind in CELLS]))
    assert matrices.shape == (3, 3, 3)
    for matrix, kind in zip(matrices, CELLS):
        a, b, c = matrix
        lengths = np.linalg.norm(matrix, axis=1)

        def angle(u, v):
            return np.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))

        assert np.allclose(lengths, CELLS[kind][:3], atol=1e-10)
        assert np.allclose([angle(b, c), angle(a, c), angle(a, b)], CELLS[kind][3:], atol=1e-8)
        assert matrix[0, 1] == matrix[0, 2] == matrix[1, 2] == 0.0  # a along x, b in the xy plane
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        cell_matrix([1.0, 2.0, 3.0])


@pytest.mark.parametrize("kind", CELLS)
def test_minimum_image_is_exact_and_leaves_short_vectors_bit_for_bit(kind):
    cell = cell_of(kind)
    rng = np.random.default_rng(1)
    vectors = rng.normal(0.0, 15.0, (1, 500, 3))
    got = minimum_image(torch.from_numpy(vectors), torch.from_numpy(cell)[None]).numpy()
    assert np.allclose(got, brute_force_minimum_image(vectors, cell), atol=1e-12)
    short = torch.from_numpy(rng.normal(0.0, 0.5, (1, 500, 3))).float()
    assert torch.equal(minimum_image(short, torch.from_numpy(cell).float()[None]), short)
    assert not minimum_image_shift(short, torch.from_numpy(cell).float()[None]).any()


# ----------------------------------------------------------------------------------------- neighbour lists

def rotated(cell: np.ndarray, seed: int = 0) -> np.ndarray:
    return cell @ random_rotations(1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))[0].numpy().T


@pytest.mark.parametrize("kind", [*CELLS, "rotated_truncated_octahedron"])
def test_periodic_radius_graph_matches_brute_force_minimum_image(kind):
    cell = rotated(cell_of("truncated_octahedron")) if kind.startswith("rotated") else cell_of(kind)
    coords, cutoff = scattered_atoms(cell, 150, seed=2), 3.8
    graph = radius_graph(torch.from_numpy(coords), cutoff, 150, cell=torch.from_numpy(cell))
    vectors = brute_force_minimum_image(coords[None, :] - coords[:, None], cell)  # [i, j, 3]
    expected = {(i, j) for i, j in zip(*np.nonzero(np.linalg.norm(vectors, axis=-1) < cutoff))}
    index, mask, shift = graph.index[0].numpy(), graph.mask[0].numpy(), graph.shift[0].numpy()
    rows, slots = np.nonzero(mask)
    assert set(zip(rows.tolist(), index[rows, slots].tolist())) == expected
    assert len(rows) == len(expected)  # every pair listed once
    listed = coords[index[rows, slots]] - coords[rows] + shift[rows, slots]
    assert np.abs(listed - vectors[rows, index[rows, slots]]).max() < 1e-10
    assert not shift[~mask].any()
    distances = np.where(mask, np.linalg.norm(coords[index] - coords[:, None] + shift, axis=-1), 1e9)
    assert np.all(np.diff(distances, axis=1) >= 0)  # nearest first, padding last
    assert np.any(np.abs(shift[mask]).sum(-1) > 0)  # the test does cross faces


def test_an_atom_at_one_face_sees_its_neighbour_across_it():
    cell = torch.diag(torch.tensor([10.0, 11.0, 12.0]))
    positions = torch.tensor([[0.2, 5.0, 6.0], [9.7, 5.0, 6.0], [5.0, 5.0, 6.0]])
    graph = radius_graph(positions, 2.0, 3, cell=cell)
    open_graph = radius_graph(positions, 2.0, 3)
    assert graph.mask[0].sum(-1).tolist() == [2, 2, 1] and open_graph.mask[0].sum(-1).tolist() == [1, 1, 1]
    assert graph.index[0, 0, 1] == 1 and graph.index[0, 1, 1] == 0
    assert torch.allclose(graph.shift[0, 0, 1], torch.tensor([-10.0, 0.0, 0.0]))  # x_1 − x_0 − a: −0.5 Å along x
    assert torch.allclose(positions[1] - positions[0] + graph.shift[0, 0, 1], torch.tensor([-0.5, 0.0, 0.0]))


@pytest.mark.parametrize("kind", ["orthorhombic", "rhombic_dodecahedron"])
def test_verlet_lists_across_faces_equal_rebuilt_lists_while_atoms_move(kind):
    cell = torch.from_numpy(cell_of(kind))
    rng = np.random.default_rng(3)
    positions = torch.from_numpy(np.stack([scattered_atoms(cell.numpy(), 120, 4), scattered_atoms(cell.numpy(), 120, 5)]))
    verlet = VerletNeighbors(2.8, 10, skin_angstrom=1.0)
    for step in range(10):  # continuous coordinates drifting through the faces
        positions = positions + torch.from_numpy(rng.normal(scale=0.1, size=positions.shape) + 0.05)
        expected, got = radius_graph(positions, 2.8, 10, cell=cell), verlet.graph(positions, cell)
        assert torch.equal(got.mask, expected.mask), step
        assert torch.equal(got.index, expected.index), step
        assert torch.allclose(got.shift, expected.shift, atol=1e-12), step
    assert 1 < verlet.rebuilds < 10
    verlet.keep(torch.tensor([1]))
    assert torch.equal(verlet.graph(positions[1:], cell).index, expected.index[1:])
    rebuilds = verlet.rebuilds
    verlet.graph(positions[1:], cell * 1.01)  # a new box: a new list
    assert verlet.rebuilds == rebuilds + 1


def test_a_cutoff_too_large_for_the_box_is_refused():
    cell = torch.from_numpy(cell_of("truncated_octahedron"))
    width = float(perpendicular_widths(cell).min())
    with pytest.raises(UserError, match="half the box's shortest perpendicular width"):
        radius_graph(torch.zeros(3, 3), width / 2 + 0.01, 3, cell=cell)
    with pytest.raises(UserError, match="degenerate"):
        radius_graph(torch.zeros(3, 3), 1.0, 3, cell=torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]))
    history, z = box_window(cell_of("orthorhombic"), batch=1)
    with pytest.raises(UserError, match="half the box"):
        make_model(cutoff_angstrom=5.0)(history, z, 1, cell=torch.from_numpy(cell_of("orthorhombic")))


# ----------------------------------------------------------------------------------------- the model

MODEL_CASES = [(kind, attention, symmetry) for kind in ("orthorhombic", "truncated_octahedron")
               for attention in ("local_global", "full") for symmetry in ("equivariant", "augment")]


def assert_outputs_close(got, expected, offset=0.0, atol=1e-9):
    """Every output of ``got`` equals that of ``expected`` moved by ``offset`` ([B, 1, N, 3] or a scalar)."""
    for name in OUTPUTS:
        per_atom = name == "hankel" and torch.is_tensor(offset) and offset.dim() == 4  # hankel: [B, m, L, N, 3]
        want = getattr(expected, name) + (offset.unsqueeze(1) if per_atom else offset)
        assert torch.allclose(getattr(got, name), want, atol=atol, rtol=0), name


@pytest.mark.parametrize("kind,attention,symmetry", MODEL_CASES)
def test_forecast_is_invariant_to_translating_the_system_and_to_the_box_origin(kind, attention, symmetry):
    cell = torch.from_numpy(cell_of(kind))
    model = make_model(attention=attention, symmetry=symmetry)
    history, z = box_window(cell.numpy())
    out = model(history, z, L + 1, cell=cell)  # two passes: the rolled window too
    translation = torch.tensor([37.3, -12.1, 5.7], dtype=torch.float64)
    assert_outputs_close(model(history + translation, z, L + 1, cell=cell), out, translation)
    # shifting the box origin = wrapping each atom's whole history by a different lattice vector
    lattice = torch.randint(-2, 3, (2, 1, N, 3), generator=torch.Generator().manual_seed(1)).double() @ cell
    assert_outputs_close(model(history + lattice, z, L + 1, cell=cell), out, lattice)
    # every frame wrapped into the box, as MD engines write them: forecasts continue from the last frame given
    wrapped = history - torch.floor(history @ torch.linalg.inv(cell)) @ cell
    assert not torch.allclose(wrapped - wrapped[:, -1:], history - history[:, -1:])  # atoms did jump
    assert_outputs_close(model(wrapped, z, L + 1, cell=cell), out, wrapped[:, -1:] - history[:, -1:])
    # the same atoms with open boundaries are another system
    assert not torch.allclose(model(history, z, L + 1).forecast, out.forecast, atol=1e-6)


@pytest.mark.parametrize("kind,attention,symmetry", MODEL_CASES)
def test_forecast_is_invariant_to_permuting_atoms_in_a_box(kind, attention, symmetry):
    cell = torch.from_numpy(cell_of(kind))
    model = make_model(attention=attention, symmetry=symmetry)
    history, z = box_window(cell.numpy())
    order = torch.randperm(N, generator=torch.Generator().manual_seed(2))
    out, permuted = model(history, z, L, cell=cell), model(history[:, :, order], z[order], L, cell=cell)
    for name in OUTPUTS:
        assert torch.allclose(getattr(permuted, name), getattr(out, name)[..., order, :], atol=1e-9), name


@pytest.mark.parametrize("kind", ["truncated_octahedron", "rhombic_dodecahedron", "orthorhombic"])
@pytest.mark.parametrize("attention", ["local_global", "full"])
def test_rotating_atoms_with_their_box_rotates_the_forecast(kind, attention):
    cell = torch.from_numpy(cell_of(kind))
    history, z = box_window(cell.numpy())
    cells = cell.expand(2, 3, 3)
    equivariant = make_model(attention=attention)
    error64 = rotation_equivariance_error(equivariant, history, z, L, num_rotations=2, cell=cells)
    error32 = rotation_equivariance_error(equivariant.float(), history.float(), z, L, num_rotations=2,
                                          cell=cells.float())
    augment = rotation_equivariance_error(make_model(attention=attention, symmetry="augment"), history, z, L,
                                          num_rotations=2, cell=cells)
    assert error64 < 1e-10 and error32 < 1e-4
    assert augment > 1e-3  # not equivariant by construction: the measurement can tell


@pytest.mark.parametrize("attention", ["local_global", "full"])
def test_augment_training_turns_the_box_with_the_atoms(attention):
    """In training, "augment" rotates each window and its box at random: the same as the eval model given the
    rotated window and box, rotated back."""
    cell = torch.from_numpy(cell_of("truncated_octahedron"))
    model = make_model(attention=attention, symmetry="augment")
    history, z = box_window(cell.numpy())
    torch.manual_seed(7)
    rotation = random_rotations(2, dtype=torch.float64)
    model.train()
    torch.manual_seed(7)
    trained = model(history, z, L - 1, cell=cell).forecast
    model.eval()
    centre = history.mean(dim=(1, 2), keepdim=True)
    turned = model(rotate_about(history, rotation, centre), z, L - 1, cell=cell @ rotation.transpose(1, 2)).forecast
    assert torch.allclose(trained, rotate_about(turned, rotation.transpose(1, 2), centre), atol=1e-9)
    unturned = model(rotate_about(history, rotation, centre), z, L - 1, cell=cell).forecast
    assert not torch.allclose(trained, rotate_about(unturned, rotation.transpose(1, 2), centre), atol=1e-4)


def test_large_boxes_run_in_spatial_order_from_anywhere_in_space(monkeypatch):
    import asteroid_hpc.model.asteroid as asteroid_module

    cell = torch.from_numpy(cell_of("rhombic_dodecahedron"))
    model = make_model()
    history, z = box_window(cell.numpy())  # atoms up to two boxes outside the cell
    reference = model(history, z, L, cell=cell)
    monkeypatch.setattr(asteroid_module, "LOCALITY_SORT_MIN_ATOMS", 1)
    order = model._locality_order(history, None, None, cell.expand(2, 3, 3))
    assert order is not None and not torch.equal(order, torch.arange(N))
    assert_outputs_close(model(history, z, L, cell=cell), reference)


def test_teacher_forcing_and_gradients_in_a_box():
    cell = torch.from_numpy(cell_of("truncated_octahedron"))
    model = make_model().train()
    history, z = box_window(cell.numpy())
    target = history[:, -1:] + (history[:, 1:] - history[:, :-1]).cumsum(dim=1)  # M − 1 frames on
    generated = model(history, z, L - 1, cell=cell).forecast
    wrapped_target = generated - torch.floor(generated @ torch.linalg.inv(cell)) @ cell
    teacher = model(history, z, L - 1, wrapped_target, cell=cell).forecast  # teacher frames as wrapped as history
    assert torch.allclose(teacher, generated, atol=1e-9)
    loss, _ = sti_losses(model(history, z, L - 1, target, cell=cell), history, target, LossWeights())
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"


# ----------------------------------------------------------------------------------------- refusals

def test_a_model_refuses_the_other_kind_of_system_in_one_line(tmp_path):
    cell = torch.from_numpy(cell_of("orthorhombic"))
    history, z = box_window(cell.numpy())
    model = make_model()
    model.data_signature = {"input_atoms": N, "periodic": True}
    periodic = load_weights(save_weights(model.float(), tmp_path / "box.safetensors"))
    assert periodic.data_signature["periodic"] is True
    with pytest.raises(UserError, match="trained on periodic systems: it needs the input's cell"):
        periodic.forecast(history.float(), z, 2)
    assert torch.isfinite(periodic.forecast(history.float(), z, 2, cell=cell)).all()
    for signature in ({"input_atoms": N, "periodic": False}, {"input_atoms": N}):  # without the field: before boxes
        periodic.data_signature = signature
        with pytest.raises(UserError, match="trained on open systems"):
            periodic.forecast(history.float(), z, 2, cell=cell)
        assert torch.isfinite(periodic.forecast(history.float(), z, 2)).all()
    periodic.data_signature = None  # a model saved without a signature is not checked
    assert torch.isfinite(periodic.forecast(history.float(), z, 2, cell=cell)).all()


def test_whole_molecule_vectors_and_mismatched_neighbour_lists_are_refused():
    cell = torch.from_numpy(cell_of("orthorhombic"))
    history, z = box_window(cell.numpy())
    with pytest.raises(UserError, match="rotation_basis are vectors of a whole molecule"):
        make_model(rotation_basis=True)(history, z, 1, cell=cell)
    torch.manual_seed(0)
    reference = build_model(small_config(reference_structure="training_mean"), history[0, 0].tolist()).double()
    with pytest.raises(UserError, match="do not apply to a periodic box"):
        reference(history, z, 1, cell=cell)
    model = make_model()
    with pytest.raises(UserError, match="needs a neighbour list with image shifts"):
        model(history, z, 1, graph=radius_graph(history[:, -1], 3.0, 8), cell=cell)
    with pytest.raises(UserError, match="image shifts but no cell"):
        model(history, z, 1, graph=radius_graph(history[:, -1], 3.0, 8, cell=cell))
    graph = radius_graph(history[:, -1], 3.0, 8, cell=cell)
    assert_outputs_close(model(history, z, 1, graph=graph, cell=cell), model(history, z, 1, cell=cell))
    with pytest.raises(UserError, match=r"cell must be \[3, 3\] or \[2, 3, 3\]"):
        model(history, z, 1, cell=cell[:2])
    with pytest.raises(UserError, match="NaN"):
        model(history, z, 1, cell=cell * float("nan"))


def test_the_data_signature_records_whether_the_dataset_is_periodic():
    from asteroid_hpc.data.signature import signature_of_manifest

    manifest = {"frame_stride": 1, "sources": [{"n_atoms": 3}], "atom_indices": [0, 1, 2], "atomic_numbers": [8, 1, 1],
                "timestep_fs": 10.0}
    assert signature_of_manifest(manifest)["periodic"] is False
    assert signature_of_manifest({**manifest, "periodic": True})["periodic"] is True
    assert signature_of_manifest({**manifest, "sources": [{"n_atoms": 3, "periodic": True}]})["periodic"] is True
