"""What training derives from a dataset comes from its training frames only (no leakage, for every split
kind), `data.frames` holds out a frame range without a script, and a validation split too short for one
window is a one-line error at preprocess time."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.data import centered, preprocess, random_walk, write_traj

from asteroid_hpc.data.amber import AmberReader
from asteroid_hpc.data.manifest import read_manifest
from asteroid_hpc.data.reference import training_mean_structure
from asteroid_hpc.errors import UserError

WINDOW = ("model.history_frames=4", "data.horizon_frames=3")  # 7-frame windows
FAR = 1000.0  # Å: where the held-out frames are moved


def _far(x: np.ndarray) -> np.ndarray:
    """The frames blown up tenfold and moved 1000 Å away: unmistakable in any statistic or mean shape."""
    return x * 10.0 + FAR


def _train_frames_from_the_split(manifest: dict, source: int, n_frames: int, history: int, horizon: int) -> np.ndarray:
    """Mask of the frames training windows cover, from the split as recorded (not from the statistics'
    own record, which is what is under test)."""
    split, mask = manifest["split"], np.zeros(n_frames, dtype=bool)
    if split["method"] == "chronological":
        a, b = split["ranges"][str(source)]["train"]
        mask[a:b] = True
    else:
        for src, s in split["starts"]["train"]:
            if src == source:
                mask[s - history + 1: s + horizon + 1] = True
    return mask


def _expected_statistics(x: np.ndarray, mask: np.ndarray) -> dict:
    """Coordinate and displacement moments of the (centred) frames in ``mask``; displacements between
    neighbouring frames both in it."""
    c = centered(x).astype(np.float64)
    coords = c[mask].reshape(-1, 3)
    pairs = mask[1:] & mask[:-1]
    disps = (c[1:] - c[:-1])[pairs].reshape(-1, 3)
    return {"coordinate_mean_angstrom": coords.mean(axis=0), "coordinate_std_angstrom": coords.std(axis=0),
            "coordinate_count": len(coords), "displacement_mean_angstrom": disps.mean(axis=0),
            "displacement_std_angstrom": disps.std(axis=0), "displacement_count": len(disps)}


def _assert_statistics(stats: dict, expected: dict) -> None:
    for key, value in expected.items():
        if key.endswith("count"):
            assert stats[key] == value, key
        else:
            np.testing.assert_allclose(stats[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("split", ["chronological", "random_start"])
def test_held_out_frames_of_one_input_reach_neither_statistics_nor_reference(tmp_path, capsys, split):
    """Frames outside the training windows moved far away and blown up: the dataset's statistics and
    its reference structure are those of the training frames alone, exactly as without the move."""
    x = random_walk(400, seed=3)
    options = [*WINDOW, f"data.split={split}", "data.frames_per_shard=50", "data.chunk_frames=16",
               "data.stats_max_frames=0", "data.split_fractions=[0.5,0.25,0.25]", "data.random_start_counts=[20,10,10]",
               "data.random_start_margin_frames=10"]
    clean = tmp_path / "clean"
    preprocess(write_traj(tmp_path / "clean.nc", x), "-o", clean, *options, capsys=capsys)
    manifest = read_manifest(clean)
    train = _train_frames_from_the_split(manifest, 0, len(x), 4, 3)
    assert 0 < train.sum() <= 0.5 * len(x)  # half the frames or more are moved: the test can see a leak
    moved = x.copy()
    moved[~train] = _far(x[~train])
    shifted = tmp_path / "shifted"
    preprocess(write_traj(tmp_path / "moved.nc", moved), "-o", shifted, *options, capsys=capsys)

    stats = read_manifest(shifted)["statistics"]
    _assert_statistics(stats, _expected_statistics(x, train))
    assert max(stats["coordinate_std_angstrom"]) < 5.0  # the moved frames' std is ~10× larger
    assert stats["count"] == train.sum()
    assert stats["frames"] == ("train windows" if split == "random_start" else "train")
    recorded = np.zeros(len(x), dtype=bool)
    for a, b in stats["ranges"]["0"]:
        recorded[a:b] = True
    np.testing.assert_array_equal(recorded, train)
    reference = training_mean_structure(shifted)
    np.testing.assert_allclose(reference, training_mean_structure(clean), atol=1e-6)
    assert np.abs(reference).max() < 10.0  # a mean with the moved frames in it is ~10× larger
    # the moved frames are in the dataset (validation and test windows read them; centring undoes the move,
    # not the blow-up), only not in what training derives from it
    shards = read_manifest(shifted)["shards"]
    stored = np.concatenate([AmberReader(shifted / s["file"]).read(0, 10**9).coordinates for s in shards])
    assert np.abs(stored).max() > 30.0


def test_held_out_input_files_reach_neither_statistics_nor_reference(tmp_path, capsys):
    """by_file: the val and test inputs, far away and blown up, change neither the statistics nor the
    reference structure."""
    train_x, val_x, test_x = random_walk(200, seed=5), random_walk(120, seed=6), random_walk(120, seed=7)
    options = [*WINDOW, "data.split=by_file", "data.frames_per_shard=64", "data.stats_max_frames=0"]
    datasets = {}
    for name, move in (("clean", lambda v: v), ("shifted", _far)):
        paths = [write_traj(tmp_path / f"{name}-{part}.nc", move(v) if part != "train" else v)
                 for part, v in (("train", train_x), ("val", val_x), ("test", test_x))]
        datasets[name] = tmp_path / name
        preprocess(*paths, "-o", datasets[name], *options, f"data.val_inputs=[{paths[1]}]",
                   f"data.test_inputs=[{paths[2]}]", capsys=capsys)
    stats = read_manifest(datasets["shifted"])["statistics"]
    _assert_statistics(stats, _expected_statistics(train_x, np.ones(len(train_x), dtype=bool)))
    assert stats["ranges"] == {"0": [[0, 200]]} and stats["count"] == 200
    np.testing.assert_allclose(training_mean_structure(datasets["shifted"]), training_mean_structure(datasets["clean"]),
                               atol=1e-6)


def test_sampled_statistics_stay_inside_the_training_windows(tmp_path, capsys):
    """data.stats_max_frames > 0 samples every q-th frame, q from the number of training frames: the
    samples are training frames too."""
    x = random_walk(400, seed=8)
    options = [*WINDOW, "data.split=random_start", "data.random_start_counts=[20,10,10]",
               "data.random_start_margin_frames=10", "data.frames_per_shard=50", "data.stats_max_frames=30"]
    preprocess(write_traj(tmp_path / "a.nc", x), "-o", tmp_path / "a", *options, capsys=capsys)
    manifest = read_manifest(tmp_path / "a")
    train = _train_frames_from_the_split(manifest, 0, len(x), 4, 3)
    moved = x.copy()
    moved[~train] = _far(x[~train])
    preprocess(write_traj(tmp_path / "b.nc", moved), "-o", tmp_path / "b", *options, capsys=capsys)
    stats = read_manifest(tmp_path / "b")["statistics"]
    every = stats["sampled_every_frames"]
    assert every == -(-int(train.sum()) // 30) > 1
    picked = centered(x)[train & (np.arange(len(x)) % every == 0)].reshape(-1, 3).astype(np.float64)
    _assert_statistics(stats, {"coordinate_mean_angstrom": picked.mean(axis=0),
                               "coordinate_std_angstrom": picked.std(axis=0), "coordinate_count": len(picked)})
    np.testing.assert_allclose(training_mean_structure(tmp_path / "b", max_frames=30),
                               training_mean_structure(tmp_path / "a", max_frames=30), atol=1e-6)


def test_reference_of_a_dataset_made_before_the_training_ranges_were_recorded(tmp_path, capsys):
    """A chronological manifest without statistics.ranges: its train shards, as before; a random-start one
    (statistics of all frames) must be preprocessed again."""
    x = random_walk(300, seed=9)
    for split in ("chronological", "random_start"):
        out = tmp_path / split
        preprocess(write_traj(tmp_path / f"{split}.nc", x), "-o", out, *WINDOW, f"data.split={split}",
                   "data.frames_per_shard=64", "data.random_start_counts=[20,10,10]",
                   "data.random_start_margin_frames=10", capsys=capsys)
        now = training_mean_structure(out)
        manifest = json.loads((out / "manifest.json").read_text())
        del manifest["statistics"]["ranges"]
        (out / "manifest.json").write_text(json.dumps(manifest))
        if split == "chronological":
            np.testing.assert_array_equal(training_mean_structure(out), now)
        else:
            with pytest.raises(UserError, match="re-run `asteroid-hpc preprocess`"):
                training_mean_structure(out)


def test_reference_skips_dropped_frames(tmp_path, capsys):
    """A dropped non-finite training frame: the reference is the mean of the other training frames, the
    same as from a file without that frame (the shard's rows shift past it)."""
    x = random_walk(300, seed=12)
    holed = x.copy()
    holed[40] = np.nan
    options = [*WINDOW, "data.frames_per_shard=64", "data.split_fractions=[0.5,0.25,0.25]"]
    preprocess(write_traj(tmp_path / "holed.nc", holed), "-o", tmp_path / "holed", *options, "--drop-nonfinite",
               capsys=capsys)
    train = read_manifest(tmp_path / "holed")["statistics"]["ranges"]["0"][0]
    kept = np.delete(x[: train[1]], 40, axis=0)  # the training frames but frame 40, as one file
    preprocess(write_traj(tmp_path / "kept.nc", kept), "-o", tmp_path / "kept", *WINDOW,
               "data.split_fractions=[1,0,0]", capsys=capsys)
    np.testing.assert_allclose(training_mean_structure(tmp_path / "holed"), training_mean_structure(tmp_path / "kept"),
                               atol=1e-6)


# ----------------------------------------------------------------------------------- data.frames

def test_frame_range_reads_only_those_frames(tmp_path, capsys):
    """data.frames=[100, 300]: frames outside are never read (here they are NaN, which would fail the
    run), strided frame 0 is raw frame 100, and the range is in the manifest and the plan key."""
    x = random_walk(400, seed=10)
    poisoned = x.copy()
    poisoned[:100] = np.nan
    poisoned[300:] = np.nan
    path = write_traj(tmp_path / "t.nc", poisoned)
    out = tmp_path / "ds"
    preprocess(path, "-o", out, *WINDOW, "data.frames=[100, 300]", "data.frame_stride=2", "data.frames_per_shard=32",
               capsys=capsys)
    m = read_manifest(out)
    source = m["sources"][0]
    assert source["frames_raw"] == [100, 300] and source["frame_offset"] == 100 and source["n_frames"] == 100
    assert source["n_frames_raw"] == 400 and m["config"]["data"]["frames"] == [100, 300]
    stored = np.concatenate([AmberReader(out / s["file"]).read(0, 10**9).coordinates for s in m["shards"]])
    expected = np.concatenate([centered(x[100:300:2][a:b]) for a, b in m["split"]["ranges"]["0"].values()])
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert m["split"]["ranges"]["0"]["test"][1] == 100
    # the same range from a clean file gives the same dataset; another range is another dataset (plan key)
    clean = write_traj(tmp_path / "clean.nc", x)
    preprocess(clean, "-o", tmp_path / "c1", *WINDOW, "data.frames=[100, 300]", "data.frame_stride=2",
               "data.frames_per_shard=32", capsys=capsys)
    preprocess(clean, "-o", tmp_path / "c2", *WINDOW, "data.frames=[100, null]", "data.frame_stride=2",
               "data.frames_per_shard=32", capsys=capsys)
    preprocess(clean, "-o", tmp_path / "c3", *WINDOW, "data.frame_stride=2", "data.frames_per_shard=32", capsys=capsys)
    c1, c2, c3 = (read_manifest(tmp_path / c) for c in ("c1", "c2", "c3"))
    assert c1["statistics"] == m["statistics"]
    assert c2["sources"][0]["frames_raw"] == [100, 400] and c2["sources"][0]["n_frames"] == 150
    assert len({c1["plan_key"], c2["plan_key"], c3["plan_key"]}) == 3


def test_frame_range_with_stride_phases(tmp_path, capsys):
    x = random_walk(400, seed=11)
    out = tmp_path / "ds"
    preprocess(write_traj(tmp_path / "t.nc", x), "-o", out, *WINDOW, "data.frames=[50, 250]", "data.frame_stride=4",
               "data.stride_phases=2", "data.split_fractions=[1,0,0]", capsys=capsys)
    sources = read_manifest(out)["sources"]
    assert [s["frame_offset"] for s in sources] == [50, 52] and [s["n_frames"] for s in sources] == [50, 50]


@pytest.mark.parametrize("frames, fragment", [
    ("[0, 500]", "400 frames, but data.frames=[0, 500] stops at frame 500"),
    ("[400, null]", "400 frames, but data.frames=[400, None] starts at frame 400"),
])
def test_frame_range_outside_the_input_is_one_line(tmp_path, capsys, frames, fragment):
    path = write_traj(tmp_path / "t.nc", random_walk(400))
    err = preprocess(path, "-o", tmp_path / "ds", f"data.frames={frames}", expect=2, capsys=capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "t.nc" in lines[0] and fragment in lines[0], err
    assert not (tmp_path / "ds" / "manifest.json").exists()


@pytest.mark.parametrize("frames", ["[5, 5]", "[-1, 10]", "[3]", "[null, 10]"])
def test_bad_frame_range_is_refused_by_the_config(frames):
    from asteroid_hpc.config import load_config

    with pytest.raises(UserError, match="data.frames must be"):
        load_config(None, [f"data.frames={frames}"])


# ----------------------------------------------------------------------------------- validation too short

def test_validation_shorter_than_one_window_is_one_line_at_preprocess(tmp_path, capsys):
    """100 frames, default windows (10 + 10) and fractions: 6 validation frames, no window. An explicit
    0 validation fraction is a choice, and allowed."""
    path = write_traj(tmp_path / "t.nc", random_walk(100))
    err = preprocess(path, "-o", tmp_path / "ds", expect=2, capsys=capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "t.nc" in lines[0], err
    assert "validation split holds 6 frames" in lines[0] and "one window of history + horizon = 20 frames" in lines[0]
    assert not (tmp_path / "ds").exists()
    preprocess(path, "-o", tmp_path / "ds", "data.split_fractions=[0.9, 0, 0.1]", capsys=capsys)
    assert "val" not in read_manifest(tmp_path / "ds")["split"]["ranges"]["0"]


def test_held_out_validation_file_shorter_than_one_window_is_one_line(tmp_path, capsys):
    train = write_traj(tmp_path / "train.nc", random_walk(100))
    val = write_traj(tmp_path / "val.nc", random_walk(6))
    err = preprocess(train, val, "-o", tmp_path / "ds", *WINDOW, "data.split=by_file", f"data.val_inputs=[{val}]",
                     expect=2, capsys=capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "val.nc" in lines[0] and "holds 6 frames" in lines[0] and "= 7 frames" in lines[0]


def test_random_start_warning_for_short_phases_is_said_once(tmp_path, capsys):
    """data.stride_phases=3 on a short input: one warning naming the phases, not one per phase."""
    path = write_traj(tmp_path / "t.nc", random_walk(600))
    err = preprocess(path, "-o", tmp_path / "ds", *WINDOW, "data.split=random_start", "data.frame_stride=3",
                     "data.stride_phases=3", capsys=capsys)
    warnings = [line for line in err.splitlines() if "too short for the requested random starts" in line]
    assert len(warnings) == 1 and "phases 0, 1, 2" in warnings[0], err
