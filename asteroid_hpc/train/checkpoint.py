"""Checkpoints in step-named folders that count only once a completion marker exists.

Layout of ``run_dir/checkpoints``::

    step_000300/            DeepSpeed's files (every rank writes its shard)
        client_state.json   step, epoch, sampler position, config, versions (rank 0)
        rng_rank<r>.json    python / numpy / torch RNG states of rank r
        COMPLETE            written by rank 0 after a barrier: every rank has finished
    latest                  name of the newest complete folder (atomic rename; DeepSpeed reads it too)
    best.json               {"tag", "step", "val_mse"} of the best validation so far

Our own state is JSON, never pickle. DeepSpeed's own ``*.pt`` files are pickles that DeepSpeed reads with
``torch.load(weights_only=False)`` (hard-coded in its checkpoint engine), so before DeepSpeed (or export)
touches a folder, :func:`check_pickles_safe` opens every ``*.pt`` in it with torch's restricted
``weights_only`` unpickler (memory-mapped: no tensor data is read), which allows tensors, containers and
the few DeepSpeed classes named in ``DEEPSPEED_SAFE_GLOBALS`` and refuses anything else (e.g. a pickle
that would run code).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from ..atomic import write_json_atomic, write_text_atomic
from ..config.schema import LEGACY_REFERENCE_KEY
from ..logs import get_logger
from ..errors import UserError, user_error

log = get_logger(__name__)

COMPLETE = "COMPLETE"
LATEST = "latest"
BEST = "best.json"
CLIENT_STATE = "client_state.json"
TAG_PATTERN = re.compile(r"^step_(\d{6,})$")


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def step_of(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise ValueError(f"not a checkpoint tag: {tag!r}")
    return int(match.group(1))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise user_error(path, "unreadable checkpoint state (not UTF-8 JSON text)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise user_error(path, f"unreadable checkpoint state ({exc})") from None


# ----------------------------------------------------------------------------------- DeepSpeed pickles
# Classes that DeepSpeed's ZeRO optimizer states hold besides tensors (found with
# torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 1-3 checkpoints of deepspeed 0.19).
DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
)


def _deepspeed_safe_globals() -> list:
    import importlib

    found = []
    for module, name in DEEPSPEED_SAFE_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return found


def safe_torch_load(path: Path):
    """``torch.load`` with the restricted ``weights_only`` unpickler (DeepSpeed's plain classes allowed);
    a pickle that needs anything else, or a damaged file, is a UserError naming the file."""
    import pickle

    import torch

    if not _is_zip(path):  # DeepSpeed always writes torch's zip format; anything else is a bare pickle
        raise user_error(path, "not a torch zip checkpoint (a bare pickle or a damaged file): refusing to load it")
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        what = f"it needs {', '.join(unsafe)}" if unsafe else str(exc).splitlines()[0]
        raise user_error(path, f"refusing to unpickle: not a plain tensor checkpoint ({what})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise user_error(path, f"damaged checkpoint file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None


def _is_zip(path: Path) -> bool:
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def check_pickles_safe(folder: Path) -> None:
    """Open every ``*.pt`` in a checkpoint folder with :func:`safe_torch_load` (refuse unsafe or damaged ones)."""
    for path in sorted(Path(folder).glob("*.pt")):
        safe_torch_load(path)


# ----------------------------------------------------------------------------------- RNG states as JSON
def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) generator states, JSON-serialisable."""
    import numpy as np
    import torch

    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))

    def tensor(blob: str):
        return torch.frombuffer(bytearray(base64.b64decode(blob)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder marker first, so that a kill halfway leaves no COMPLETE folder with files missing."""
    (Path(path) / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------- the manager
class CheckpointManager:
    """Save, find, load and prune checkpoints under ``directory`` (``run_dir/checkpoints``).

    ``barrier`` synchronises all ranks (``torch.distributed.barrier`` in training). Every rank calls
    :meth:`save`; only rank 0 writes the marker, the pointers and deletes old folders.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int, rank: int = 0,
                 barrier: Callable[[], None] = lambda: None):
        if keep_last < 2:
            raise ValueError("keep_last must be >= 2")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.rank = rank
        self.barrier = barrier

    # -- queries
    def path_of(self, step: int) -> Path:
        return self.directory / tag_for(step)

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (Path(path) / COMPLETE).is_file()

    def complete_steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        steps = [step_of(p.name) for p in self.directory.iterdir()
                 if p.is_dir() and TAG_PATTERN.match(p.name) and self.is_complete(p)]
        return sorted(steps)

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint: the ``latest`` pointer if it names a complete one, else a scan."""
        pointer = self.directory / LATEST
        if pointer.is_file():
            candidate = self.directory / pointer.read_text().strip()
            if TAG_PATTERN.match(candidate.name) and self.is_complete(candidate):
                newer = [s for s in self.complete_steps() if s > step_of(candidate.name)]
                if not newer:
                    return candidate
        steps = self.complete_steps()
        return self.path_of(steps[-1]) if steps else None

    def best(self) -> Optional[dict]:
        path = self.directory / BEST
        return read_json(path) if path.is_file() else None

    # -- save
    def save(self, engine, step: int, client_state: dict) -> Path:
        """Save ``engine`` at ``step`` on every rank; returns the folder once it is complete."""
        path = self.path_of(step)
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            if path.exists():  # an unfinished attempt (or a re-save of this step): start it afresh
                remove_checkpoint(path)
        self.barrier()
        engine.save_checkpoint(str(self.directory), tag=path.name, client_state={}, save_latest=False)
        write_json_atomic(path / f"rng_rank{self.rank}.json", capture_rng_state())
        if self.rank == 0:
            write_json_atomic(path / CLIENT_STATE, {**client_state, "step": step})
        self.barrier()  # every rank's shard is on disk
        if self.rank == 0:
            write_text_atomic(path / COMPLETE, f"{step}\n")
            write_text_atomic(self.directory / LATEST, path.name)
            self.prune()
        log.info("checkpoint %s complete", path)
        return path

    def set_best(self, step: int, val_mse: float) -> None:
        if self.rank == 0:
            write_json_atomic(self.directory / BEST, {"tag": tag_for(step), "step": step, "val_mse": val_mse})

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete folders and the best; delete older ones and stale attempts."""
        complete = self.complete_steps()
        if not complete:
            return
        keep = set(complete[-self.keep_last:])
        best = self.best()
        if best is not None:
            keep.add(int(best["step"]))
        newest = complete[-1]
        for p in self.directory.iterdir():
            if not (p.is_dir() and TAG_PATTERN.match(p.name)):
                continue
            step = step_of(p.name)
            stale_attempt = not self.is_complete(p) and step < newest
            if (self.is_complete(p) and step not in keep) or stale_attempt:
                remove_checkpoint(p)

    # -- load
    def load(self, engine, path: Path, strict: bool = True) -> dict:
        """Load ``path`` into ``engine`` (all ranks), restore this rank's RNG; returns the client state.

        ``strict=False`` accepts a module state without some of the module's entries (older checkpoints)."""
        path = Path(path)
        client_state = read_json(path / CLIENT_STATE)
        check_pickles_safe(path)  # DeepSpeed itself unpickles without restrictions
        loaded, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=strict)
        if loaded is None:
            raise user_error(path, "DeepSpeed could not load this checkpoint")
        rng_file = path / f"rng_rank{self.rank}.json"
        if rng_file.is_file():
            restore_rng_state(read_json(rng_file))
        else:
            log.warning("%s: no RNG state for rank %d; continuing with fresh generators", path, self.rank)
        return client_state


def resolve_resume(resume: str, manager: CheckpointManager) -> Optional[Path]:
    """``auto`` → the newest complete checkpoint or None; ``never`` → None; else a path to load.

    A path may name a step folder, a ``checkpoints`` folder or a run folder (then its newest checkpoint).
    """
    if resume == "never":
        return None
    if resume == "auto":
        return manager.latest()
    path = Path(resume)
    if not path.exists():
        raise user_error(path, "checkpoint to resume from does not exist")
    if TAG_PATTERN.match(path.name):
        if not CheckpointManager.is_complete(path):
            raise user_error(path, f"checkpoint is incomplete (no {COMPLETE} marker): its save was interrupted")
        return path
    for directory in (path / "checkpoints", path):
        found = CheckpointManager(directory, keep_last=2).latest()
        if found is not None:
            return found
    raise user_error(path, "no complete checkpoint found here")


def check_one_line(manager: CheckpointManager, resume_from: Optional[Path]) -> None:
    """A run directory's checkpoints are one line of training: continue only from its newest one.

    Starting afresh, or from an older or a foreign checkpoint, in a directory that holds checkpoints
    would mix two runs (and pruning would delete the new one), so it is refused.
    """
    steps = manager.complete_steps()
    if not steps:
        return
    newest = manager.path_of(steps[-1])
    if resume_from is not None and Path(resume_from).resolve() == newest.resolve():
        return
    what = "start afresh" if resume_from is None else f"continue from {resume_from}"
    raise UserError(f"{manager.directory}: holds checkpoints up to step {steps[-1]}; cannot {what} there "
                    "(use a new train.run_dir, or --resume auto to continue the newest)")


def check_compatible(path: Path, client_state: dict, model_config: dict, world_size: int, zero_stage: int) -> None:
    """Refuse a checkpoint whose model shape (or ZeRO partitioning) differs from this run's."""
    saved = dict(client_state.get("config", {}).get("model", {}))
    saved.pop(LEGACY_REFERENCE_KEY, None)  # older checkpoints: derived data, checked by the trainer
    differing = sorted(key for key in set(saved) | set(model_config) if saved.get(key) != model_config.get(key))
    if differing:
        changes = ", ".join(f"model.{k} {saved.get(k)!r} -> {model_config.get(k)!r}" for k in differing)
        raise UserError(f"{path}: cannot resume, the model config differs from the checkpoint's ({changes}); "
                        "use --resume never or a new train.run_dir")
    saved_world, saved_stage = client_state.get("world_size"), client_state.get("zero_stage")
    if saved_stage != zero_stage:
        raise UserError(f"{path}: cannot resume, train.zero_stage was {saved_stage} and is now {zero_stage}")
    if zero_stage > 0 and saved_world != world_size:
        raise UserError(f"{path}: cannot resume a ZeRO-{zero_stage} checkpoint of {saved_world} ranks on "
                        f"{world_size} ranks; run with {saved_world} ranks, or `asteroid-hpc export` it")
