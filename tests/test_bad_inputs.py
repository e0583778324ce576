"""The bad-input corpus: malformed NetCDF, npz, XYZ, configs, manifests, weights and checkpoints, made here in
tmp_path, each fed to the command that reads it.

Every case must give exactly one error line naming the file and the cause, exit 2, no traceback, and leave
nothing behind that a later run could take for data (the run may create log files, nothing else).

Corpus: 61 cases (see CASES) — NetCDF 7, periodic cells, unwrapping and time 14 (real CHARMM, GROMACS and OpenMM
files among them), npz 7,
XYZ 5, config 5, manifest 9, weights 4, checkpoints 10 (export 6, train --resume 4). They complement, and do not repeat, tests/test_preprocess_errors.py
(unreadable/truncated/NaN/time/empty NetCDF, npz without R or time axis), tests/test_config.py (bad
overrides, invalid YAML, unknown keys) and the read_manifest unit tests in tests/test_data_windows.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import netCDF4
import numpy as np
import pytest

from asteroid_hpc.data.amber import AmberWriter
from tests.support.cli import assert_user_error, run_cli
from tests.support.data import ATOMIC_NUMBERS, preprocess_walk_dataset, random_walk, write_traj
from tests.support.tiny import tiny_model_file
from tests.support.train import trained_run


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory) -> Path:
    """A valid 300-frame dataset (three splits) written by the CLI, copied by the manifest cases."""
    return preprocess_walk_dataset(tmp_path_factory.mktemp("good-dataset"))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained tiny ASTEROID saved with save_weights (enough to get past model loading)."""
    return tiny_model_file(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    return trained_run(tmp_path_factory.getbasetemp())


@dataclass
class Ctx:
    """What a case builder gets: its own directory and lazy access to the shared fixtures."""

    d: Path
    request: pytest.FixtureRequest

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def copy_dataset(self) -> Path:
        target = self.d / "ds"
        shutil.copytree(self.fixture("good_dataset"), target, symlinks=True)
        return target

    def copy_checkpoint(self) -> Path:
        _, run_dir = self.fixture("trained")
        target = self.d / "run"
        shutil.copytree(run_dir, target)
        return target


@dataclass
class Case:
    """``build(ctx)`` writes the bad input and returns (argv for `asteroid-hpc`, fragments the error names)."""

    name: str
    build: Callable[[Ctx], tuple[list, tuple[str, ...]]]
    subprocess: bool = False  # run the CLI in its own process (train initialises torch.distributed)


CASES: list[Case] = []


def case(name: str, *, subprocess: bool = False):
    def register(build):
        CASES.append(Case(name, build, subprocess))
        return build

    return register


def _netcdf(path: Path, dims: dict, coords_type="f4", coord_dims=("frame", "atom", "spatial"), fill=1.0,
            fmt="NETCDF3_64BIT_OFFSET", extra: Callable | None = None) -> Path:
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.Conventions, ds.ConventionVersion = "AMBER", "1.0"
        for name, size in dims.items():
            ds.createDimension(name, size)
        var = ds.createVariable("coordinates", coords_type, coord_dims)
        if fill is not None:
            var[:] = fill
        if extra:
            extra(ds)
    return path


def _preprocess(ctx: Ctx, *inputs) -> list:
    return ["preprocess", "--no-progress", *inputs, "-o", ctx.d / "out", "data.frames_per_shard=100"]


# ----------------------------------------------------------------------------------------------- NetCDF
@case("netcdf-zero-atoms")
def _(ctx):
    # NetCDF has no fixed dimension of size 0 (0 means unlimited); NETCDF4 allows an unlimited, empty atom axis
    p = _netcdf(ctx.d / "noatoms.nc", {"frame": 50, "atom": None, "spatial": 3}, fill=None, fmt="NETCDF4")
    return _preprocess(ctx, p), ("noatoms.nc", "0 atoms")


@case("netcdf-string-coordinates")
def _(ctx):
    p = _netcdf(ctx.d / "strings.nc", {"frame": 50, "atom": 8, "spatial": 3}, coords_type="S1", fill=b"x")
    return _preprocess(ctx, p), ("strings.nc", "'coordinates' has type")


@case("netcdf-integer-coordinates")
def _(ctx):
    p = _netcdf(ctx.d / "ints.nc", {"frame": 50, "atom": 8, "spatial": 3}, coords_type="i4", fill=1)
    return _preprocess(ctx, p), ("ints.nc", "'coordinates' has type int32")


@case("netcdf-atomic-number-per-frame")
def _(ctx):
    def extra(ds):
        ds.createVariable("atomic_number", "i4", ("frame",))[:] = 6

    p = _netcdf(ctx.d / "zframe.nc", {"frame": 50, "atom": 8, "spatial": 3}, extra=extra)
    return _preprocess(ctx, p), ("zframe.nc", "'atomic_number' has dimensions ('frame',)")


@case("netcdf-no-atomic-numbers")
def _(ctx):
    p = _netcdf(ctx.d / "noz.nc", {"frame": 300, "atom": 8, "spatial": 3},
                extra=lambda ds: setattr(ds, "timestep_ps", 0.0005))
    return _preprocess(ctx, p), ("noz.nc", "no atomic numbers")


@case("netcdf4-truncated-hdf5")
def _(ctx):
    def extra(ds):
        ds.createVariable("atomic_number", "i4", ("atom",))[:] = np.asarray(ATOMIC_NUMBERS)

    good = _netcdf(ctx.d / "full.nc4", {"frame": 300, "atom": 8, "spatial": 3}, fmt="NETCDF4", extra=extra)
    p = ctx.d / "cut4.nc"
    p.write_bytes(good.read_bytes()[:2000])
    return _preprocess(ctx, p), ("cut4.nc",)


@case("netcdf-topology-count-mismatch")
def _(ctx):
    p = _netcdf(ctx.d / "needtop.nc", {"frame": 300, "atom": 8, "spatial": 3},
                extra=lambda ds: setattr(ds, "timestep_ps", 0.0005))
    top = ctx.d / "three.xyz"
    top.write_text("3\n\nO 0 0 0\nH 0 0 1\nH 0 1 0\n")
    return [*_preprocess(ctx, p), "--topology", top], ("three.xyz", "3 atomic numbers for 8 atoms")


# ----------------------------------------------------------------------------------------------- periodic cells
CUBE = (30.0, 30.0, 30.0, 90.0, 90.0, 90.0)


def _boxed(path: Path, rows: dict | None = None, first: int = 0, default=CUBE, since: tuple | None = None) -> Path:
    """A 300-frame walk with a unit cell per frame: ``default`` from frame ``first`` on (zeros before it),
    frame k's cell replaced by ``rows[k]``, and with ``since = (k, row)`` every frame from k on."""
    cells = np.zeros((300, 6))
    cells[first:] = default
    if since is not None:
        cells[since[0]:] = since[1]
    for k, row in (rows or {}).items():
        cells[k] = row
    with AmberWriter(path, len(ATOMIC_NUMBERS), ATOMIC_NUMBERS, cell=True, timestep_ps=0.0005) as writer:
        writer.append(random_walk(300), cell_lengths=cells[:, :3], cell_angles=cells[:, 3:])
    return path


@case("cell-nan-in-a-frame")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "nanbox.nc", {150: (np.nan,) * 6})), \
        ("nanbox.nc", "frame 150 has no unit cell", "periodic")


@case("cell-zero-in-a-frame")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "zerobox.nc", {150: (0.0,) * 6})), ("zerobox.nc", "frame 150 has no unit cell")


@case("cell-never-written-in-a-frame")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "fillbox.nc", {200: (9.969209968386869e36,) * 6})), \
        ("fillbox.nc", "frame 200 has no unit cell")


@case("cell-negative-length")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "negbox.nc", {0: (30.0, -30.0, 30.0, 90.0, 90.0, 90.0)})), \
        ("negbox.nc", "frame 0 has a non-positive unit cell length")


@case("cell-angle-out-of-range")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "flatbox.nc", {10: (30.0, 30.0, 30.0, 90.0, 90.0, 180.0)})), \
        ("flatbox.nc", "frame 10 has a unit cell angle outside (0, 180) degrees")


@case("cell-degenerate-angles")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "degbox.nc", default=(30.0, 30.0, 30.0, 60.0, 60.0, 120.0))), \
        ("degbox.nc", "frame 0 has a degenerate unit cell (volume about zero")


@case("cell-changes-shape")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "shape.nc", since=(120, (30.0, 30.0, 30.0, 90.0, 90.0, 100.0)))), \
        ("shape.nc", "the unit cell changes shape at frame 120")


@case("cell-appears-mid-file")
def _(ctx):
    return _preprocess(ctx, _boxed(ctx.d / "late.nc", first=10)), \
        ("late.nc", "frame 10 has a unit cell, but the first frame has none")


@case("cell-changes-shape-real-charmm")
def _(ctx):
    from tests.test_formats import DATA

    return [*_preprocess(ctx, DATA / "tip125_tric_C36.dcd"), "--topology", DATA / "tip125_tric_C36.psf",
            "data.split_fractions=[1,0,0]"], \
        ("tip125_tric_C36.dcd", "the unit cell changes shape at frame 1")


@case("unwrap-stride-too-large")
def _(ctx):
    # atoms drifting 0.25 Å per frame along (1, 1, 1) in a 21 Å cube: 40 frames apart, a step of (10, 10, 10) Å
    x = random_walk(300) + 0.25 * np.arange(300, dtype=np.float32)[:, None, None]
    cells = np.tile([21.0, 21.0, 21.0, 90.0, 90.0, 90.0], (300, 1))
    path = ctx.d / "drift.nc"
    with AmberWriter(path, len(ATOMIC_NUMBERS), ATOMIC_NUMBERS, cell=True, timestep_ps=0.0005) as writer:
        writer.append(x, cell_lengths=cells[:, :3], cell_angles=cells[:, 3:])
    return [*_preprocess(ctx, path), "data.frame_stride=40", "data.split_fractions=[1,0,0]"], \
        ("drift.nc", "frame 40: atom 0 moved half the box's smallest width", "use a smaller data.frame_stride")


@case("cell-periodic-and-open-inputs")
def _(ctx):
    boxed, open_walk = _boxed(ctx.d / "boxed.nc"), write_traj(ctx.d / "open.nc", random_walk(300))
    return _preprocess(ctx, boxed, open_walk), ("open.nc", "periodic and open inputs cannot be mixed")


@case("xtc-uneven-frame")
def _(ctx):
    from tests.test_formats import DATA
    from tests.test_periodic_data import _universe, uneven_xtc

    from asteroid_hpc.data.readers import TrajectoryReader

    xtc = uneven_xtc(ctx.d / "uneven.xtc")
    TrajectoryReader(xtc, check_time=False).close()  # MDAnalysis caches the frame offsets beside the file once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _universe(DATA / "adk_oplsaa.tpr").select_atoms("name CA").write(str(ctx.d / "ca.pdb"))
    return [*_preprocess(ctx, xtc), "--topology", ctx.d / "ca.pdb", "data.split_fractions=[1,0,0]"], \
        ("uneven.xtc", "uneven time axis: frames 4 -> 5 are 130 ps apart")


@case("wrapped-without-cell-jumps-real-openmm")
def _(ctx):
    # a real TIP3P box from the project's OpenMM tool, molecules wrapped whole, written again without its cell
    from tests.test_wrapped_inputs import openmm_water_frames

    frames, numbers, pdb = openmm_water_frames(ctx.d / "md")
    path = write_traj(ctx.d / "water_nocell.nc", frames, numbers, timestep_ps=0.01)
    return [*_preprocess(ctx, path), "--topology", pdb, "data.split_fractions=[1,0,0]"], \
        ("water_nocell.nc", "jumps", "nearly the system's extent", "the file has no unit cell")


@case("wrapped-without-cell-cut-bonds-real-gromacs")
def _(ctx):
    # GROMACS's solvated adenylate kinase, written again by MDAnalysis as an XTC without its box
    from tests.test_formats import DATA
    from tests.test_wrapped_inputs import adk_xtc_without_cell

    from asteroid_hpc.data.readers import TrajectoryReader

    xtc = adk_xtc_without_cell(ctx.d / "adk_nocell.xtc")
    TrajectoryReader(xtc, check_time=False).close()  # MDAnalysis caches the frame offsets beside the file once
    return [*_preprocess(ctx, xtc), "--topology", DATA / "adk_oplsaa.tpr",
            "data.timestep_fs=100", "data.split_fractions=[1,0,0]"], \
        ("adk_nocell.xtc", "the bond", "long in frame 0", "the file has no unit cell")


# ----------------------------------------------------------------------------------------------- npz
def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@case("npz-missing-z")
def _(ctx):
    p = _npz(ctx.d / "noz.npz", R=random_walk(300))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("noz.npz", "no 'z' array")


@case("npz-R-wrong-shape")
def _(ctx):
    p = _npz(ctx.d / "flat.npz", R=random_walk(300).reshape(300, 24), z=np.asarray(ATOMIC_NUMBERS))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("flat.npz", "'R' must be")


@case("npz-z-length-mismatch")
def _(ctx):
    p = _npz(ctx.d / "zlen.npz", R=random_walk(300), z=np.asarray(ATOMIC_NUMBERS[:5]))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("zlen.npz", "'z' has shape (5,)")


@case("npz-R-integer")
def _(ctx):
    p = _npz(ctx.d / "rint.npz", R=np.zeros((300, 8, 3), dtype=np.int64), z=np.asarray(ATOMIC_NUMBERS))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("rint.npz", "'R' must be")


@case("npz-R-object-pickle")
def _(ctx):
    p = _npz(ctx.d / "robj.npz", R=np.empty((300, 8, 3), dtype=object), z=np.asarray(ATOMIC_NUMBERS))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("robj.npz",)


@case("npz-not-a-zip")
def _(ctx):
    p = ctx.d / "garbage.npz"
    p.write_bytes(os.urandom(512))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("garbage.npz", "not an .npz archive")


@case("npz-R-truncated")
def _(ctx):
    p = ctx.d / "short.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((300, 8, 3), dtype=np.float32))
    with zipfile.ZipFile(p, "w") as zf:
        with zf.open("R.npy", "w") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(random_walk(150).tobytes())  # half the frames the header promises
        with zf.open("z.npy", "w") as fh:
            np.lib.format.write_array(fh, np.asarray(ATOMIC_NUMBERS))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("short.npz", "truncated")


# ----------------------------------------------------------------------------------------------- XYZ
def _xyz_frame(symbols: list[str], rng) -> str:
    lines = [str(len(symbols)), "Properties=species:S:1:pos:R:3"]
    lines += [f"{s} {x:.4f} {y:.4f} {z:.4f}" for s, (x, y, z) in zip(symbols, rng.normal(size=(len(symbols), 3)))]
    return "\n".join(lines) + "\n"


@case("xyz-garbage")
def _(ctx):
    p = ctx.d / "garbage.xyz"
    p.write_text("this is not\nan xyz file at all\n")
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("garbage.xyz", "not a readable XYZ file")


@case("xyz-varying-atom-count")
def _(ctx):
    rng = np.random.default_rng(0)
    p = ctx.d / "vary.xyz"
    p.write_text("".join(_xyz_frame(["C", "H", "H"] if i != 7 else ["C", "H"], rng) for i in range(300)))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("vary.xyz", "frame 7")


@case("xyz-unknown-element")
def _(ctx):
    rng = np.random.default_rng(0)
    p = ctx.d / "alien.xyz"
    p.write_text("".join(_xyz_frame(["C", "Qq", "H"], rng) for _ in range(300)))
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("alien.xyz",)


@case("xyz-bad-count-line")
def _(ctx):
    p = ctx.d / "count.xyz"
    p.write_text("three\ncomment\nC 0 0 0\nH 0 0 1\nH 0 1 0\n")
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("count.xyz", "not a readable XYZ file")


@case("xyz-empty")
def _(ctx):
    p = ctx.d / "empty.xyz"
    p.write_text("")
    return _preprocess(ctx, p, "data.timestep_fs=0.5"), ("empty.xyz",)


# ----------------------------------------------------------------------------------------------- configs
@case("config-missing-file")
def _(ctx):
    return ["config", "validate", ctx.d / "absent.yaml"], ("absent.yaml",)


@case("config-not-utf8")
def _(ctx):
    p = ctx.d / "binary.yaml"
    p.write_bytes(b"train:\n  lr: \xff\xfe\x00\x01\n")
    return ["config", "validate", p], ("binary.yaml",)


@case("config-section-not-a-mapping")
def _(ctx):
    p = ctx.d / "scalar.yaml"
    p.write_text("train: 5\n")
    return ["config", "validate", p], ("scalar.yaml", "expected a mapping")


@case("config-wrong-type-in-file")
def _(ctx):
    p = ctx.d / "types.yaml"
    p.write_text("train:\n  max_steps: ten\n")
    return ["config", "validate", p], ("types.yaml", "expected an integer")


@case("config-for-preprocess-invalid-value")
def _(ctx):
    traj = write_traj(ctx.d / "t.nc", random_walk(300))
    p = ctx.d / "fractions.yaml"
    p.write_text("data:\n  split_fractions: [0.9, 0.9, 0.9]\n")
    return [*_preprocess(ctx, traj), "--config", p], ("fractions.yaml", "must sum to 1")


# ----------------------------------------------------------------------------------------------- manifests
def _evaluate_window(ctx: Ctx, dataset: Path) -> list:
    return ["evaluate", ctx.fixture("tiny_weights"), dataset, "-o", ctx.d / "eval", "--protocol", "window",
            "--split", "train", "--horizon-frames", "2"]


def _edit_manifest(ctx: Ctx, edit: Callable[[dict, Path], object]) -> Path:
    ds = ctx.copy_dataset()
    manifest = json.loads((ds / "manifest.json").read_text())
    result = edit(manifest, ds)
    (ds / "manifest.json").write_text(result if isinstance(result, str) else json.dumps(manifest))
    return ds


@case("manifest-truncated-json")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: json.dumps(m)[:200])
    return _evaluate_window(ctx, ds), ("manifest.json", "invalid JSON")


@case("manifest-top-level-list")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: json.dumps([m]))
    return _evaluate_window(ctx, ds), ("manifest.json", "must be a JSON object")


@case("manifest-schema-version-string")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: m.update(schema_version="1"))
    return _evaluate_window(ctx, ds), ("manifest.json", "schema version '1' is not supported")


@case("manifest-shard-symlink-out")
def _(ctx):
    def edit(m, d):
        outside = ctx.d / "outside.nc"
        shutil.copy(d / m["shards"][0]["file"], outside)
        (d / m["shards"][0]["file"]).unlink()
        (d / m["shards"][0]["file"]).symlink_to(outside)

    ds = _edit_manifest(ctx, edit)
    return _evaluate_window(ctx, ds), ("manifest.json", "resolves outside the dataset directory")


@case("manifest-shard-missing")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: (d / m["shards"][1]["file"]).unlink())
    return _evaluate_window(ctx, ds), ("shard-00001.nc", "missing")


@case("manifest-atomic-numbers-mismatch")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: m.update(atomic_numbers=m["atomic_numbers"][:-1]))
    return _evaluate_window(ctx, ds), ("manifest.json", "7 atomic numbers for 8 atoms")


@case("manifest-no-shards")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: m.update(shards=[]))
    return _evaluate_window(ctx, ds), ("manifest.json", "no shards")


@case("manifest-shard-entry-not-a-path")
def _(ctx):
    ds = _edit_manifest(ctx, lambda m, d: m["shards"][0].update(file=5))
    return _evaluate_window(ctx, ds), ("manifest.json", "invalid file entry 5")


@case("manifest-shard-corrupt-same-size")
def _(ctx):
    def edit(m, d):
        shard = d / m["shards"][0]["file"]
        shard.write_bytes(b"\0" * shard.stat().st_size)

    ds = _edit_manifest(ctx, edit)
    return _evaluate_window(ctx, ds), ("shard-00000.nc",)


# ----------------------------------------------------------------------------------------------- weights
def _evaluate_trajectory(ctx: Ctx, weights: Path) -> list:
    traj = write_traj(ctx.d / "t.nc", random_walk(300))
    return ["evaluate", weights, traj, "-o", ctx.d / "eval", "--protocol", "C"]


@case("weights-truncated-safetensors")
def _(ctx):
    good = ctx.fixture("tiny_weights").read_bytes()
    p = ctx.d / "cut.safetensors"
    p.write_bytes(good[: len(good) // 2])
    return _evaluate_trajectory(ctx, p), ("cut.safetensors", "not a readable safetensors file")


@case("weights-pickle-not-safetensors")
def _(ctx):
    import torch

    p = ctx.d / "pickled.safetensors"
    torch.save({"w": torch.zeros(3)}, p)
    return _evaluate_trajectory(ctx, p), ("pickled.safetensors", "not a readable safetensors file")


@case("weights-without-config-metadata")
def _(ctx):
    import torch
    from safetensors.torch import save_file

    p = ctx.d / "bare.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    return _evaluate_trajectory(ctx, p), ("bare.safetensors", "no asteroid_model_config metadata")


@case("weights-do-not-match-config")
def _(ctx):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ctx.fixture("tiny_weights")), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    config = json.loads(metadata["asteroid_model_config"])
    config.update(hidden_size=32)
    p = ctx.d / "mismatch.safetensors"
    save_file(tensors, str(p), metadata={"asteroid_model_config": json.dumps(config)})
    return _evaluate_trajectory(ctx, p), ("mismatch.safetensors", "do not match")


# ----------------------------------------------------------------------------------------------- checkpoints
def _export(ctx: Ctx, checkpoint: Path) -> list:
    return ["export", checkpoint, ctx.d / "exported.safetensors"]


@case("checkpoint-without-complete-marker")
def _(ctx):
    step = ctx.copy_checkpoint() / "checkpoints" / "step_000003"
    (step / "COMPLETE").unlink()
    return _export(ctx, step), ("step_000003", "incomplete (no COMPLETE marker)")


@case("checkpoint-latest-points-to-missing-folder")
def _(ctx):
    checkpoints = ctx.copy_checkpoint() / "checkpoints"
    shutil.rmtree(checkpoints / "step_000003")
    (checkpoints / "latest").write_text("step_000009")
    return _export(ctx, checkpoints), ("checkpoints", "no complete checkpoint")


@case("checkpoint-client-state-bad-json")
def _(ctx):
    step = ctx.copy_checkpoint() / "checkpoints" / "step_000003"
    (step / "client_state.json").write_text('{"step": 3, "config": ')
    return _export(ctx, step), ("client_state.json", "unreadable checkpoint state")


@case("checkpoint-client-state-without-model")
def _(ctx):
    step = ctx.copy_checkpoint() / "checkpoints" / "step_000003"
    state = json.loads((step / "client_state.json").read_text())
    del state["config"]["model"]
    (step / "client_state.json").write_text(json.dumps(state))
    return _export(ctx, step), ("client_state.json", "no usable model config")


@case("checkpoint-model-states-missing")
def _(ctx):
    step = ctx.copy_checkpoint() / "checkpoints" / "step_000003"
    (step / "mp_rank_00_model_states.pt").unlink()
    return _export(ctx, step), ("step_000003", "no DeepSpeed model states")


@case("checkpoint-model-states-truncated")
def _(ctx):
    step = ctx.copy_checkpoint() / "checkpoints" / "step_000003"
    states = step / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:5000])
    return _export(ctx, step), ("mp_rank_00_model_states.pt",)


def _train(ctx: Ctx, run_dir: Path, *extra: str) -> list:
    from tests.support.train import TINY_CONFIG

    dataset, _ = ctx.fixture("trained")
    return ["train", TINY_CONFIG, f"data.dataset={dataset}", f"train.run_dir={run_dir}", "train.max_steps=4",
            "train.checkpoint_every=3", "train.val_every=3", *extra]


@case("resume-from-missing-path", subprocess=True)
def _(ctx):
    return [*_train(ctx, ctx.d / "fresh"), "--resume", ctx.d / "nowhere"], ("nowhere", "does not exist")


@case("resume-from-incomplete-checkpoint", subprocess=True)
def _(ctx):
    run = ctx.copy_checkpoint()
    step = run / "checkpoints" / "step_000003"
    (step / "COMPLETE").unlink()
    return [*_train(ctx, run), "--resume", step], ("step_000003", "incomplete")


@case("resume-with-another-zero-stage", subprocess=True)
def _(ctx):
    run = ctx.copy_checkpoint()
    return _train(ctx, run, "train.zero_stage=1"), ("step_000003", "train.zero_stage was 0 and is now 1")


@case("resume-from-truncated-model-states", subprocess=True)
def _(ctx):
    run = ctx.copy_checkpoint()
    states = run / "checkpoints" / "step_000003" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:5000])
    return _train(ctx, run), ("mp_rank_00_model_states.pt",)


# ----------------------------------------------------------------------------------------------- the test
DATA_SUFFIXES = (".nc", ".partial", ".safetensors", ".pt", ".npz", ".json", ".md", ".png")


def _files(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _run_in_process(argv: list, capsys) -> subprocess.CompletedProcess:
    from asteroid_hpc.cli.main import main

    capsys.readouterr()  # drop what building the input printed
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_info.value.code, captured.out, captured.err)


def _params():
    # the checkpoint cases need a real training run (~25 s once per session): slow
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name.startswith(("checkpoint", "resume")) else [])
            for c in CASES]


@pytest.mark.parametrize("bad", _params())
def test_bad_input_is_one_line_exit_2_and_leaves_no_data(bad: Case, tmp_path, request, capsys):
    ctx = Ctx(tmp_path, request)
    argv, fragments = bad.build(ctx)
    before = _files(tmp_path)
    proc = run_cli(*argv, timeout=300, cwd=tmp_path) if bad.subprocess else _run_in_process(argv, capsys)
    line = assert_user_error(proc, *fragments)
    assert "\n" not in line
    after = _files(tmp_path)
    created = [p for p in after if p not in before and p.suffix != ".log"]
    changed = [p for p in after if p in before and after[p] != before[p]]
    assert not created, f"files written by a failed run: {created}"
    assert not changed, f"inputs modified by a failed run: {changed}"


def test_corpus_size_matches_the_docstring():
    import re

    counted = int(re.search(r"Corpus: (\d+) cases", __doc__).group(1))
    assert counted == len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)
