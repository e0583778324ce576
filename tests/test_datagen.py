"""xTB-MD17 and Lennard-Jones data generation: geometry table, energy conservation, NetCDF, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.datagen import MOLECULES, get_molecule, xtb_trajectory
from asteroid_hpc.datagen.energy import (EnergyConservationError, check_conservation,
                                         measure_conservation)
from asteroid_hpc.datagen.generate import XtbRunSpec, generate_xtb_netcdf
from asteroid_hpc.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MD17_ATOM_COUNTS = {"aspirin": 21, "benzene": 12, "ethanol": 9, "malonaldehyde": 9, "naphthalene": 18,
                    "salicylic_acid": 16, "toluene": 15, "uracil": 12}


def read_nc(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Coordinates and atomic numbers through MDAnalysis (the strict AMBER reader) plus global attributes."""
    import MDAnalysis as mda
    import netCDF4

    with netCDF4.Dataset(path) as ds:
        z = np.array(ds["atomic_number"][:])
        attrs = {k: ds.getncattr(k) for k in ds.ncattrs()}
    u = mda.Universe.empty(len(z), trajectory=True)
    u.load_new(str(path), format="NCDF")
    coords = np.stack([ts.positions.copy() for ts in u.trajectory])
    return coords, z, attrs


def test_geometry_table_atom_counts():
    assert {name: m.n_atoms for name, m in MOLECULES.items()} == MD17_ATOM_COUNTS
    for m in MOLECULES.values():
        assert m.positions.shape == (m.n_atoms, 3)
        assert m.atomic_numbers.shape == (m.n_atoms,)
        # heavy atoms first: the heavy-atom subset is a prefix
        assert all(s != "H" for s in m.symbols[:m.n_heavy_atoms])
        assert all(s == "H" for s in m.symbols[m.n_heavy_atoms:])
        distances = np.linalg.norm(m.positions[:, None] - m.positions[None], axis=-1)
        assert distances[np.triu_indices(m.n_atoms, 1)].min() > 0.9  # no overlapping atoms
    assert get_molecule("Salicylic acid") is MOLECULES["salicylic_acid"]
    with pytest.raises(UserError, match="unknown molecule"):
        get_molecule("caffeine")


@pytest.mark.parametrize("name", list(MD17_ATOM_COUNTS))
def test_table_geometry_is_an_xtb_minimum(name):
    from ase.optimize import BFGS

    from asteroid_hpc.datagen.threads import single_threaded
    from asteroid_hpc.datagen.xtb import relaxed_atoms

    with single_threaded():
        atoms = relaxed_atoms(name, relax_steps=0)
        assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=30), f"{name} did not relax within 30 BFGS steps"
    moved = np.linalg.norm(atoms.positions - MOLECULES[name].positions, axis=1).max()
    assert moved < 0.05, f"{name} moved {moved:.3f} Å while relaxing"


def test_xtb_nve_conserves_energy_ethanol():
    """50 NVE steps of ethanol at 500 K: total energy within 0.5 meV/atom (fluctuation) and 2 meV/atom (span)."""
    from asteroid_hpc.datagen.threads import single_threaded
    from asteroid_hpc.datagen.xtb import run_nve_chunk, start_state

    with single_threaded():
        atoms = start_state("ethanol", seed=3, temperature_K=500.0, timestep_fs=0.5, thermalize_steps=50)
        chunk = run_nve_chunk(atoms, first_frame=0, n_frames=51, stride=1, timestep_fs=0.5)
    total_meV_per_atom = (chunk.potential_eV + chunk.kinetic_eV) * 1000.0 / len(atoms)
    assert np.ptp(total_meV_per_atom) < 2.0
    # the energy that the conservation is measured against moves much more
    assert np.ptp(chunk.potential_eV) * 1000.0 / len(atoms) > 10 * np.ptp(total_meV_per_atom)
    stats = measure_conservation(chunk.potential_eV, chunk.kinetic_eV, np.arange(51) * 0.0005, len(atoms))
    assert stats.fluctuation_meV_per_atom < 0.5
    check_conservation(stats)


def test_energy_check_rejects_drift_and_noise():
    t = np.linspace(0.0, 10.0, 1001)
    flat = np.zeros_like(t)
    ok = measure_conservation(flat + 1e-6 * np.sin(t), flat, t, n_atoms=10)
    check_conservation(ok)
    drifting = measure_conservation(0.05 * t, flat, t, n_atoms=10)  # 5 meV/ps/atom for 10 ps
    assert drifting.drift_meV_per_ps_per_atom == pytest.approx(5.0)
    with pytest.raises(EnergyConservationError, match="drifts"):
        check_conservation(drifting)
    noisy = measure_conservation(np.random.default_rng(0).normal(scale=0.5, size=t.size), flat, t, n_atoms=10)
    with pytest.raises(EnergyConservationError, match="fluctuates"):
        check_conservation(noisy)


def test_xtb_trajectory_api_is_seeded():
    pos, z = xtb_trajectory("ethanol", 12, seed=5, thermalize_steps=20, stride=2)
    assert pos.shape == (12, 9, 3) and pos.dtype == np.float64
    assert z.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    again, _ = xtb_trajectory("ethanol", 12, seed=5, thermalize_steps=20, stride=2)
    np.testing.assert_array_equal(pos, again)
    other, _ = xtb_trajectory("ethanol", 12, seed=6, thermalize_steps=20, stride=2)
    assert np.abs(other - pos).max() > 1e-3
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1)
    assert 1e-4 < step.mean() < 0.1  # atoms move, by a physical amount per 1 fs


def _spec(**kw) -> XtbRunSpec:
    base = dict(molecule="ethanol", n_frames=90, seed=11, thermalize_steps=20, chunk_frames=30)
    base.update(kw)
    return XtbRunSpec(**base)


def test_netcdf_read_by_mdanalysis_matches_in_memory(tmp_path):
    spec = _spec()
    out = tmp_path / "ethanol.nc"
    report = generate_xtb_netcdf(spec, out, write_velocities=True, progress=False)
    assert out.exists() and not (tmp_path / "ethanol.nc.chunks").exists()
    assert (tmp_path / "ethanol.nc.json").exists() and report.ms_per_step > 0
    recorded = json.loads((tmp_path / "ethanol.nc.json").read_text())["versions"]
    assert recorded["tblite"] != "not installed" and recorded["ase"] != "not installed"  # what made the file
    coords, z, attrs = read_nc(out)
    assert attrs["Conventions"] == "AMBER" and attrs["ConventionVersion"] == "1.0"
    assert z.tolist() == get_molecule("ethanol").atomic_numbers.tolist()
    expected, _ = xtb_trajectory("ethanol", spec.n_frames, seed=spec.seed, thermalize_steps=spec.thermalize_steps,
                                 chunk_frames=spec.chunk_frames)
    np.testing.assert_array_equal(coords, expected.astype(np.float32))

    import netCDF4

    with netCDF4.Dataset(out) as ds:
        assert ds.data_model == "NETCDF3_64BIT_OFFSET"
        assert ds["coordinates"].units == "angstrom" and ds["time"].units == "picosecond"
        np.testing.assert_allclose(ds["time"][:], np.arange(spec.n_frames) * 0.0005, atol=1e-6)
        velocities = np.array(ds["velocities"][:])
    # velocities (Å/ps) agree with the finite-difference motion over 0.5 fs
    finite_difference = (expected[2:] - expected[:-2]) / 0.001
    assert np.abs(finite_difference - velocities[1:-1]).max() < 0.05 * np.abs(velocities).max()


def test_resume_after_interruption_is_identical(tmp_path):
    spec = _spec()
    full, resumed = tmp_path / "full.nc", tmp_path / "resumed.nc"
    generate_xtb_netcdf(spec, full, progress=False)
    assert generate_xtb_netcdf(spec, resumed, max_chunks=1, progress=False) is None
    assert not resumed.exists() and (tmp_path / "resumed.nc.chunks" / "chunk_000000.npz").exists()
    with pytest.raises(UserError, match="other settings"):
        generate_xtb_netcdf(replace(spec, seed=12), resumed, progress=False)
    assert generate_xtb_netcdf(spec, resumed, max_chunks=1, progress=False) is None
    generate_xtb_netcdf(spec, resumed, progress=False)
    np.testing.assert_array_equal(read_nc(resumed)[0], read_nc(full)[0])


def test_second_generator_of_the_same_file_is_refused(tmp_path):
    import fcntl

    chunks = tmp_path / "ethanol.nc.chunks"
    chunks.mkdir()
    with open(chunks / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a running generator holds it
        with pytest.raises(UserError, match="another process"):
            generate_xtb_netcdf(_spec(), tmp_path / "ethanol.nc", progress=False)


def test_resume_after_sigkill_is_identical(tmp_path):
    """The tool killed (SIGKILL) after two of four chunks resumes and writes what one uninterrupted run writes."""
    killed = tmp_path / "killed"
    args = [sys.executable, str(REPO / "tools" / "gen_xtb_md17.py"), "ethanol", "--frames", "200",
            "--chunk-frames", "50", "--thermalize-steps", "20", "--seed", "4", "--progress", "log",
            "--out-dir", str(killed)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "ethanol.nc.chunks" / "chunk_000001.npz"
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "ethanol.nc").exists(), "the run finished before it could be interrupted"
    done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    assert "resuming after chunk" in done.stderr

    reference = tmp_path / "reference.nc"
    generate_xtb_netcdf(_spec(n_frames=200, chunk_frames=50, seed=4), reference, progress=False)
    np.testing.assert_array_equal(read_nc(killed / "ethanol.nc")[0], read_nc(reference)[0])


def test_lj_box_has_requested_atoms_and_density(tmp_path):
    import MDAnalysis as mda

    from asteroid_hpc.datagen.lj import lj_argon_box, write_lj_box

    box = lj_argon_box(500, 3, seed=1, equilibration_steps=100, stride=10, threads=1)
    assert box.positions_angstrom.shape == (3, 500, 3)
    assert box.density_per_A3 == pytest.approx(0.021, rel=1e-9)
    assert (box.positions_angstrom >= 0).all() and (box.positions_angstrom <= box.box_length_angstrom).all()
    assert np.abs(np.diff(box.positions_angstrom, axis=0)).max() > 0.1  # the atoms moved between frames
    out = write_lj_box(tmp_path / "argon.nc", box, seed=1, temperature_K=94.4)
    u = mda.Universe.empty(500, trajectory=True)
    u.load_new(str(out), format="NCDF")
    assert len(u.trajectory) == 3
    np.testing.assert_allclose(u.dimensions, [box.box_length_angstrom] * 3 + [90.0] * 3, rtol=1e-6)
    _, z, _ = read_nc(out)
    assert (z == 18).all()
    with pytest.raises(UserError, match="cutoff"):
        lj_argon_box(50, 1)
