"""WindowDataset, DistributedWindowSampler and read_manifest validation."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from tests.support.data import centered, random_walk, write_traj

from asteroid_hpc.cli.main import main
from asteroid_hpc.data import DistributedWindowSampler, WindowDataset, read_manifest
from asteroid_hpc.errors import UserError

M, H = 4, 3


def _preprocess(out, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", *map(str, args), "-o", str(out), f"model.history_frames={M}",
              f"data.horizon_frames={H}"])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("windows")
    coords = [random_walk(120, seed=10), random_walk(90, seed=11)]
    paths = [write_traj(d / f"s{i}.nc", x) for i, x in enumerate(coords)]
    _preprocess(d / "ds", *paths, "data.frames_per_shard=16")
    return d / "ds", [centered(x) for x in coords]


def test_windows_match_the_source_and_stay_inside_segments(dataset):
    out, coords = dataset
    manifest = read_manifest(out)
    for split in ("train", "val", "test"):
        ds = WindowDataset(out, split, M, H, window_stride=2)
        expected = 0
        for i, x in enumerate(coords):
            lo, hi = manifest["split"]["ranges"][str(i)][split]
            expected += len(range(0, hi - lo - (M + H) + 1, 2))
        assert len(ds) == expected
        for index in range(len(ds)):
            item = ds[index]
            source, first = ds.window_location(index)
            lo, hi = manifest["split"]["ranges"][str(source)][split]
            assert lo <= first and first + M + H <= hi  # never across a split or a source
            window = coords[source][first:first + M + H]
            np.testing.assert_allclose(item["history"].numpy(), window[:M], atol=1e-5)
            np.testing.assert_allclose(item["target"].numpy(), window[M:], atol=1e-5)
            assert item["history"].dtype == torch.float32 and item["history"].shape == (M, 8, 3)
            assert item["target"].shape == (H, 8, 3) and item["atomic_numbers"].dtype == torch.int64
            assert item["index"] == index


def test_windows_span_shard_boundaries(dataset):
    out, _ = dataset
    ds = WindowDataset(out, "train", M, H)
    boundaries = {s["frame_start"] for s in ds.manifest["shards"] if s["split"] == "train" and s["frame_start"]}
    crossing = [i for i in range(len(ds)) if any(ds.window_location(i)[1] < b < ds.window_location(i)[1] + M + H
                                                 for b in boundaries)]
    assert crossing and len(ds) == sum(s.length - M - H + 1 for s in ds.segments if s.split == "train")


def test_no_open_handles_are_pickled_and_workers_agree(dataset):
    out, _ = dataset
    ds = WindowDataset(out, "train", M, H)
    first = ds[0]
    assert ds._handles
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handles == {}
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == len(ds)
    torch.testing.assert_close(batches[0]["history"][0], first["history"])


def test_random_start_windows_end_their_history_at_the_drawn_frame(tmp_path):
    x = random_walk(200, seed=12)
    path = write_traj(tmp_path / "t.nc", x)
    _preprocess(tmp_path / "ds", path, "data.split=random_start", "data.random_start_margin_frames=20",
                "data.random_start_counts=[10,10,10]", "data.frames_per_shard=32")
    manifest = read_manifest(tmp_path / "ds")
    ds = WindowDataset(tmp_path / "ds", "val", M, H)
    starts = [s for _, s in manifest["split"]["starts"]["val"]]
    assert len(ds) == len(starts) == 7  # the peers' draw: 5 % of the 159 candidates hold 7 val starts
    for index, s in enumerate(starts):
        assert ds.window_location(index) == (0, s - M + 1)
        np.testing.assert_allclose(ds[index]["history"][-1].numpy(), centered(x)[s], atol=1e-5)
        np.testing.assert_allclose(ds[index]["target"][0].numpy(), centered(x)[s + 1], atol=1e-5)


def test_dropped_frames_split_segments(tmp_path):
    x = random_walk(60, seed=13)
    x[30] = np.nan
    path = write_traj(tmp_path / "t.nc", x)
    _preprocess(tmp_path / "ds", path, "--drop-nonfinite", "data.split_fractions=[1,0,0]", "data.frames_per_shard=25")
    ds = WindowDataset(tmp_path / "ds", "train", M, H)
    assert [(s.frame_start, s.length) for s in ds.segments] == [(0, 30), (31, 29)]
    assert len(ds) == (30 - 7 + 1) + (29 - 7 + 1)
    for index in range(len(ds)):
        _, first = ds.window_location(index)
        assert not first <= 30 < first + M + H
        np.testing.assert_allclose(ds[index]["history"].numpy(), centered(x)[first:first + M], atol=1e-5)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_shares_are_disjoint_equal_and_deterministic(world, drop_last):
    data = list(range(47))
    shares = [list(DistributedWindowSampler(data, r, world, seed=5, drop_last=drop_last)) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    assert len(shares[0]) == (47 // world if drop_last else -(-47 // world))
    if drop_last:
        flat = [i for s in shares for i in s]
        assert len(set(flat)) == len(flat)
    one_rank = list(DistributedWindowSampler(data, 0, 1, seed=5))
    interleaved = [shares[r][k] for k in range(len(shares[0])) for r in range(world)]
    assert interleaved[:len(one_rank)] == one_rank[:len(interleaved)]  # global order independent of world size
    assert shares == [list(DistributedWindowSampler(data, r, world, seed=5, drop_last=drop_last))
                      for r in range(world)]


def test_sampler_epochs_and_resume_mid_epoch():
    data = list(range(40))
    sampler = DistributedWindowSampler(data, 1, 2, seed=0)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(4)
    assert list(sampler) != full
    sampler.set_epoch(3)
    it = iter(sampler)
    head = [next(it) for _ in range(7)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "position": 7}
    resumed = DistributedWindowSampler(data, 1, 2, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(3)  # a trainer calls this again at the start of the resumed epoch
    assert head + list(resumed) == full
    assert list(resumed) == full  # the next pass over the epoch starts from its beginning
    assert DistributedWindowSampler(data, 0, 2, seed=0, shuffle=False).state_dict(consumed=4)["position"] == 4


def _manifest_with(out, tmp_path, edit, link_shards=False):
    broken = tmp_path / "broken"
    broken.mkdir()
    if link_shards:
        (broken / "shards").symlink_to(out / "shards")
    else:
        shutil.copytree(out / "shards", broken / "shards")
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest, broken)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return broken


@pytest.mark.parametrize("edit, fragment", [
    (lambda m, d: m["shards"][0].update(file="/etc/passwd"), "leaves the dataset directory"),
    (lambda m, d: m["shards"][0].update(file="../ds/shards/shard-00000.nc"), "leaves the dataset directory"),
    (lambda m, d: m.update(schema_version=99), "schema version 99"),
    (lambda m, d: m.pop("statistics"), "missing keys: statistics"),
    (lambda m, d: m["shards"][0].update(size_bytes=1), "differs from the manifest"),
])
def test_read_manifest_rejects_bad_manifests(dataset, tmp_path, edit, fragment):
    out, _ = dataset
    broken = _manifest_with(out, tmp_path, edit)
    with pytest.raises(UserError, match=fragment):
        read_manifest(broken)


def test_read_manifest_rejects_symlinks_out_and_non_json(dataset, tmp_path):
    out, _ = dataset
    broken = _manifest_with(out, tmp_path, lambda m, d: None, link_shards=True)  # shards/ leads elsewhere
    with pytest.raises(UserError, match="resolves outside the dataset directory"):
        read_manifest(broken)
    (broken / "manifest.json").write_bytes(pickle.dumps({"schema_version": 1}))
    with pytest.raises(UserError, match="invalid JSON|cannot read"):
        read_manifest(broken)
    with pytest.raises(UserError, match="no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(UserError, match="unknown split"):
        WindowDataset(out, "training", M, H)
    assert os.path.exists(out / "manifest.json")


# ------------------------------------------------------------------------------------------ window contract
def test_the_manifest_records_the_windows_and_refuses_other_ones(dataset):
    from asteroid_hpc.data.manifest import window_contract

    out, _ = dataset
    contract = window_contract(read_manifest(out), out)
    assert (contract.history_frames, contract.horizon_frames, contract.frame_stride, contract.split) == \
        (M, H, 1, "chronological")
    contract.check(M, H, 1, "chronological")
    for asked, message in (((M + 1, H, 1, "chronological"), f"model.history_frames={M} but the config asks for "
                                                             f"model.history_frames={M + 1}"),
                           ((M, H - 1, 1, "chronological"), f"data.horizon_frames={H} but the config asks for "
                                                             f"data.horizon_frames={H - 1}"),
                           ((M, H, 2, "chronological"), "data.frame_stride=1 but the config asks for "
                                                        "data.frame_stride=2"),
                           ((M, H, 1, "random_start"), "data.split=chronological but the config asks for "
                                                       "data.split=random_start")):
        with pytest.raises(UserError) as error:
            contract.check(*asked)
        assert str(error.value).startswith(f"{out / 'manifest.json'}: the dataset was preprocessed with ")
        assert message in str(error.value) and "\n" not in str(error.value)
    # the dataset's own windows by default
    default, explicit = WindowDataset(out, "train"), WindowDataset(out, "train", M, H)
    assert (default.history_frames, default.horizon_frames, len(default)) == (M, H, len(explicit))


def test_a_manifest_without_window_sizes_leaves_them_to_the_config(dataset, tmp_path, caplog):
    from asteroid_hpc.data.manifest import window_contract

    out, _ = dataset
    bare = _manifest_with(out, tmp_path, lambda m, d: [m["split"].pop(k) for k in ("history_frames", "horizon_frames")])
    contract = window_contract(read_manifest(bare), bare)
    assert contract.history_frames is None and contract.horizon_frames is None
    contract.check(M + 2, H + 2, 1, "chronological")  # nothing recorded: nothing to disagree with
    assert "records no model.history_frames" in caplog.text
    with pytest.raises(UserError, match="records no window sizes"):
        WindowDataset(bare, "train")
    assert len(WindowDataset(bare, "train", M + 2, H + 2)) > 0
