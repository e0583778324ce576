"""Ensemble forecasts of periodic systems: periodic halos, what member files hold (cells, wrapped molecules or
continuous coordinates), readers' view of them, the watch across the faces, and a model of the other kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import assert_user_error, cli_env, run_cli
from tests.support.ensemble import (ensemble_model_file, periodic_model_file, periodic_signature, water_box_frames,
                                    water_box_trajectory, water_topology, wrap_atoms, write_trajectory)

ENV = cli_env(OMP_NUM_THREADS="1")
TRICLINIC = np.array([22.0, 19.0, 18.0, 75.0, 80.0, 70.0])  # lengths Å, angles °


def _minimum_image_distances(x: np.ndarray, cell_vectors: np.ndarray) -> np.ndarray:
    """All-pair minimum-image distances [N, N] by brute force over the 125 nearest images."""
    offsets = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing="ij"), -1).reshape(-1, 3) @ cell_vectors
    d = x[None, :, None] - x[:, None, None] + offsets[None, None]
    return np.linalg.norm(d, axis=-1).min(axis=-1)


@pytest.mark.parametrize("cell, domains", [(np.array([30.0, 14.0, 13.0, 90.0, 90.0, 90.0]), 2), (TRICLINIC, 3)])
def test_periodic_halos_hold_every_minimum_image_neighbour_across_the_faces(cell, domains):
    from asteroid_hpc.ensemble.domains import decompose
    from asteroid_hpc.geometry import cell_matrix

    rng = np.random.default_rng(0)
    vectors = cell_matrix(cell)
    first = rng.uniform(0.0, 1.0, size=(300, 3)) @ vectors
    second = first + rng.normal(scale=0.5, size=first.shape)  # a second member near the first ...
    lattice = rng.integers(-1, 2, size=(2, 300, 3)) @ vectors  # ... and both unwrapped: atoms anywhere
    positions = np.stack([first, second]) + lattice
    cutoff = 4.0
    parts = decompose(positions, domains, cutoff, vectors)
    assert sorted(np.concatenate([parts.owned(d) for d in range(domains)]).tolist()) == list(range(300))
    across_faces = 0
    for member in positions:
        distances = _minimum_image_distances(member, vectors)
        plain = np.linalg.norm(member[:, None] - member[None], axis=-1)
        for d in range(domains):
            needed = np.flatnonzero((distances[parts.owned(d)] <= cutoff).any(axis=0))
            assert set(needed) <= set(parts.local[d].tolist())
            across_faces += int(((distances[parts.owned(d)] <= cutoff) & (plain[parts.owned(d)] > cutoff)).sum())
            assert len(parts.local[d]) < 300  # a real halo, not the whole box
    assert across_faces > 0  # neighbours that only a minimum image finds were needed


def test_open_decomposition_is_unchanged():
    from asteroid_hpc.ensemble.domains import decompose

    positions = np.random.default_rng(1).normal(scale=8.0, size=(200, 3))
    parts = decompose(positions, 2, 3.0)
    axis = int(np.argmax(np.ptp(positions, axis=0)))
    for d in range(2):  # the slab's extent ± the cutoff along the longest axis, as before
        x = positions[:, axis]
        owned = x[parts.owned(d)]
        expected = np.flatnonzero((x >= owned.min() - 3.0 * (1 + 1e-6)) & (x <= owned.max() + 3.0 * (1 + 1e-6)))
        assert sorted(parts.local[d].tolist()) == expected.tolist()


def test_output_wrap_puts_whole_molecules_in_the_box_by_lattice_vectors():
    from asteroid_hpc.ensemble.periodic import OutputWrap
    from asteroid_hpc.geometry import cell_matrix

    frames, numbers, bonds, cell = water_box_frames(n_frames=3)
    broken = wrap_atoms(frames, cell) + np.array([2.0, -1.0, 3.0]) * cell[:3]  # atoms apart, anywhere
    wrapped = OutputWrap("molecules", cell, len(numbers), bonds)(broken)
    oh = np.linalg.norm(wrapped[:, 0::3, None] - wrapped.reshape(3, -1, 3, 3)[:, :, 1:], axis=-1)
    assert oh.max() < 1.1  # whole molecules: O–H bonds of 0.96 Å, none across the box
    centres = wrapped.reshape(3, -1, 3, 3).mean(axis=2)
    assert centres.min() >= 0 and (centres < cell[:3]).all()
    moved = (wrapped - broken) @ np.linalg.inv(cell_matrix(cell))  # whole lattice vectors per atom
    assert np.abs(moved - np.rint(moved)).max() < 1e-3
    per_atom = OutputWrap("molecules", cell, len(numbers))(broken)  # no bonds: every atom alone in the box
    assert per_atom.min() >= 0 and (per_atom < cell[:3] + 1e-4).all()
    assert np.array_equal(OutputWrap("none", cell, len(numbers), bonds)(broken), broken.astype(np.float32))


def test_continuous_reader_undoes_the_wrapping_and_passes_continuous_frames_bit_for_bit():
    from asteroid_hpc.data.frames import FrameChunk
    from asteroid_hpc.ensemble.periodic import ContinuousReader

    frames, _, _, cell = water_box_frames(n_frames=10, drift_angstrom=0.3)

    class Reader:
        path, n_frames, n_atoms = Path("x.nc"), 9, frames.shape[1]

        def __init__(self, coordinates):
            self.coordinates = coordinates.astype(np.float32)

        def read(self, a, b):
            return FrameChunk(a, self.coordinates[a + 1:b + 1], None)

    wrapped = ContinuousReader(Reader(wrap_atoms(frames, cell)), frames[0], cell)
    back = np.concatenate([wrapped.read(0, 4).coordinates, wrapped.read(4, 9).coordinates])
    assert np.abs(back - frames[1:]).max() < 1e-4
    continuous = Reader(frames)
    assert np.array_equal(ContinuousReader(continuous, frames[0], cell).read(0, 9).coordinates,
                          continuous.coordinates[1:])
    with pytest.raises(ValueError, match="in order"):
        wrapped.read(2, 3)


def test_the_watch_measures_across_the_faces():
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.watch import Watch

    frames, numbers, bonds, cell = water_box_frames(n_frames=6)
    broken = wrap_atoms(frames, cell)
    watch = Watch.from_window(broken[:4], numbers, EnsembleConfig(), cell)
    assert {tuple(b) for b in bonds} <= {tuple(b) for b in watch.bonds.tolist()}
    checks = watch.check(broken[4:], broken[3])
    assert checks.bond_deviation_angstrom.max() < 0.1 and checks.displacement_angstrom.max() < 0.5
    assert (watch.clashes(broken[4:]) == 0).all()
    open_watch = Watch.from_window(broken[:4], numbers, EnsembleConfig())  # the same frames without the box
    assert len(open_watch.bonds) < len(bonds)  # molecules cut by the faces lose bonds


@pytest.fixture(scope="module")
def water(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("water")
    frames, numbers, _, cell = water_box_frames(n_frames=12)
    return {"model": periodic_model_file(root / "periodic.safetensors", numbers),
            "box": water_box_trajectory(root / "box.nc"), "topology": water_topology(root / "water.pdb"),
            "open_input": write_trajectory(root / "open.nc", frames, numbers), "cell": cell}


def _forecast(water, out: Path, *overrides: str, model: str = "model", initial: str = "box"):
    return run_cli("ensemble-forecast", water[model], water[initial], "-o", out, "--topology", water["topology"],
                   "ensemble.members=2", "ensemble.horizon_frames=6", "ensemble.chunk_frames=4", *overrides, env=ENV)


def test_periodic_members_carry_the_cell_and_are_wrapped_or_continuous(water, tmp_path):
    from asteroid_hpc.data.amber import read_frames

    wrapped = _forecast(water, tmp_path / "molecules")
    assert wrapped.returncode == 0, wrapped.stderr
    assert "periodic box 12.4 x 12.4 x 12.4 A" in wrapped.stderr and "output_wrap=molecules" in wrapped.stderr
    continuous = _forecast(water, tmp_path / "none", "ensemble.output_wrap=none")
    assert continuous.returncode == 0, continuous.stderr
    cell = water["cell"]
    for m in range(2):
        a = read_frames(tmp_path / "molecules" / "members" / f"member_{m:05d}.nc")
        b = read_frames(tmp_path / "none" / "members" / f"member_{m:05d}.nc")
        assert np.allclose(a.cell, cell) and np.allclose(b.cell, cell)
        centres = a.coordinates.reshape(6, -1, 3, 3).mean(axis=2)
        assert centres.min() >= 0 and (centres < cell[:3]).all()
        assert np.linalg.norm(a.coordinates[:, 0::3] - a.coordinates[:, 1::3], axis=-1).max() < 1.5  # whole
        shift = (a.coordinates - b.coordinates) / cell[:3]  # the same trajectory, moved by whole box vectors
        assert np.abs(shift - np.rint(shift)).max() < 1e-4 and np.abs(shift).max() > 0.5
        steps = np.abs(np.diff(b.coordinates, axis=0)).max()
        assert steps < 1.0  # continuous: no jump across a face
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("molecules", "none")]
    assert summaries[0]["watch"]["bonds"] >= 128
    for key in ("spread_rms_angstrom_final", "spread_rms_angstrom_mean_over_lead_times"):
        assert summaries[0][key] == pytest.approx(summaries[1][key], abs=1e-4)  # read back as continuous
    assert [p["max_displacement_angstrom"] for p in summaries[0]["watch"]["per_member"]] == pytest.approx(
        [p["max_displacement_angstrom"] for p in summaries[1]["watch"]["per_member"]], abs=1e-4)
    assert np.allclose(read_frames(tmp_path / "molecules" / "mean.nc").cell, cell)


def test_mdanalysis_and_mdtraj_read_members_with_their_box(water, tmp_path):
    mda = pytest.importorskip("MDAnalysis")
    mdtraj = pytest.importorskip("mdtraj")
    proc = _forecast(water, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    member = tmp_path / "out" / "members" / "member_00000.nc"
    universe = mda.Universe(str(water["topology"]), str(member))
    assert universe.trajectory.n_frames == 6
    assert np.allclose(universe.dimensions, water["cell"])
    trajectory = mdtraj.load(str(member), top=str(water["topology"]))
    assert np.allclose(trajectory.unitcell_lengths * 10.0, water["cell"][:3])  # nm
    assert np.allclose(trajectory.unitcell_angles, 90.0)


def test_verlet_lists_in_a_box_equal_rebuilding_every_pass(water, tmp_path):
    from asteroid_hpc.data.amber import read_frames

    base = ("ensemble.output_wrap=none", "ensemble.horizon_frames=8")
    plain = _forecast(water, tmp_path / "plain", *base)
    verlet = _forecast(water, tmp_path / "verlet", *base, "ensemble.neighbor_skin_angstrom=1.0")
    assert plain.returncode == 0 and verlet.returncode == 0, plain.stderr + verlet.stderr
    for m in range(2):
        a, b = (read_frames(tmp_path / run / "members" / f"member_{m:05d}.nc").coordinates for run in ("plain", "verlet"))
        assert np.abs(a - b).max() <= 1e-5
    passes = json.loads((tmp_path / "verlet" / "summary.json").read_text())["forecast_passes"]
    assert passes["neighbor_list_builds"] >= 1


def test_a_model_of_the_other_kind_is_refused_in_one_line(water, tmp_path):
    assert_user_error(_forecast(water, tmp_path / "a", initial="open_input"), "open.nc",
                      "trained on periodic systems", "has none")
    from asteroid_hpc.model import load_weights, save_weights

    model = load_weights(water["model"])
    model.data_signature = {**periodic_signature(model.data_signature["atomic_numbers"]), "periodic": False}
    water["open_model"] = save_weights(model, tmp_path / "open.safetensors")
    assert_user_error(_forecast(water, tmp_path / "b", model="open_model"), "box.nc", "trained on open systems")


def test_an_unsigned_open_model_still_forecasts_open_systems(water, tmp_path):
    """Open systems as before: no cell in the files, no box in the log."""
    from asteroid_hpc.data.amber import AmberReader

    water["unsigned"] = ensemble_model_file(tmp_path / "tiny.safetensors")
    proc = _forecast(water, tmp_path / "out", model="unsigned", initial="open_input")
    assert proc.returncode == 0, proc.stderr
    assert "periodic box" not in proc.stderr
    with AmberReader(tmp_path / "out" / "members" / "member_00000.nc") as reader:
        assert reader.read(0, 1).cell is None


def test_members_hold_the_distances_the_starting_window_holds_fixed(water, tmp_path):
    """Rigid waters (no jitter): ensemble.constraints=auto keeps every O–H and H–H of every member at its length."""
    from asteroid_hpc.data.amber import read_frames

    rigid = water_box_trajectory(tmp_path / "rigid.nc", jitter_angstrom=0.0)
    runs = {}
    for setting in ("auto", "none"):
        proc = run_cli("ensemble-forecast", water["model"], rigid, "-o", tmp_path / setting, "--topology",
                       water["topology"], "ensemble.members=2", "ensemble.horizon_frames=6", "ensemble.output_wrap=none",
                       f"ensemble.constraints={setting}", env=ENV)
        assert proc.returncode == 0, proc.stderr
        assert ("192 bond and 1–3 distances" in proc.stderr) == (setting == "auto")
        runs[setting] = [read_frames(tmp_path / setting / "members" / f"member_{m:05d}.nc").coordinates
                         for m in range(2)]
    start = read_frames(rigid).coordinates[-1]  # each atom wrapped alone: minimum images
    edges = water["cell"][:3]

    def length(x, a, b):
        vector = x[..., a::3, :] - x[..., b::3, :]
        return np.linalg.norm(vector - edges * np.round(vector / edges), axis=-1)

    for setting, members in runs.items():
        for frames in members:
            deviation = max(np.abs(length(frames, a, b) - length(start, a, b)).max() for a, b in ((0, 1), (0, 2), (1, 2)))
            assert (deviation < 1e-4) == (setting == "auto"), (setting, deviation)


def test_spatial_domains_hold_the_constraints_too(water, tmp_path):
    from asteroid_hpc.config.schema import EnsembleConfig
    from asteroid_hpc.ensemble.perturb import inspect_initial
    from asteroid_hpc.ensemble.run import _held_distances
    from dataclasses import replace

    from asteroid_hpc.data.topology import read_topology

    rigid = water_box_trajectory(tmp_path / "rigid.nc", jitter_angstrom=0.0)
    initial = inspect_initial(rigid, EnsembleConfig(), 4)
    initial = replace(initial, bonds=read_topology(water["topology"]).bonds)
    assert len(_held_distances(initial, EnsembleConfig(), 4, True)) == 192
    assert len(_held_distances(initial, EnsembleConfig(domains=2), 4, True)) == 192
    assert _held_distances(initial, EnsembleConfig(constraints="none"), 4, True) is None


def test_domains_complete_the_constraint_groups_and_project_them_as_the_whole_system():
    """A halo holds every water one of its atoms belongs to; projecting a domain's waters alone (restricted
    constraints) moves them exactly as projecting the whole box does."""
    import torch

    from asteroid_hpc.ensemble.domains import decompose
    from asteroid_hpc.geometry import cell_matrix
    from asteroid_hpc.metrics.physics import masses_amu
    from asteroid_hpc.model.constraints import find_constraints, project

    frames, numbers, bonds, cell = water_box_frames((6, 3, 3), n_frames=4, jitter_angstrom=0.0)
    h_h = np.stack([bonds[0::2, 1], bonds[1::2, 1]], axis=1)  # each water's two H
    history = torch.as_tensor(frames[None])
    held = find_constraints(history, np.concatenate([bonds, h_h]), masses_amu(numbers), torch.as_tensor(
        cell_matrix(cell)[None]))
    assert len(held) == len(numbers)  # O–H, O–H, H–H per water
    groups = held.groups().numpy()
    assert len(np.unique(groups)) == len(numbers) // 3 and (groups >= 0).all()
    box = cell_matrix(cell)
    plain = decompose(frames[-1], 2, 2.0, box)
    whole = decompose(frames[-1], 2, 2.0, box, groups)
    def whole_waters(local):
        return all(set(np.flatnonzero(groups == g)) <= set(local) for g in np.unique(groups[local]))

    assert not all(whole_waters(plain.local[d]) for d in range(2))  # a cutoff halo alone cuts waters
    for d in range(2):
        assert set(plain.local[d]) <= set(whole.local[d]) and whole_waters(whole.local[d])
    rng = np.random.default_rng(0)
    moved = torch.as_tensor(frames[-1:] + rng.normal(scale=0.03, size=frames[-1:].shape))
    cell_t = torch.as_tensor(box[None])
    everything = project(moved, held, cell_t)
    for d in range(2):
        local = torch.as_tensor(whole.local[d])
        alone = project(moved[:, local], held.restricted(local), cell_t)
        assert torch.equal(alone, everything[:, local])
