"""The dataset manifest (``manifest.json``): JSON only, written last, validated on read.

A dataset directory counts as data only when its manifest exists; every path in the manifest is relative
to the directory and must stay inside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, user_error
from ..logs import get_logger

log = get_logger(__name__)

MANIFEST = "manifest.json"
SCHEMA_VERSION = 2  # 2: sources carry blake3 (was sha256); statistics.sampled_every_frames
FORMAT = "asteroid-hpc-dataset"
_REQUIRED = ("schema_version", "n_atoms", "atomic_numbers", "timestep_fs", "frame_stride", "shards", "split",
             "sources", "statistics")


def inside(directory: Path, relative: str, where: Path) -> Path:
    """``directory / relative``, refusing absolute paths, ``..`` and symlinks that lead outside."""
    if not isinstance(relative, str) or not relative:
        raise user_error(where, f"invalid file entry {relative!r}")
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise user_error(where, f"file entry {relative!r} leaves the dataset directory")
    path = directory / rel
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise user_error(where, f"file entry {relative!r} resolves outside the dataset directory "
                                f"(to {path.resolve()})")
    return path


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    """Load and validate ``<dataset_dir>/manifest.json`` (schema version, required keys, shard paths)."""
    directory = Path(dataset_dir)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise user_error(directory, "no such dataset directory (run `asteroid-hpc preprocess` first)")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise user_error(directory, f"no {MANIFEST}: not a complete asteroid-hpc dataset") from None
    except OSError as exc:
        raise user_error(path, f"cannot read ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise user_error(path, "invalid JSON: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise user_error(path, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(manifest, dict):
        raise user_error(path, "the manifest must be a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise user_error(path, f"schema version {version!r} is not supported (expected {SCHEMA_VERSION}); "
                               "re-run `asteroid-hpc preprocess`")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise user_error(path, f"missing keys: {', '.join(missing)}")
    if not isinstance(manifest["shards"], list) or not manifest["shards"]:
        raise user_error(path, "no shards")
    for shard in manifest["shards"]:
        if not isinstance(shard, dict) or "file" not in shard:
            raise user_error(path, "a shard entry has no 'file'")
        shard_path = inside(directory, shard["file"], path)
        if not shard_path.is_file():
            raise user_error(shard_path, "shard listed in the manifest is missing")
        if "size_bytes" in shard and shard_path.stat().st_size != shard["size_bytes"]:
            raise user_error(shard_path, f"size {shard_path.stat().st_size} differs from the manifest's "
                                         f"{shard['size_bytes']}")
        _check_digest(shard_path, shard.get("sha256"), path)
    if len(manifest["atomic_numbers"]) != manifest["n_atoms"]:
        raise UserError(f"{path}: {len(manifest['atomic_numbers'])} atomic numbers for {manifest['n_atoms']} atoms")
    return manifest


VERIFY_ENV = "ASTEROID_VERIFY_SHARDS"  # "1": hash every shard on open (the commands' --verify)
_verified: set[tuple[str, int, int]] = set()  # (shard, size, mtime_ns) hashed and found whole in this process


def _check_digest(shard_path: Path, sha256: str | None, manifest_path: Path) -> None:
    """Fast path: a shard no newer than the manifest (written last) is taken as written. A newer one, or
    every one with ``ASTEROID_VERIFY_SHARDS=1`` (--verify), is hashed and must match the manifest's sha256."""
    from ..checksum import file_digest

    stat = shard_path.stat()
    key = (str(shard_path), stat.st_size, stat.st_mtime_ns)
    if sha256 is None or key in _verified:
        return
    if os.environ.get(VERIFY_ENV) != "1" and stat.st_mtime_ns <= manifest_path.stat().st_mtime_ns:
        return
    found = file_digest(shard_path)
    if found != sha256:
        raise user_error(shard_path, f"sha256 {found[:12]}... differs from the manifest's {sha256[:12]}... "
                                     "(the shard changed after preprocess wrote it: re-run preprocess)")
    _verified.add(key)


def box_record(cell: list[float] | None, has_velocities: bool, constant_box: bool) -> dict:
    """What the manifest records of an input's (or the dataset's) box and velocities: ``has_velocities``,
    ``periodic``, ``cell_kind`` (orthorhombic | triclinic | None), ``constant_box`` (None when not periodic)
    and ``first_cell`` ([a, b, c, alpha, beta, gamma] of the first frame read, or None)."""
    from .cells import cell_kind

    periodic = cell is not None
    return {"has_velocities": bool(has_velocities), "periodic": periodic,
            "cell_kind": cell_kind(cell) if periodic else None, "constant_box": bool(constant_box) if periodic else None,
            "first_cell": cell}


@dataclass(frozen=True)
class WindowContract:
    """The windows a dataset was cut for, as its manifest records them (the one source of these facts).

    A chronological split leaves history + horizon frames between splits, and random-start draws keep
    ``history_frames - 1`` frames before and ``horizon_frames`` after each start: windows of other sizes
    would cross splits or shift off the drawn starts.
    """

    history_frames: int | None  # None: not recorded (a manifest not written by preprocess)
    horizon_frames: int | None
    frame_stride: int
    split: str  # "chronological", "random_start" or "by_file"
    path: Path  # the manifest file, for messages

    def check(self, history_frames: int, horizon_frames: int, frame_stride: int, split: str) -> None:
        """Refuse a config that asks for other windows than the dataset was cut for (one line)."""
        for key, asked, recorded in (("model.history_frames", history_frames, self.history_frames),
                                     ("data.horizon_frames", horizon_frames, self.horizon_frames),
                                     ("data.frame_stride", frame_stride, self.frame_stride),
                                     ("data.split", split, self.split)):
            if recorded is None:
                log.warning("%s records no %s: taking the config's %s", self.path, key, asked)
            elif asked != recorded:
                raise user_error(self.path, f"the dataset was preprocessed with {key}={recorded} but the config "
                                            f"asks for {key}={asked}; set {key}={recorded} or re-run preprocess "
                                            "with this config")


def longest_run_frames(manifest: dict, split: str) -> int:
    """The most consecutive (strided) frames of ``split`` in one source: no window can be longer. A random-start
    dataset's shards (split "all") hold the windows of every split."""
    runs: dict[object, list[list[int]]] = {}
    for shard in sorted((s for s in manifest["shards"] if s.get("split") in (split, "all")),
                        key=lambda s: (str(s["source"]), s["frame_start"])):
        source_runs = runs.setdefault(str(shard["source"]), [])
        if source_runs and source_runs[-1][1] == shard["frame_start"]:
            source_runs[-1][1] = shard["frame_stop"]
        else:
            source_runs.append([shard["frame_start"], shard["frame_stop"]])
    return max((b - a for source_runs in runs.values() for a, b in source_runs), default=0)


def check_window_fits(manifest: dict, dataset_dir: str | os.PathLike, split: str, history_frames: int,
                      horizon_frames: int) -> None:
    """Refuse windows longer than the data before anything is allocated for them (one line)."""
    longest = longest_run_frames(manifest, split)
    if history_frames + horizon_frames > longest:
        raise user_error(Path(dataset_dir) / MANIFEST, f"model.history_frames={history_frames} + "
                                                       f"data.horizon_frames={horizon_frames} frames is longer "
                                                       f"than the data: the longest {split} run holds {longest} "
                                                       "frames")


def window_contract(manifest: dict, dataset_dir: str | os.PathLike) -> WindowContract:
    """The window contract of a manifest read by :func:`read_manifest` from ``dataset_dir``.

    Preprocess records the sizes in the ``split`` section (``frame_stride`` beside it) of every schema-2
    manifest; one without them (not written by preprocess) leaves them to the config.
    """
    split = manifest["split"]
    history, horizon = split.get("history_frames"), split.get("horizon_frames")
    return WindowContract(None if history is None else int(history), None if horizon is None else int(horizon),
                          int(manifest["frame_stride"]), str(split.get("method")), Path(dataset_dir) / MANIFEST)


def training_ranges(manifest: dict, dataset_dir: str | os.PathLike) -> dict[str, list[list[int]]]:
    """The training frames of a dataset, per source index (str): sorted [start, stop) ranges of strided
    frames, as preprocess recorded them for the statistics. A dataset made before they were recorded:
    its train shards (chronological, by_file); a random-start one must be preprocessed again (its
    statistics came from all frames)."""
    statistics = manifest["statistics"]
    if "ranges" in statistics:
        return statistics["ranges"]
    if manifest["split"].get("method") == "random_start":
        raise user_error(Path(dataset_dir) / MANIFEST, "records no training frames (its statistics came from all "
                                                       "frames, test frames included): re-run `asteroid-hpc "
                                                       "preprocess`")
    ranges: dict[str, list[list[int]]] = {}
    for shard in manifest["shards"]:
        if shard["split"] == "train":
            ranges.setdefault(str(shard["source"]), []).append([shard["frame_start"], shard["frame_stop"]])
    return {source: sorted(r) for source, r in ranges.items()}
