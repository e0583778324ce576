"""The preprocessing plan: which input frames go to which shard and split. Pure, cheap (headers only).

Frame numbering: after the frame stride, frame ``k`` of a source is its raw frame ``offset + k * stride``;
all frame ranges in the plan and the manifest use this strided numbering. Each source is its own time
series ("segment"): no shard, split range or window ever spans two sources. With ``data.stride_phases = P``
every input file gives P sources, its subsamplings at offsets 0, stride/P, 2·stride/P, … (P times the
long-stride windows one trajectory yields). With ``data.frames = [start, stop]`` only raw frames
``start..stop-1`` of each input are read: strided frame 0 is raw frame ``start`` (+ the phase offset).

Training frames: every statistic or structure that training derives from the data (normalisation
statistics, the reference structure) comes from the plan's ``training`` ranges only, per source: the train
range (chronological), whole train inputs (by_file), or the frames of the kept train starts' windows
(random_start; ``data.random_start_draw=peers``: the peers' starts, drawn on each input's own frames). A
frame that only validation or test windows hold never enters them; with random_start a train window may
share frames with a val/test window (the peers' draw allows it), and such frames count as training frames,
since the model trains on them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..logs import get_logger
from ..errors import UserError, user_error
from .cells import first_cell
from .manifest import SCHEMA_VERSION
from .readers import TrajectoryReader
from .selection import select_atoms
from .splits import by_file_split, chronological_split, random_start_split_plan
from .wrapped import check_bonds_whole

log = get_logger(__name__)


@dataclass
class Source:
    index: int
    path: str  # absolute
    format: str
    size_bytes: int
    mtime_ns: int
    n_frames_raw: int
    n_frames: int  # after the stride
    n_atoms: int
    timestep_ps: float | None  # of the raw frames, from the file
    frame_offset: int = 0  # raw frame of strided frame 0 (data.frames start + data.stride_phases offset)
    frames_raw: list[int] | None = None  # [start, stop): the input's raw frames read (data.frames)
    cell: list[float] | None = None  # unit cell of the first frame read (a, b, c Å, angles °); None: not periodic
    has_velocities: bool = False


@dataclass
class Shard:
    index: int
    file: str  # relative to the dataset directory
    source: int
    split: str  # train / val / test, or "all" for random-start splits
    frame_start: int  # strided source frames [frame_start, frame_stop)
    frame_stop: int


@dataclass
class Plan:
    key: str  # identifies inputs + options: a re-run with the same key may reuse complete shards
    sources: list[Source]
    shards: list[Shard]
    atom_indices: list[int]
    atomic_numbers: list[int]  # of the selected atoms
    frame_stride: int
    timestep_fs: float  # between frames of the dataset (after the stride)
    split: dict  # method and its parameters (chronological ranges or random-start draws)
    # the frames training statistics and the reference structure come from: {"frames": "train" or
    # "train windows", "count": n, "ranges": {source index (str): [[start, stop), ...] strided, sorted}}
    training: dict
    topology: str | None = None  # absolute path of --topology, recorded so that later commands find it
    unwrap: bool = False  # periodic inputs with data.unwrap: the shards hold unwrapped coordinates

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def periodic(self) -> bool:
        """The inputs have unit cells (all or none of them: :func:`inspect_sources`); the shards store them."""
        return any(s.cell is not None for s in self.sources)

    @property
    def velocities(self) -> bool:
        """Every input has velocities: the shards store them."""
        return all(s.has_velocities for s in self.sources)

    def raw_frame(self, source: int, frame: int) -> int:
        """The input file's frame number of strided frame ``frame`` of source ``source``."""
        return self.sources[source].frame_offset + frame * self.frame_stride


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named or matched by glob patterns, in order, without duplicates."""
    paths: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise user_error(pattern, "no file matches this pattern")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(pattern))
    seen, unique = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise UserError("preprocess: no input files given")
    return unique


def topology_numbers(path: str) -> np.ndarray:
    """Atomic numbers of a topology file (:func:`asteroid_hpc.data.topology.read_topology`)."""
    from .topology import read_topology

    return read_topology(path).atomic_numbers


def check_elements(numbers: np.ndarray, where, lowest: int = 1) -> None:
    """Refuse an atomic number outside ``lowest``-118, naming the first such atom (``lowest`` 0: a topology's
    virtual sites, which :mod:`~asteroid_hpc.data.topology` numbers 0, "no element")."""
    bad = np.flatnonzero((numbers < lowest) | (numbers > 118))
    if len(bad):
        raise user_error(where, f"atomic number {int(numbers[bad[0]])} of atom {int(bad[0])} is not an element "
                                f"({lowest}-118){f' ({len(bad) - 1} more such atoms)' if len(bad) > 1 else ''}")


def _raw_range(path: Path, n_frames: int, frames: list | None) -> tuple[int, int]:
    """[start, stop) of the input's raw frames to read (``data.frames``; None: all)."""
    if frames is None:
        return 0, n_frames
    start, stop = frames[0], n_frames if frames[1] is None else frames[1]
    if start >= n_frames:
        raise user_error(path, f"{n_frames} frames, but data.frames={list(frames)} starts at frame {start}")
    if stop > n_frames:
        raise user_error(path, f"{n_frames} frames, but data.frames={list(frames)} stops at frame {stop} "
                               "(null as stop: to the end)")
    return start, stop


def inspect_sources(paths: list[Path], stride: int, topology: str | None,
                    phases: int = 1, frames: list | None = None,
                    check_time: bool = True) -> tuple[list[Source], np.ndarray]:
    """Open every input's header, check that they agree, and return its ``phases`` subsamplings of the
    raw frames ``frames`` ([start, stop), None: all) as sources, with the atomic numbers."""
    from .topology import read_topology

    sources: list[Source] = []
    bonds = None  # the topology's, to refuse a file without a cell whose molecules are cut by a box face
    numbers = None
    if topology:
        read = read_topology(topology)
        numbers, bonds = read.atomic_numbers, read.bonds
    first: Path | None = None
    for path in paths:
        with TrajectoryReader(path, n_atoms=None if numbers is None else len(numbers),
                              check_time=check_time) as reader:
            if reader.n_frames == 0:
                raise user_error(path, "empty trajectory (0 frames)")
            if reader.n_atoms == 0:
                raise user_error(path, "trajectory has 0 atoms")
            if sources and reader.n_atoms != sources[0].n_atoms:
                raise user_error(path, f"{reader.n_atoms} atoms, but {first} has {sources[0].n_atoms}")
            z = reader.atomic_numbers
            if z is not None and numbers is not None and not np.array_equal(z, numbers):
                raise user_error(path, f"atomic numbers differ from those of {topology or first}")
            if numbers is None:
                numbers = z
            if numbers is not None and len(numbers) != reader.n_atoms:
                raise user_error(topology or path, f"{len(numbers)} atomic numbers for {reader.n_atoms} atoms")
            stat = path.stat()
            start, stop = _raw_range(path, reader.n_frames, frames)
            first_frame = reader.read(start, start + 1)
            cell = first_cell(first_frame.cell, start, path)
            if cell is None:
                check_bonds_whole(path, first_frame.coordinates[0], bonds, start)
            if sources and (cell is None) != (sources[0].cell is None):
                raise user_error(path, f"{'has a unit cell' if cell else 'has no unit cell'} (first frame read), but "
                                       f"{first} {'has none' if cell else 'has one'}: periodic and open inputs "
                                       "cannot be mixed")
            for offset in range(start, start + stride, stride // phases):
                if offset >= stop:
                    raise user_error(path, f"{stop - start} frames: too few for data.stride_phases={phases} "
                                           f"(phase offset {offset - start} frames)")
                sources.append(Source(len(sources), str(path.resolve()), reader.format, stat.st_size,
                                      stat.st_mtime_ns, reader.n_frames, -(-(stop - offset) // stride),
                                      reader.n_atoms, reader.timestep_ps, offset, [start, stop], cell,
                                      bool(reader.has_velocities)))
            first = first or path
    if numbers is None:
        raise user_error(paths[0], "no atomic numbers in the input: pass --topology FILE (.prmtop/.parm7, "
                                   ".tpr/.gro, .psf, .pdb/.cif, LAMMPS data, ...)")
    check_elements(np.asarray(numbers), topology or paths[0], lowest=0 if topology else 1)
    return sources, np.asarray(numbers, dtype=np.int64)


def dataset_timestep_fs(sources: list[Source], stride: int, override_fs: float | None) -> float:
    """The time between dataset frames: the inputs' frame spacing (or ``data.timestep_fs``) × stride."""
    if override_fs is not None:
        return override_fs * stride
    known = [(s, s.timestep_ps) for s in sources if s.timestep_ps is not None]
    if len(known) < len(sources):
        missing = next(s for s in sources if s.timestep_ps is None)
        raise user_error(missing.path, "no time axis to take the time step from: set data.timestep_fs=<fs per "
                                       "input frame>")
    ref_source, ref = known[0]
    for source, dt in known:
        if dt <= 0:
            raise user_error(source.path, "time does not increase (non-monotonic time)")
        if abs(dt - ref) > 1e-4 * abs(ref):
            raise user_error(source.path, f"time step {dt * 1000:g} fs differs from {ref * 1000:g} fs of "
                                          f"{ref_source.path}; set data.timestep_fs to override")
    return ref * 1000.0 * stride


def _plan_key(sources: list[Source], data, topology: str | None, history: int) -> str:
    """What decides the dataset's content, hashed: a re-run with the same key resumes or reuses it."""
    ignored = ("dataset", "num_workers", "window_stride", "chunk_frames")
    identity = {
        "schema_version": SCHEMA_VERSION,
        "inputs": [(s.path, s.size_bytes, s.mtime_ns) for s in sources],
        "topology": topology and str(Path(topology).resolve()),
        # data.frames unset, and data.unwrap of open inputs (no effect), leave the keys of datasets made
        # before they existed unchanged
        "data": {k: v for k, v in vars(data).items() if k not in ignored and not (k == "frames" and v is None)
                 and not (k == "unwrap" and all(s.cell is None for s in sources))
                 and not (k == "random_start_draw" and v == "per_source")},
        "history_frames": history,
    }
    if data.split == "random_start":  # statistics from the train windows (once from all frames): a new content
        identity["statistics"] = "train windows"
    if any(s.cell is not None or s.has_velocities for s in sources):  # shards store them: a new content
        identity["stored"] = "cells, velocities"
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def make_plan(inputs: list[str], cfg, topology: str | None = None) -> Plan:
    """Inspect the inputs and lay out shards and splits for ``cfg`` (an AsteroidConfig)."""
    data = cfg.data
    paths = expand_inputs(inputs)
    stride = data.frame_stride
    sources, numbers = inspect_sources(paths, stride, topology, data.stride_phases, data.frames,
                                       data.timestep_fs is None)
    atom_indices = select_atoms(data.atom_selection, numbers, str(paths[0]), topology)
    timestep_fs = dataset_timestep_fs(sources, stride, data.timestep_fs)
    history, horizon = cfg.model.history_frames, data.horizon_frames
    make_split = {"chronological": chronological_split, "by_file": by_file_split}.get(data.split,
                                                                                     random_start_split_plan)
    split, parts, training_ranges = make_split(sources, data, history, horizon)
    shards: list[Shard] = []
    for source, name, start, stop in parts:  # blocks of data.frames_per_shard frames, numbered in order
        for a in range(start, stop, data.frames_per_shard):
            idx = len(shards)
            shards.append(Shard(idx, f"shards/shard-{idx:05d}.nc", source.index, name, a,
                                min(stop, a + data.frames_per_shard)))
    training = {"frames": "train windows" if data.split == "random_start" else "train",
                "count": sum(b - a for ranges in training_ranges.values() for a, b in ranges),
                "ranges": training_ranges}
    return Plan(_plan_key(sources, data, topology, history), sources, shards, atom_indices,
                [int(numbers[i]) for i in atom_indices], stride, timestep_fs, split, training,
                topology and str(Path(topology).resolve()), data.unwrap and any(s.cell is not None for s in sources))
