"""AMBER NetCDF reader and streaming writer: round trips through MDAnalysis and mdtraj, resume after a kill,
the variants found in real files, and bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import netCDF4
import numpy as np
import pytest

from asteroid_hpc.data.amber import AmberReader, AmberWriter, partial_path, read_frames
from asteroid_hpc.data.frames import iter_strided_chunks
from asteroid_hpc.errors import UserError

N_ATOMS = 7
Z = np.array([6, 6, 8, 1, 1, 1, 7])


def _coords(n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_frames, N_ATOMS, 3)) * 3).astype(np.float32)


def _write(path, coords, **kwargs):
    with AmberWriter(path, N_ATOMS, Z, timestep_ps=0.0005, **kwargs) as w:
        for k in range(0, len(coords), 4):
            w.append(coords[k:k + 4])
    return path


def test_writer_streams_to_partial_and_renames(tmp_path):
    path = tmp_path / "t.nc"
    coords = _coords(10)
    w = AmberWriter(path, N_ATOMS, Z, timestep_ps=0.0005)
    w.append(coords[:6])
    assert partial_path(path).exists() and not path.exists()
    w.append(coords[6:])
    assert w.n_frames == 10
    assert w.close() == path
    assert path.exists() and not partial_path(path).exists()
    with AmberReader(path) as r:
        assert (r.n_frames, r.n_atoms) == (10, N_ATOMS)
        np.testing.assert_array_equal(r.atomic_numbers, Z)
        assert r.timestep_ps == pytest.approx(0.0005, rel=1e-5)
        np.testing.assert_array_equal(r.read(0, 10).coordinates, coords)
    with netCDF4.Dataset(path) as ds:
        assert ds.data_model == "NETCDF3_64BIT_OFFSET"
        assert (ds.Conventions, ds.ConventionVersion, ds.program) == ("AMBER", "1.0", "asteroid-hpc")
        assert ds.dimensions["frame"].isunlimited()
        assert ds["coordinates"].units == "angstrom" and ds["time"].units == "picosecond"
        assert b"".join(ds["spatial"][:].tolist()) == b"xyz"


def test_mdanalysis_and_mdtraj_read_back_identical_coordinates(tmp_path):
    from MDAnalysis.coordinates.TRJ import NCDFReader
    from mdtraj.formats import NetCDFTrajectoryFile

    path = tmp_path / "cell.nc"
    coords = _coords(9, seed=1)
    lengths = np.array([20.0, 21.0, 22.0])
    angles = np.array([90.0, 90.0, 90.0])
    vel = _coords(9, seed=2)
    with AmberWriter(path, N_ATOMS, Z, cell=True, velocities=True, program="test-prog") as w:
        w.append(coords[:5], time_ps=np.arange(5) * 0.01, velocities=vel[:5], cell_lengths=lengths,
                 cell_angles=angles)
        w.append(coords[5:], time_ps=np.arange(5, 9) * 0.01, velocities=vel[5:], cell_lengths=lengths,
                 cell_angles=angles)

    reader = NCDFReader(str(path))
    assert reader.n_frames == 9 and reader.n_atoms == N_ATOMS
    for i, ts in enumerate(reader):
        np.testing.assert_array_equal(ts.positions, coords[i])
        np.testing.assert_allclose(ts.dimensions, [20, 21, 22, 90, 90, 90])
        np.testing.assert_allclose(ts.velocities, vel[i], rtol=1e-6)
        assert ts.time == pytest.approx(i * 0.01, abs=1e-6)
    reader.close()

    with NetCDFTrajectoryFile(str(path)) as f:
        xyz, time, cell_lengths, cell_angles = f.read()
    np.testing.assert_array_equal(xyz, coords)  # mdtraj's file API returns the stored angstroms
    np.testing.assert_allclose(time, np.arange(9) * 0.01, atol=1e-6)
    np.testing.assert_allclose(cell_lengths, np.broadcast_to(lengths, (9, 3)))


def test_reads_a_real_file_written_by_mdanalysis(tmp_path):
    import MDAnalysis as mda
    from MDAnalysis.coordinates.TRJ import NCDFWriter

    coords = _coords(6, seed=3)
    u = mda.Universe.empty(N_ATOMS, trajectory=True)
    path = tmp_path / "mda.ncdf"
    with NCDFWriter(str(path), N_ATOMS) as w:
        for i, frame in enumerate(coords):
            u.atoms.positions = frame
            u.trajectory.ts.time = 2.0 * i  # MDAnalysis time unit is ps
            w.write(u.atoms)
    with AmberReader(path) as r:
        assert (r.n_frames, r.n_atoms, r.atomic_numbers) == (6, N_ATOMS, None)
        assert r.timestep_ps == pytest.approx(2.0)
        chunks = list(iter_strided_chunks(r, chunk_frames=4))
    assert [c.start for c in chunks] == [0, 4]
    np.testing.assert_allclose(np.concatenate([c.coordinates for c in chunks]), coords, atol=1e-6)


def test_resume_after_sigkill_continues_the_partial_file(tmp_path):
    path = tmp_path / "member.nc"
    coords = _coords(12, seed=4)
    np.save(tmp_path / "coords.npy", coords)
    script = f"""
import os, signal, numpy as np
from asteroid_hpc.data.amber import AmberWriter
coords = np.load({str(tmp_path / 'coords.npy')!r})
w = AmberWriter({str(path)!r}, {N_ATOMS}, {Z.tolist()!r}, timestep_ps=0.001)
w.append(coords[:4]); w.append(coords[4:8])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert partial_path(path).exists() and not path.exists()
    w = AmberWriter.resume(path)
    assert w.n_frames == 8 and w.timestep_ps == pytest.approx(0.001)
    np.testing.assert_array_equal(w.atomic_numbers, Z)
    w.append(coords[8:])
    w.close()
    chunk = read_frames(path)
    np.testing.assert_array_equal(chunk.coordinates, coords)
    np.testing.assert_allclose(chunk.time_ps, np.arange(12) * 0.001, rtol=1e-6)


def test_resume_without_partial_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no partial file"):
        AmberWriter.resume(tmp_path / "none.nc")


def test_exception_inside_with_keeps_the_partial_file(tmp_path):
    path = tmp_path / "x.nc"
    with pytest.raises(RuntimeError):
        with AmberWriter(path, N_ATOMS, Z, timestep_ps=1.0) as w:
            w.append(_coords(3))
            raise RuntimeError("boom")
    assert not path.exists() and partial_path(path).exists()
    assert AmberWriter.resume(path).n_frames == 3


def test_zlib_writer_is_netcdf4_and_readable_by_mdtraj(tmp_path):
    from mdtraj.formats import NetCDFTrajectoryFile

    coords = _coords(20, seed=5)
    path = _write(tmp_path / "z.nc", coords, compression="zlib")
    with netCDF4.Dataset(path) as ds:
        assert ds.data_model == "NETCDF4" and ds["coordinates"].filters()["zlib"]
    with NetCDFTrajectoryFile(str(path)) as f:
        np.testing.assert_array_equal(f.read()[0], coords)
    np.testing.assert_array_equal(read_frames(path, 5, 9).coordinates, coords[5:9])


def _raw(path, fmt="NETCDF3_64BIT_OFFSET", dtype="f4", n_frames=5, dims=("frame", "atom", "spatial"),
         time=None, extra=True):
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("frame", n_frames)  # fixed frame dimension, as some writers do
        ds.createDimension("atom", N_ATOMS)
        ds.createDimension("spatial", 3)
        c = ds.createVariable("coordinates", dtype, dims)
        shape = tuple(ds.dimensions[d].size for d in dims)
        c[:] = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 7.0
        if time is not None:
            ds.createVariable("time", "f4", ("frame",))[:] = time
        if extra:
            ds.createVariable("forces", "f4", ("frame", "atom", "spatial"))[:] = 1.0
            ds.createVariable("velocities", "f4", ("frame", "atom", "spatial"))[:] = 2.0
    return path


@pytest.mark.parametrize("fmt", ["NETCDF3_64BIT_OFFSET", "NETCDF3_CLASSIC", "NETCDF4"])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_reader_variants(tmp_path, fmt, dtype):
    path = _raw(tmp_path / "v.nc", fmt=fmt, dtype=dtype, time=np.arange(5) * 0.5)
    with AmberReader(path) as r:
        chunk = r.read(1, 3)
        assert chunk.coordinates.dtype == np.dtype(dtype) and chunk.coordinates.shape == (2, N_ATOMS, 3)
        assert chunk.coordinates[0, 0, 0] == pytest.approx(N_ATOMS * 3 / 7.0)
        assert r.timestep_ps == pytest.approx(0.5)
        np.testing.assert_array_equal(r.read_variable("forces", 0, 2), 1.0)


@pytest.mark.parametrize("time", [None, np.zeros(5)])
def test_missing_or_zero_time_means_no_time_axis(tmp_path, time):
    with AmberReader(_raw(tmp_path / "t.nc", time=time)) as r:
        assert (r.has_time, r.timestep_ps) == (False, None)
        assert r.read(0, 5).time_ps is None


@pytest.mark.parametrize("stride", [1, 3, 11])
def test_strided_chunks(tmp_path, stride):
    coords = _coords(40, seed=6)
    path = _write(tmp_path / "s.nc", coords)
    with AmberReader(path) as r:
        chunks = list(iter_strided_chunks(r, chunk_frames=3, start=2, stop=37, stride=stride))
    got = np.concatenate([c.coordinates for c in chunks])
    np.testing.assert_array_equal(got, coords[2:37:stride])
    assert [c.start for c in chunks] == list(range(2, 37, stride))[::3]
    assert np.concatenate([c.time_ps for c in chunks]) == pytest.approx(np.arange(2, 37, stride) * 0.0005,
                                                                        rel=1e-5)


def test_bad_files(tmp_path):
    text = tmp_path / "text.nc"
    text.write_text("hello, not netcdf\n")
    with pytest.raises(UserError, match="text.nc: not a NetCDF file"):
        AmberReader(text)
    good = _write(tmp_path / "good.nc", _coords(50))
    cut = tmp_path / "cut.nc"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 100])
    with pytest.raises(UserError, match="cut.nc: truncated"):
        AmberReader(cut)
    with pytest.raises(UserError, match="wrong.nc: 'coordinates' has dimensions"):
        AmberReader(_raw(tmp_path / "wrong.nc", dims=("atom", "frame", "spatial")))
    with netCDF4.Dataset(tmp_path / "nocoord.nc", "w") as ds:
        ds.createDimension("frame", 2)
    with pytest.raises(UserError, match="nocoord.nc: no 'coordinates' variable"):
        AmberReader(tmp_path / "nocoord.nc")
    with pytest.raises(UserError, match="missing.nc: no such file"):
        AmberReader(tmp_path / "missing.nc")
    with pytest.raises(UserError, match="is a directory"):
        AmberReader(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = _write(tmp_path / "u.nc", _coords(2))
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read"):
        AmberReader(path)
