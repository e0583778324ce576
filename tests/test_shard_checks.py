"""Shard checksums on open (issue #17 item 5): a shard changed after preprocess wrote it is refused, naming
the shard. Fast path: only shards newer than the manifest are hashed; --verify (ASTEROID_VERIFY_SHARDS=1)
hashes every one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import assert_user_error
from tests.support.data import preprocess_walk_dataset

from asteroid_hpc.data.manifest import VERIFY_ENV, read_manifest
from asteroid_hpc.errors import UserError


@pytest.fixture()
def dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(VERIFY_ENV, "0")  # restored after the test, whatever --verify set in-process
    return preprocess_walk_dataset(tmp_path)


def _flip_a_byte(shard: Path, keep_mtime: bool) -> None:
    """Change one coordinate byte near the end (the file stays a readable NetCDF of the same size)."""
    stat = shard.stat()
    raw = bytearray(shard.read_bytes())
    raw[-40] ^= 0xFF
    shard.write_bytes(bytes(raw))
    if keep_mtime:
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _evaluate(dataset: Path, capsys, *extra) -> subprocess.CompletedProcess:
    from asteroid_hpc.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "none", str(dataset), "-o", str(dataset.parent / "eval"), "--protocol", "window", *extra])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], exit_info.value.code, captured.out, captured.err)


def test_a_shard_changed_after_the_manifest_is_refused_by_name(dataset, capsys):
    _flip_a_byte(dataset / "shards" / "shard-00001.nc", keep_mtime=False)
    proc = _evaluate(dataset, capsys)
    assert_user_error(proc, "shard-00001.nc", "sha256", "differs from the manifest's")
    assert not (dataset.parent / "eval").exists()


def test_the_fast_path_trusts_size_and_mtime_and_verify_hashes_every_shard(dataset, capsys, monkeypatch):
    _flip_a_byte(dataset / "shards" / "shard-00002.nc", keep_mtime=True)  # invisible to size + mtime
    read_manifest(dataset)  # fast path: not hashed
    monkeypatch.setenv(VERIFY_ENV, "1")
    with pytest.raises(UserError, match="shard-00002.nc: sha256"):
        read_manifest(dataset)
    monkeypatch.setenv(VERIFY_ENV, "0")
    proc = _evaluate(dataset, capsys, "--verify")
    assert_user_error(proc, "shard-00002.nc", "sha256")


def test_an_untouched_dataset_passes_full_verification(dataset, capsys):
    proc = _evaluate(dataset, capsys, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert (dataset.parent / "eval" / "results.md").is_file()


def test_a_preprocess_rerun_with_verify_hashes_the_dataset_it_finds(dataset, capsys):
    from asteroid_hpc.cli.main import main

    _flip_a_byte(dataset / "shards" / "shard-00000.nc", keep_mtime=True)
    argv = ["preprocess", "--no-progress", str(dataset.parent / "walk.nc"), "-o", str(dataset),
            "data.frames_per_shard=100"]
    for extra, code in (([], 0), (["--verify"], 2)):  # the fast path finds it complete; --verify does not
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *extra])
        captured = capsys.readouterr()
        proc = subprocess.CompletedProcess(argv, exit_info.value.code, captured.out, captured.err)
        assert proc.returncode == code, proc.stderr
    assert_user_error(proc, "shard-00000.nc", "sha256")
