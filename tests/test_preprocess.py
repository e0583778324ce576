"""`asteroid-hpc preprocess`: shards, manifest, splits, options, re-runs, resume after SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import netCDF4
from blake3 import blake3
import numpy as np
import pytest

from tests.support.cli import cli_env, run_cli
from tests.support.data import ATOMIC_NUMBERS, centered, dataset_fingerprint, preprocess, random_walk, write_traj

from asteroid_hpc.data.amber import AmberReader
from asteroid_hpc.data.manifest import read_manifest
from asteroid_hpc.data.preprocess import SHARD_DELAY_ENV


@pytest.fixture
def two_sources(tmp_path):
    a, b = random_walk(300, seed=1), random_walk(260, seed=2)
    return [write_traj(tmp_path / "a.nc", a), write_traj(tmp_path / "b.nc", b)], [a, b]


def test_shards_manifest_and_chronological_split(tmp_path, two_sources, capsys):
    paths, coords = two_sources
    out = tmp_path / "ds"
    preprocess(*paths, "-o", out, "data.frames_per_shard=64", "model.history_frames=4", "data.horizon_frames=3",
               capsys=capsys)
    m = read_manifest(out)
    assert m["n_atoms"] == 8 and m["atomic_numbers"] == ATOMIC_NUMBERS
    assert m["timestep_fs"] == pytest.approx(0.5) and m["frame_stride"] == 1
    assert m["config"]["data"]["frames_per_shard"] == 64
    gap = m["split"]["gap_frames"]
    assert gap == 7
    for i, (path, x) in enumerate(zip(paths, coords)):
        src = m["sources"][i]
        assert src["blake3"] == blake3(path.read_bytes()).hexdigest()
        ranges = m["split"]["ranges"][str(i)]
        assert ranges["val"][0] - ranges["train"][1] == gap and ranges["test"][0] - ranges["val"][1] == gap
        assert ranges["test"][1] == len(x)
        shards = [s for s in m["shards"] if s["source"] == i]
        assert all(s["frame_stop"] - s["frame_start"] <= 64 for s in shards)
        for split, (lo, hi) in ranges.items():
            mine = [s for s in shards if s["split"] == split]
            assert mine[0]["frame_start"] == lo and mine[-1]["frame_stop"] == hi
            stored = np.concatenate([AmberReader(out / s["file"]).read(0, 10**9).coordinates for s in mine])
            np.testing.assert_allclose(stored, centered(x[lo:hi]), atol=1e-5)
    for shard in m["shards"]:
        assert shard["sha256"] == hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest()
        with netCDF4.Dataset(out / shard["file"]) as ds:
            assert ds.data_model == "NETCDF3_64BIT_OFFSET" and ds.Conventions == "AMBER"
    # statistics: displacements and coordinates of the training frames, per coordinate
    train = [centered(x[slice(*m["split"]["ranges"][str(i)]["train"])]) for i, x in enumerate(coords)]
    disp = np.concatenate([np.diff(t, axis=0).reshape(-1, 3) for t in train])
    stats = m["statistics"]
    np.testing.assert_allclose(stats["displacement_std_angstrom"], disp.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["displacement_mean_angstrom"], disp.mean(axis=0), atol=1e-7)
    assert stats["displacement_count"] == len(disp)  # one per atom and frame pair
    np.testing.assert_allclose(stats["coordinate_std_angstrom"],
                               np.concatenate(train).reshape(-1, 3).std(axis=0), rtol=1e-5)


def test_statistics_from_every_qth_frame(tmp_path, capsys):
    """data.stats_max_frames caps the frames the statistics read: every q-th training frame (its
    displacement from the frame before), q = ceil(frames / cap), across shard and chunk boundaries."""
    x = random_walk(300, seed=4)
    out = tmp_path / "ds"
    preprocess(write_traj(tmp_path / "t.nc", x), "-o", out, "data.split_fractions=[1,0,0]",
               "data.stats_max_frames=70", "data.frames_per_shard=50", "data.chunk_frames=16", capsys=capsys)
    stats = read_manifest(out)["statistics"]
    assert stats["sampled_every_frames"] == 5  # ceil(300 / 70)
    c = centered(x)
    picked = np.arange(0, 300, 5)
    np.testing.assert_allclose(stats["coordinate_mean_angstrom"], c[picked].reshape(-1, 3).mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["coordinate_std_angstrom"], c[picked].reshape(-1, 3).std(axis=0), rtol=1e-5)
    disp = (c[picked[1:]] - c[picked[1:] - 1]).reshape(-1, 3)
    assert stats["coordinate_count"] == len(picked) * c.shape[1] and stats["displacement_count"] == len(disp)
    np.testing.assert_allclose(stats["displacement_std_angstrom"], disp.std(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats["displacement_mean_angstrom"], disp.mean(axis=0), atol=1e-6)


def test_stride_selection_and_no_centering(tmp_path, capsys):
    x = random_walk(100, seed=3)
    path = write_traj(tmp_path / "t.ncdf", x)
    out = tmp_path / "ds"
    preprocess(path, "-o", out, "data.frame_stride=3", "data.atom_selection=heavy", "data.center=false",
               "data.split_fractions=[1,0,0]", "data.frames_per_shard=7", "data.chunk_frames=5", capsys=capsys)
    m = read_manifest(out)
    heavy = [i for i, z in enumerate(ATOMIC_NUMBERS) if z > 1]
    assert m["atom_indices"] == heavy and m["atomic_numbers"] == [6, 6, 8, 7]
    assert m["timestep_fs"] == pytest.approx(1.5) and m["split"]["ranges"]["0"] == {"train": [0, 34]}
    stored = np.concatenate([AmberReader(out / s["file"]).read(0, 100).coordinates for s in m["shards"]])
    np.testing.assert_array_equal(stored, x[::3][:, heavy])
    with AmberReader(out / m["shards"][1]["file"]) as r:  # time continues at the strided frame spacing
        np.testing.assert_allclose(r.read(0, 1).time_ps, [7 * 3 * 0.0005], rtol=1e-6)


def test_stride_phases_read_each_input_at_every_offset(tmp_path, capsys):
    """data.stride_phases=3 with stride 6: every file gives subsamplings at raw offsets 0, 2 and 4, each its
    own segment with its own split ranges; the files are read and fingerprinted once each."""
    x = random_walk(100, seed=5)
    path = write_traj(tmp_path / "t.nc", x)
    out = tmp_path / "ds"
    preprocess(path, "-o", out, "data.frame_stride=6", "data.stride_phases=3", "data.center=false",
               "data.split_fractions=[0.5,0.5,0]", "model.history_frames=2", "data.horizon_frames=1",
               "data.frames_per_shard=4", capsys=capsys)
    m = read_manifest(out)
    assert [s["frame_offset"] for s in m["sources"]] == [0, 2, 4]
    assert [s["n_frames"] for s in m["sources"]] == [17, 17, 16]  # frames 0..96, 2..98, 4..94
    assert len({s["blake3"] for s in m["sources"]}) == 1
    for i, offset in enumerate((0, 2, 4)):
        phase = x[offset::6]
        for split, (lo, hi) in m["split"]["ranges"][str(i)].items():
            shards = [s for s in m["shards"] if s["source"] == i and s["split"] == split]
            stored = np.concatenate([AmberReader(out / s["file"]).read(0, 100).coordinates for s in shards])
            np.testing.assert_allclose(stored, phase[lo:hi], atol=1e-5)
            with AmberReader(out / shards[0]["file"]) as r:
                np.testing.assert_allclose(r.read(0, 1).time_ps, [(offset + 6 * lo) * 0.0005], rtol=1e-6)
    err = preprocess(path, "-o", tmp_path / "bad", "data.frame_stride=6", "data.stride_phases=4", expect=2,
                     capsys=capsys)
    assert "data.stride_phases must be >= 1 and divide data.frame_stride" in err


def test_by_file_split_holds_out_whole_inputs(tmp_path, capsys):
    """data.split=by_file: the named inputs (every phase of them) are wholly val or test, the rest train;
    the statistics come from the training inputs only; windows never leave their file."""
    from asteroid_hpc.data.windows import WindowDataset

    walks = [random_walk(120, seed=s) for s in (11, 12, 13)]
    paths = [write_traj(tmp_path / f"traj-{k}.nc", x) for k, x in enumerate(walks)]
    out = tmp_path / "ds"
    preprocess(*paths, "-o", out, "data.split=by_file", f"data.val_inputs=[{paths[1]}]",
               f"data.test_inputs=[{tmp_path}/traj-2*.nc]", "data.frame_stride=2", "data.stride_phases=2",
               "model.history_frames=3", "data.horizon_frames=2", "data.frames_per_shard=16", capsys=capsys)
    m = read_manifest(out)
    assert m["split"]["method"] == "by_file"
    assert m["split"]["inputs"] == {name: [str(paths[k].resolve())] for name, k in (("train", 0), ("val", 1),
                                                                                     ("test", 2))}
    for shard in m["shards"]:
        source = m["sources"][shard["source"]]
        expected = {str(p.resolve()): name for p, name in zip(paths, ("train", "val", "test"))}[source["path"]]
        assert shard["split"] == expected
    by_split = {name: sum(s["frame_stop"] - s["frame_start"] for s in m["shards"] if s["split"] == name)
                for name in ("train", "val", "test")}
    assert by_split == {"train": 120, "val": 120, "test": 120}  # two phases of 60 frames per file: nothing lost
    train = [centered(walks[0][offset::2]) for offset in (0, 1)]
    coordinates = np.concatenate(train).reshape(-1, 3)
    np.testing.assert_allclose(m["statistics"]["coordinate_std_angstrom"], coordinates.std(axis=0), rtol=1e-5)
    assert m["statistics"]["frames"] == "train"
    val = WindowDataset(out, "val", history_frames=3, horizon_frames=2)
    assert len(val) == 2 * (60 - 5 + 1)  # every start of both phases of the one val file
    sample = val[0]
    np.testing.assert_allclose(sample["history"].numpy(), centered(walks[1][0:6:2]), atol=1e-5)


def test_by_file_split_errors_name_the_cause(tmp_path, capsys):
    paths = [write_traj(tmp_path / f"t{k}.nc", random_walk(60, seed=k)) for k in range(2)]
    err = preprocess(*paths, "-o", tmp_path / "a", "data.split=by_file", expect=2, capsys=capsys)
    assert "data.split=by_file needs data.val_inputs or data.test_inputs" in err
    err = preprocess(*paths, "-o", tmp_path / "b", "data.split=by_file", f"data.val_inputs=[{tmp_path}/other.nc]",
                     expect=2, capsys=capsys)
    assert "other.nc" in err and "not one of the preprocess inputs" in err
    err = preprocess(*paths, "-o", tmp_path / "c", "data.split=by_file", f"data.val_inputs=[{paths[0]}]",
                     f"data.test_inputs=[{paths[1]}]", expect=2, capsys=capsys)
    assert "none is left to train on" in err
    err = preprocess(*paths, "-o", tmp_path / "d", f"data.val_inputs=[{paths[0]}]", expect=2, capsys=capsys)
    assert "apply only to data.split=by_file" in err
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_training_mean_structure_is_the_shape_without_the_tumbling(tmp_path, capsys):
    """A body that turns by up to ~170° and vibrates: the reference is its mean shape (to the noise), taken
    from the training split only, while the plain coordinate mean would be shrunk by the turning."""
    from scipy.spatial.transform import Rotation

    from asteroid_hpc.data.reference import training_mean_structure
    from asteroid_hpc.metrics import kabsch_rmsd

    rng = np.random.default_rng(7)
    body = rng.normal(size=(8, 3)) * 1.5
    body -= body.mean(0)
    turns = Rotation.from_rotvec(np.linspace(0, 3.0, 400)[:, None] * np.array([[0.6, 0.0, 0.8]]))
    frames = np.stack([turn.apply(body + rng.normal(scale=0.05, size=body.shape)) for turn in turns]) + 2.0
    frames[300:] += 1.0  # the val/test frames are shifted in shape: they must not enter the mean
    frames[300:, 0] += 3.0
    path = write_traj(tmp_path / "tumble.nc", frames.astype(np.float32))
    out = tmp_path / "ds"
    preprocess(path, "-o", out, "data.split_fractions=[0.7,0.15,0.15]", "model.history_frames=2",
               "data.horizon_frames=1", "data.frames_per_shard=50", capsys=capsys)
    mean = training_mean_structure(out, max_frames=100)
    assert mean.shape == (8, 3) and np.abs(mean.mean(axis=0)).max() < 1e-9
    assert kabsch_rmsd(mean, body) < 0.02
    assert kabsch_rmsd(centered(frames[:270]).mean(axis=0), body) > 0.2


def peers_protocol_a_split(n_frames: int, margin: int, counts: list[int]):
    """The GMN/EGNO MD17 split recipe, verbatim in spirit: x = R[:-1]; 10/5/5 % of x[margin:-margin] drawn
    one after another, then the first ``counts`` of each kept."""
    np.random.seed(100)
    n = n_frames - 1 - 2 * margin
    train = np.random.choice(np.arange(n), size=int(0.1 * n), replace=False)
    flag = np.zeros(n)
    flag[train] = 1
    rest = [i for i in range(n) if not flag[i]]
    val = np.random.choice(rest, size=int(0.05 * n), replace=False)
    flag[val] = 1
    rest = [i for i in range(n) if not flag[i]]
    test = np.random.choice(rest, size=int(0.05 * n), replace=False)
    return [(idx[:keep] + margin).tolist() for idx, keep in zip((train, val, test), counts)]


def test_random_start_split_reproduces_protocol_a(tmp_path, capsys):
    x = random_walk(400, seed=4)
    path = tmp_path / "md17_like.npz"
    np.savez(path, R=x.astype(np.float64), z=np.array(ATOMIC_NUMBERS), E=np.zeros(len(x)))
    out = tmp_path / "ds"
    preprocess(path, "-o", out, "data.split=random_start", "data.timestep_fs=0.5", "data.random_start_margin_frames=50",
               "data.random_start_counts=[20,30,40]", "model.history_frames=5", "data.frames_per_shard=128",
               capsys=capsys)
    m = read_manifest(out)
    assert m["timestep_fs"] == 0.5 and {s["split"] for s in m["shards"]} == {"all"}
    expected = peers_protocol_a_split(400, 50, [20, 30, 40])
    for name, want in zip(("train", "val", "test"), expected):
        assert [s for _, s in m["split"]["starts"][name]] == want
    stored = np.concatenate([AmberReader(out / s["file"]).read(0, 1000).coordinates for s in m["shards"]])
    np.testing.assert_allclose(stored, centered(x), atol=1e-5)


def test_random_start_split_on_a_short_trajectory_matches_evaluate(tmp_path, capsys):
    """Too short for the margin asked for: the margin shrinks to what the windows need and the counts scale
    down, exactly as `evaluate` draws protocol A's starts (one implementation for both)."""
    from asteroid_hpc.data.random_starts import random_start_plan, random_start_split

    x = random_walk(300, seed=6)
    out = tmp_path / "ds"
    err = preprocess(write_traj(tmp_path / "t.nc", x), "-o", out, "data.split=random_start",
                     "data.random_start_counts=[100,100,100]", "model.history_frames=5", "data.horizon_frames=8",
                     capsys=capsys)
    assert "too short for the requested random starts" in err
    plan = random_start_plan(300, before_frames=4, after_frames=8, margin_frames=10000, sizes=(100, 100, 100))
    assert plan.scaled and plan.margin_frames == 8 and plan.sizes == (94, 94, 94)
    m = read_manifest(out)
    assert m["split"]["scaled"] == {"0": plan.describe()}
    for name, want in random_start_split(300, plan, 100).items():
        assert [s for _, s in m["split"]["starts"][name]] == want.tolist()


def test_extxyz_input_through_ase(tmp_path, capsys):
    from ase import Atoms
    from ase.io import write

    x = random_walk(30, seed=5)
    path = tmp_path / "t.extxyz"
    write(path, [Atoms(numbers=ATOMIC_NUMBERS, positions=frame) for frame in x], format="extxyz")
    out = tmp_path / "ds"
    preprocess(path, "-o", out, "data.timestep_fs=1.0", "data.center=false", "data.split_fractions=[1,0,0]",
               "data.frames_per_shard=8", "data.chunk_frames=3", capsys=capsys)
    m = read_manifest(out)
    assert m["sources"][0]["format"] == "extxyz" and len(m["shards"]) == 4
    stored = np.concatenate([AmberReader(out / s["file"]).read(0, 100).coordinates for s in m["shards"]])
    np.testing.assert_allclose(stored, x, atol=1e-5)


def test_amber_file_without_atomic_numbers_needs_topology(tmp_path, capsys):
    import MDAnalysis as mda
    from ase import Atoms
    from ase.io import write
    from MDAnalysis.coordinates.TRJ import NCDFWriter

    x = random_walk(40, seed=6)
    u = mda.Universe.empty(len(ATOMIC_NUMBERS), trajectory=True)
    path = tmp_path / "mda.nc"
    with NCDFWriter(str(path), len(ATOMIC_NUMBERS)) as w:
        for i, frame in enumerate(x):
            u.atoms.positions = frame
            u.trajectory.ts.time = 0.001 * i
            w.write(u.atoms)
    err = preprocess(path, "-o", tmp_path / "ds", expect=2, capsys=capsys)
    assert "no atomic numbers" in err and "--topology" in err
    topology = tmp_path / "top.xyz"
    write(topology, Atoms(numbers=ATOMIC_NUMBERS, positions=x[0]))
    preprocess(path, "--topology", topology, "-o", tmp_path / "ds", "data.split_fractions=[1,0,0]",
               capsys=capsys)
    m = read_manifest(tmp_path / "ds")
    assert m["atomic_numbers"] == ATOMIC_NUMBERS and m["timestep_fs"] == pytest.approx(1.0)


def test_rerun_is_a_noop_and_other_options_need_overwrite(tmp_path, two_sources, capsys):
    paths, _ = two_sources
    out = tmp_path / "ds"
    preprocess(*paths, "-o", out, "data.frames_per_shard=100", capsys=capsys)
    before = dataset_fingerprint(out)
    created = json.loads((out / "manifest.json").read_text())["created_utc"]
    err = preprocess(*paths, "-o", out, "data.frames_per_shard=100", capsys=capsys)
    assert "nothing to do" in err
    assert json.loads((out / "manifest.json").read_text())["created_utc"] == created
    err = preprocess(*paths, "-o", out, "data.frames_per_shard=50", expect=2, capsys=capsys)
    assert "holds a different dataset" in err and "--overwrite" in err
    assert dataset_fingerprint(out) == before
    preprocess(*paths, "-o", out, "data.frames_per_shard=50", "--overwrite", capsys=capsys)
    m = read_manifest(out)
    assert m["config"]["data"]["frames_per_shard"] == 50
    assert sorted(p.name for p in (out / "shards").glob("*.nc")) == sorted(s["file"][7:] for s in m["shards"])


def test_compression_zlib_writes_netcdf4_shards(tmp_path, two_sources, capsys):
    paths, coords = two_sources
    out = tmp_path / "ds"
    preprocess(paths[0], "-o", out, "data.compression=zlib", "data.split_fractions=[1,0,0]", capsys=capsys)
    m = read_manifest(out)
    with netCDF4.Dataset(out / m["shards"][0]["file"]) as ds:
        assert ds.data_model == "NETCDF4" and ds["coordinates"].filters()["zlib"]
        np.testing.assert_allclose(ds["coordinates"][:], centered(coords[0]), atol=1e-5)


def test_drop_nonfinite_reports_and_skips(tmp_path, capsys):
    x = random_walk(50, seed=7)
    x[10, 3, 1] = np.nan
    x[11, 0, 0] = np.inf
    path = write_traj(tmp_path / "nan.nc", x)
    preprocess(path, "-o", tmp_path / "ds", "data.split_fractions=[1,0,0]", "--drop-nonfinite", capsys=capsys)
    m = read_manifest(tmp_path / "ds")
    assert m["dropped_nonfinite_frames"] == 2 and m["shards"][0]["dropped_frames"] == [10, 11]
    assert m["shards"][0]["n_frames"] == 48


def test_resume_after_sigkill_gives_the_same_dataset(tmp_path, two_sources):
    paths, _ = two_sources
    opts = ["data.frames_per_shard=20", "--no-progress"]
    reference = tmp_path / "reference"
    assert run_cli("preprocess", *paths, "-o", reference, *opts).returncode == 0

    out = tmp_path / "killed"
    env = cli_env(**{SHARD_DELAY_ENV: "0.25"})
    proc = subprocess.Popen([sys.executable, "-m", "asteroid_hpc", "preprocess", *map(str, paths), "-o", str(out),
                             *opts], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(list((out / "shards").glob("*.json"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    done = len(list((out / "shards").glob("*.json")))
    assert 4 <= done < 25

    (out / "shards" / "shard-00024.json.tmp-4242").write_text('{"plan_key": ')  # a sidecar cut short by a kill

    rerun = run_cli("preprocess", *paths, "-o", out, *opts)
    assert rerun.returncode == 0, rerun.stderr
    assert "(resuming)" in rerun.stderr and f"({done} reused)" in rerun.stderr
    assert dataset_fingerprint(out) == dataset_fingerprint(reference)
    assert not list((out / "shards").glob("*.partial")) and not list((out / "shards").glob("*.tmp-*"))


def test_help_ends_with_runnable_examples():
    proc = run_cli("preprocess", "--help")
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].strip().startswith("mpiexec -n 4 asteroid-hpc preprocess")
