"""A full output filesystem is one line, exit 2, with nothing half-written left (issue #17 item 5), and
``preprocess --overwrite`` deletes only what preprocess wrote, never a user's other files."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from tests.support.cli import assert_user_error
from tests.support.data import random_walk, write_traj


def _preprocess(argv: list, capsys) -> subprocess.CompletedProcess:
    from asteroid_hpc.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", "--no-progress", *map(str, argv), "data.frames_per_shard=100"])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_info.value.code, captured.out, captured.err)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _left_behind(out):
    return sorted(p.name for p in out.rglob("*")) if out.exists() else []


def test_a_full_disk_while_writing_a_shard_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from asteroid_hpc.data.amber import AmberWriter

    traj = write_traj(tmp_path / "t.nc", random_walk(300))
    calls = {"n": 0}
    append = AmberWriter.append

    def append_until_full(self, *args, **kwargs):  # the second shard finds the disk full
        calls["n"] += 1
        if calls["n"] > 1:
            _no_space()
        return append(self, *args, **kwargs)

    monkeypatch.setattr(AmberWriter, "append", append_until_full)
    proc = _preprocess([traj, "-o", tmp_path / "out"], capsys)
    assert_user_error(proc, "out", "no space left to write shards/shard-00001.nc")
    assert _left_behind(tmp_path / "out") == []


def test_a_full_disk_when_writing_the_manifest_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import asteroid_hpc.data.preprocess as preprocess
    from asteroid_hpc.atomic import write_json_atomic

    traj = write_traj(tmp_path / "t.nc", random_walk(300))
    monkeypatch.setattr(preprocess, "write_json_atomic",
                        lambda path, *a, **k: _no_space() if path.name == "manifest.json" else
                        write_json_atomic(path, *a, **k))

    proc = _preprocess([traj, "-o", tmp_path / "out"], capsys)
    assert_user_error(proc, "manifest.json", "no space left")
    assert _left_behind(tmp_path / "out") == []


def test_a_full_disk_elsewhere_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import asteroid_hpc.data.preprocess as preprocess

    monkeypatch.setattr(preprocess, "run_preprocess", _no_space)
    proc = _preprocess([write_traj(tmp_path / "t.nc", random_walk(300)), "-o", tmp_path / "out"], capsys)
    assert_user_error(proc, "no space left on the device")


def test_overwrite_deletes_only_what_preprocess_wrote(tmp_path, capsys):
    out = tmp_path / "out"
    first = write_traj(tmp_path / "a.nc", random_walk(300))
    assert _preprocess([first, "-o", out], capsys).returncode == 0
    mine = {out / "README.txt": "my notes", out / "shards" / "notes.txt": "keep me",
            out / "shards" / "shard-00000.nc.bak": "my backup"}
    for path, text in mine.items():
        path.write_text(text)
    second = write_traj(tmp_path / "b.nc", random_walk(300, seed=1))
    proc = _preprocess([second, "-o", out], capsys)
    assert_user_error(proc, "holds a different dataset", "--overwrite")
    assert _preprocess([second, "-o", out, "--overwrite"], capsys).returncode == 0, capsys.readouterr().err
    for path, text in mine.items():
        assert path.read_text() == text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"][0]["path"].endswith("b.nc")
    listed = {out / s["file"] for s in manifest["shards"]}
    on_disk = {p for p in (out / "shards").glob("shard-*.nc")}
    assert on_disk == listed  # the first dataset's shards are gone, the new ones all there


def test_a_really_full_filesystem_is_one_line_and_no_crash(tmp_path):
    """A 200 kB tmpfs (needs root and mount; skipped otherwise): netCDF's own ENOSPC, not a monkeypatch.
    Was a traceback and a segfault at exit (the dataset whose close failed was freed)."""
    import shutil

    from tests.support.cli import run_cli

    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or \
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(full)],
                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        traj = write_traj(tmp_path / "big.nc", random_walk(3000))  # 300 kB of shards: more than fits
        proc = run_cli("preprocess", "--no-progress", traj, "-o", full / "ds", "data.frames_per_shard=500")
        assert_user_error(proc, "ds", "no space left to write shards/shard-")
        assert _left_behind(full) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)
