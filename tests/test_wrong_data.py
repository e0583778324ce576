"""Wrong data refused (issue #17 items 5-6): never-written coordinates, impossible elements, corrupt
compressed chunks, undecodable file names, other engines' broken files and topologies, a history longer
than the data. Each case: exit 2, exactly one stderr line naming the file and the cause, no traceback,
no manifest left behind. The first cases run in a subprocess so that no INFO line or library warning
can hide before the error line.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from tests.support.cli import run_cli
from tests.support.data import ATOMIC_NUMBERS, random_walk, write_traj

CASES: dict[str, object] = {}


def case(name: str):
    def register(build):
        CASES[name] = build
        return build

    return register


def _preprocess(d: Path, *inputs, extra=()) -> list:
    return ["preprocess", "--no-progress", *inputs, "-o", d / "out", "data.frames_per_shard=100", "data.timestep_fs=0.5", *extra]


def _amber(path: Path, coords, z=ATOMIC_NUMBERS, fmt="NETCDF3_64BIT_OFFSET", zlib=False) -> Path:
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.Conventions, ds.ConventionVersion = "AMBER", "1.0"
        ds.createDimension("frame", None if coords is not None else 300)
        ds.createDimension("atom", len(z))
        ds.createDimension("spatial", 3)
        ds.createVariable("atomic_number", "i4", ("atom",))[:] = np.asarray(z)
        var = ds.createVariable("coordinates", "f4", ("frame", "atom", "spatial"), zlib=zlib)
        if coords is not None:
            var[:] = coords
    return path


# ------------------------------------------------------------------------------------- never-written data
@case("netcdf-coordinates-never-written")
def _(d):
    return _preprocess(d, _amber(d / "unwritten.nc", None)), ("unwritten.nc", "never written")


@case("netcdf-coordinates-all-zero")
def _(d):
    return _preprocess(d, _amber(d / "zeros.nc", np.zeros((300, 8, 3)))), ("zeros.nc", "all zero")


@case("netcdf-coordinates-zero-after-frame-250")
def _(d):
    coords = random_walk(300)
    coords[250:] = 0.0  # a run killed before it wrote these frames
    return _preprocess(d, _amber(d / "cut-short.nc", coords)), ("cut-short.nc", "frame 250", "all zero", "never written")


@case("npz-R-all-zero")
def _(d):
    p = d / "zeros.npz"
    np.savez(p, R=np.zeros((300, 8, 3)), z=np.array(ATOMIC_NUMBERS))
    return _preprocess(d, p), ("zeros.npz", "all zero")


@case("evaluate-trajectory-all-zero")
def _(d):
    from tests.support.tiny import tiny_model_file

    traj = _amber(d / "zeros.nc", np.zeros((300, 8, 3)))
    return ["evaluate", tiny_model_file(d / "m.safetensors"), traj, "-o", d / "eval", "--protocol", "C",
            "--timestep-fs", "0.5"], ("zeros.nc", "frame 0", "all zero")


# ------------------------------------------------------------------------------------- impossible elements
@case("netcdf-atomic-number-zero")
def _(d):
    z = [6, 6, 0, 1, 1, 1, 7, 1]
    return _preprocess(d, _amber(d / "z0.nc", random_walk(50), z)), ("z0.nc", "atomic number 0 of atom 2", "1-118")


@case("netcdf-atomic-number-119")
def _(d):
    z = [6, 6, 119, 1, 1, 1, 7, 1]
    return _preprocess(d, _amber(d / "z119.nc", random_walk(50), z)), ("z119.nc", "atomic number 119")


@case("npz-atomic-number-negative")
def _(d):
    p = d / "zneg.npz"
    np.savez(p, R=random_walk(50), z=np.array([6, 6, -8, 1, 1, 1, 7, 1]))
    return _preprocess(d, p), ("zneg.npz", "atomic number -8")


@case("npz-atomic-number-huge")
def _(d):
    p = d / "zbig.npz"
    np.savez(p, R=random_walk(50), z=np.array([6, 6, 2**40, 1, 1, 1, 7, 1]))
    return _preprocess(d, p), ("zbig.npz", "atomic number")


# ------------------------------------------------------------------------------------- corrupt chunks, names
@case("netcdf4-corrupt-compressed-chunk")
def _(d):
    good = _amber(d / "good.nc", random_walk(400), fmt="NETCDF4", zlib=True)
    raw = bytearray(good.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 2000] = os.urandom(2000)
    p = d / "chunk.nc"
    p.write_bytes(bytes(raw))
    good.unlink()
    return _preprocess(d, p), ("chunk.nc",)


@case("file-name-not-utf8")
def _(d):
    name = os.fsdecode(b"bad\xff.nc")
    p = d / name
    p.write_text("just text\n")
    return _preprocess(d, p), ("bad\\xff.nc", "not UTF-8")


# ------------------------------------------------------------------------------------- other engines
def _mda_write(path: Path, n_frames=20, n_atoms=8) -> Path:
    import MDAnalysis as mda

    u = mda.Universe.empty(n_atoms, trajectory=True)
    with mda.Writer(str(path), n_atoms) as w:
        for k in range(n_frames):
            u.atoms.positions = random_walk(n_frames, n_atoms)[k]
            w.write(u.atoms)
    return path


def _topology(d: Path, n_atoms=8) -> Path:
    p = d / "top.xyz"
    symbols = ["C", "C", "O", "H", "H", "H", "N", "H"][:n_atoms]
    p.write_text(f"{n_atoms}\n\n" + "".join(f"{s} 0 0 {i}\n" for i, s in enumerate(symbols)))
    return p


def _corrupt(path: Path, keep: float) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


@case("xtc-garbage")
def _(d):
    p = d / "junk.xtc"
    p.write_bytes(os.urandom(4000))
    return _preprocess(d, p, "--topology", _topology(d)), ("junk.xtc",)


@case("xtc-truncated")
def _(d):
    p = _corrupt(_mda_write(d / "cut.xtc"), 0.55)
    return _preprocess(d, p, "--topology", _topology(d)), ("cut.xtc",)


@case("dcd-truncated")
def _(d):
    p = _corrupt(_mda_write(d / "cut.dcd"), 0.55)
    return _preprocess(d, p, "--topology", _topology(d)), ("cut.dcd",)


@case("trr-empty")
def _(d):
    p = d / "empty.trr"
    p.write_bytes(b"")
    return _preprocess(d, p, "--topology", _topology(d)), ("empty.trr",)


@case("dcd-without-topology")
def _(d):
    p = _mda_write(d / "bare.dcd")
    return _preprocess(d, p), ("bare.dcd", "topology")


@case("xtc-topology-atom-count-mismatch")
def _(d):
    p = _mda_write(d / "t.xtc")
    return _preprocess(d, p, "--topology", _topology(d, 5)), ("t.xtc", "5")


@case("topology-garbage-pdb")
def _(d):
    p = _mda_write(d / "t.dcd")
    top = d / "top.pdb"
    top.write_bytes(b"\x00\x01 not a pdb \xff\n" * 10)
    return _preprocess(d, p, "--topology", top), ("top.pdb",)


@case("topology-unknown-element")
def _(d):
    p = _mda_write(d / "t.dcd")
    top = d / "top.xyz"
    top.write_text("8\n\n" + "".join(f"Qq 0 0 {i}\n" for i in range(8)))
    return _preprocess(d, p, "--topology", top), ("top.xyz",)


# ------------------------------------------------------------------------------------- config values
@case("config-history-longer-than-data")
def _(d):
    return _preprocess(d, write_traj(d / "t.nc", random_walk(60)), extra=["model.history_frames=5000"]), \
        ("history_frames=5000",)


@case("config-negative-frame-stride")
def _(d):
    return _preprocess(d, write_traj(d / "t.nc", random_walk(60)), extra=["data.frame_stride=-1"]), \
        ("frame_stride",)


def _dataset_without_recorded_windows(d: Path) -> Path:
    """A valid dataset whose manifest records no window sizes (as older ones): the config's are taken."""
    import json

    from tests.support.data import preprocess_walk_dataset

    dataset = preprocess_walk_dataset(d)
    manifest = json.loads((dataset / "manifest.json").read_text())
    del manifest["split"]["history_frames"], manifest["split"]["horizon_frames"]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    return dataset


@case("train-history-longer-than-data")
def _(d):
    # was a 19 GB allocation (OOM-killed); now refused before the model is built
    from tests.support.train import TINY_CONFIG

    dataset = _dataset_without_recorded_windows(d)
    return ["train", TINY_CONFIG, f"data.dataset={dataset}", f"train.run_dir={d / 'run'}", "train.max_steps=4",
            "model.history_frames=5000"], ("manifest.json", "model.history_frames=5000", "longer than the data")


def _weights_with_history(d: Path, history_frames: int) -> Path:
    from tests.support.tiny import tiny_model_file

    return tiny_model_file(d / "h.safetensors", history_frames=history_frames)


@case("evaluate-history-longer-than-trajectory-protocol-a")
def _(d):
    traj = write_traj(d / "short.nc", random_walk(300))
    return ["evaluate", _weights_with_history(d, 5000), traj, "-o", d / "eval", "--protocol", "A"], \
        ("short.nc", "too few")


@case("evaluate-history-longer-than-trajectory-protocol-c")
def _(d):
    traj = write_traj(d / "short.nc", random_walk(300))
    return ["evaluate", _weights_with_history(d, 5000), traj, "-o", d / "eval", "--protocol", "C"], \
        ("short.nc", "fewer than one window")


# ------------------------------------------------------------------------------------- the test
def _check(proc: subprocess.CompletedProcess, root: Path, fragments, inputs: set) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # no INFO line, no library warning before the error
    assert "error:" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not set(root.rglob("manifest.json")) - inputs, "a failed run left a manifest"
    assert not list(root.rglob("*.partial")), "a failed run left a partial file"


@pytest.mark.parametrize("name", list(CASES))
def test_wrong_data_is_one_stderr_line_exit_2(name, tmp_path):
    argv, fragments = CASES[name](tmp_path)
    inputs = set(tmp_path.rglob("manifest.json"))
    proc = run_cli(*argv, timeout=300, cwd=tmp_path)
    _check(proc, tmp_path, fragments, inputs)


def test_a_trajectory_may_start_from_zeros_but_never_collapse_later():
    from asteroid_hpc.data.frames import first_collapsed_frame

    walk = random_walk(6)
    zeros = np.zeros_like(walk)
    linear = np.arange(6, dtype=np.float32)[:, None, None] * walk[:1]  # frame 0 all zero: synthetic, allowed
    together = np.repeat(linear[:, :1], 8, axis=1)  # every atom on one point: synthetic, allowed
    assert first_collapsed_frame(together) is None
    assert first_collapsed_frame(walk) is None
    assert first_collapsed_frame(linear) is None
    assert first_collapsed_frame(zeros) == 0
    assert first_collapsed_frame(np.concatenate([walk, zeros])) == 6
    assert first_collapsed_frame(np.concatenate([zeros[:1], walk, zeros[:2]])) == 7
