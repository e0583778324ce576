"""Bad input to `asteroid-hpc preprocess`: one line naming the file and the cause, exit 2, no traceback,
and nothing left in the output directory that a later run could take for data."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest

from tests.support.cli import assert_user_error, run_cli
from tests.support.data import random_walk, write_traj

from asteroid_hpc.cli.main import main


def _not_netcdf(d):
    p = d / "text.nc"
    p.write_text("just text\n")
    return [p], "text.nc: not a NetCDF file"


def _truncated(d):
    good = write_traj(d / "good.nc", random_walk(200))
    p = d / "cut.nc"
    p.write_bytes(good.read_bytes()[:-500])
    return [p], "cut.nc: truncated"


def _no_coordinates(d):
    p = d / "nocoords.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        ds.createDimension("frame", None)
        ds.createVariable("time", "f4", ("frame",))[:] = np.arange(3)
    return [p], "nocoords.nc: no 'coordinates' variable"


def _wrong_dims(d):
    p = d / "dims.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        for name, size in (("atom", 8), ("frame", 5), ("spatial", 3)):
            ds.createDimension(name, size)
        ds.createVariable("coordinates", "f4", ("atom", "frame", "spatial"))[:] = 1.0
    return [p], "dims.nc: 'coordinates' has dimensions ('atom', 'frame', 'spatial')"


def _wrong_spatial(d):
    p = d / "spatial.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        for name, size in (("frame", 5), ("atom", 8), ("spatial", 2)):
            ds.createDimension(name, size)
        ds.createVariable("coordinates", "f4", ("frame", "atom", "spatial"))[:] = 1.0
    return [p], "spatial.nc: 'coordinates' has spatial size 2"


def _atom_counts_differ(d):
    a = write_traj(d / "a.nc", random_walk(50))
    b = write_traj(d / "b.nc", random_walk(50, n_atoms=5), atomic_numbers=[6, 1, 1, 1, 1])
    return [a, b], "b.nc: 5 atoms, but"


def _nan(d):
    x = random_walk(300)
    x[123, 2, 0] = np.nan
    return [write_traj(d / "nan.nc", x)], "nan.nc: non-finite coordinates (NaN or Inf) in frame 123"


def _inf_in_second_file(d):
    x = random_walk(300)
    x[250, 0, 2] = np.inf
    return [write_traj(d / "ok.nc", random_walk(300)), write_traj(d / "inf.nc", x)], "inf.nc: non-finite"


def _time_backwards(d):
    t = np.arange(300) * 0.001
    t[200:] -= 0.05
    return [write_traj(d / "back.nc", random_walk(300), time_ps=t)], "back.nc: time is not increasing"


def _time_backwards_at_shard_boundary(d):
    t = np.arange(300) * 0.001
    t[100:] -= 0.0015  # frame 100 (first of the second shard) is earlier than frame 99
    return [write_traj(d / "edge.nc", random_walk(300), time_ps=t)], "edge.nc: time is not increasing"


def _empty(d):
    p = d / "empty.nc"
    with netCDF4.Dataset(p, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        for name, size in (("frame", None), ("atom", 8), ("spatial", 3)):
            ds.createDimension(name, size)
        ds.createVariable("coordinates", "f4", ("frame", "atom", "spatial"))
    return [p], "empty.nc: empty trajectory"


def _missing(d):
    return [d / "nowhere.nc"], "nowhere.nc: no such file"


def _directory(d):
    (d / "adir.nc").mkdir()
    return [d / "adir.nc"], "adir.nc: is a directory"


def _unknown_format(d):
    p = d / "traj.binpos"
    p.write_bytes(b"\0" * 64)
    return [p], "traj.binpos: unknown trajectory format"


def _garbage_dcd(d):
    p = d / "traj.dcd"
    p.write_bytes(b"\0" * 64)
    return [p], "traj.dcd: not a readable DCD trajectory"


def _glob_without_match(d):
    return [str(d / "none-*.nc")], "none-*.nc: no file matches"


def _bad_npz(d):
    p = d / "bad.npz"
    np.savez(p, coords=np.zeros((3, 2, 3)))
    return [p], "bad.npz: no 'R' array"


def _no_timestep(d):
    p = d / "notime.npz"
    np.savez(p, R=random_walk(30), z=np.arange(1, 9))
    return [p], "notime.npz: no time axis"


def _short_for_split(d):
    return [write_traj(d / "short.nc", random_walk(12))], "short.nc: 12 frames are too few"


CASES = [_not_netcdf, _truncated, _no_coordinates, _wrong_dims, _wrong_spatial, _atom_counts_differ, _nan,
         _inf_in_second_file, _time_backwards, _time_backwards_at_shard_boundary, _empty, _missing, _directory,
         _unknown_format, _garbage_dcd, _glob_without_match, _bad_npz, _no_timestep, _short_for_split]


def _assert_no_data_left(out):
    if out.exists():
        assert not (out / "manifest.json").exists()
        assert not list(out.rglob("*.nc")) and not list(out.rglob("*.partial")), list(out.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.strip("_"))
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    inputs, fragment = case(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", *map(str, inputs), "-o", str(out), "data.frames_per_shard=100"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and fragment in lines[0], err
    _assert_no_data_left(out)


def test_output_inside_an_input_and_input_inside_the_output(tmp_path, capsys):
    path = write_traj(tmp_path / "t.nc", random_walk(300))
    for args, fragment in (([path, "-o", tmp_path / "t.nc" / "ds"], "output directory is inside the input"),
                           ([tmp_path / "t.nc", "-o", tmp_path], "input lies inside the output directory")):
        with pytest.raises(SystemExit) as exit_info:
            main(["preprocess", "--no-progress", *map(str, args)])
        assert exit_info.value.code == 2
        assert fragment in capsys.readouterr().err


def test_non_dataset_directory_is_refused(tmp_path, capsys):
    path = write_traj(tmp_path / "t.nc", random_walk(300))
    out = tmp_path / "home"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["preprocess", "--no-progress", str(path), "-o", str(out), *extra])
        assert exit_info.value.code == 2
        assert "holds no asteroid-hpc dataset" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_error_in_a_late_shard_removes_the_earlier_shards(tmp_path, capsys):
    x = random_walk(400)
    x[390, 1, 1] = np.nan
    path = write_traj(tmp_path / "late.nc", x)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", str(path), "-o", str(out), "data.frames_per_shard=50",
              "data.split_fractions=[1,0,0]"])
    assert exit_info.value.code == 2 and "frame 390" in capsys.readouterr().err
    _assert_no_data_left(out)


def test_bad_input_through_a_real_subprocess(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_text("not netcdf")
    proc = run_cli("preprocess", bad, "-o", tmp_path / "out")
    assert_user_error(proc, "bad.nc", "not a NetCDF file")
    assert not (tmp_path / "out").exists()


def test_bad_override_is_one_line(tmp_path):
    path = write_traj(tmp_path / "t.nc", random_walk(100))
    assert_user_error(run_cli("preprocess", path, "-o", tmp_path / "o", "data.compression=lz4"), "data.compression")
