"""Fault trials: SIGKILL `asteroid-hpc preprocess`, `train` and `ensemble-forecast` at random moments, resume
them, and check (1) that the final output equals an uninterrupted run and (2) that nothing half-written is
ever taken for whole: after every kill, every file that looks complete must validate.

    python tools/fault_trials.py                                   # 10 trials of each, seed 0
    python tools/fault_trials.py --trials 3 --only preprocess,train --seed 7 --workdir /tmp/ft --json ft.json

What "looks complete" and "equal" mean, per command:

- preprocess: ``manifest.json`` (then the whole dataset must equal the reference: manifest except
  ``created_utc``, and every shard's bytes), every ``shards/*.nc`` (byte-identical to the reference shard),
  every shard sidecar (its size and sha256 must match the reference shard).
- train: every ``step_*`` folder with a ``COMPLETE`` marker (client state and RNG JSON parse, the DeepSpeed
  files open with the safe unpickler, and the weights equal the reference checkpoint of that step), and the
  folder ``--resume auto`` would pick. Final: the last checkpoint's weights and every step's loss equal the
  straight run (training resume is exact: 6 steps == 3 + resume + 3).
- ensemble-forecast: every ``members/member_*.nc`` (equal to the reference member's trajectory), every
  ``.done`` marker (its member file exists and is equal), ``COMPLETE`` and the summary (then all members
  equal). Final: every member trajectory identical to the reference.

A trial runs the command, kills its whole process group with SIGKILL at a random moment (half of the kills
uniformly over the reference run's wall time, half uniformly over the work phase counted from the moment
the first output appeared; its length starts at 60 % of the reference time and shrinks to the shortest work
phase observed), scans, and with probability 1/2 resumes and kills once more; then it resumes to the
end and compares. Kill moments that come after the process has exited are counted apart, not as kills; when
that happens to a trial's first run, the run is discarded and redrawn (over at most the observed duration),
so every trial holds at least one kill.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for the test suite's tiny model and dataset (tests/support/)
from tests.support.ensemble import ensemble_model_file, molecule_trajectory  # noqa: E402
from tests.support.tiny import TINY_CONFIG, make_tiny_dataset  # noqa: E402

SUBJECTS = ("preprocess", "train", "ensemble")


# ----------------------------------------------------------------------------------------------- bookkeeping
@dataclass
class Stats:
    subject: str
    trials: int = 0
    kills: int = 0  # SIGKILLs delivered to a running command
    kills_after_first_output: int = 0  # of which the output had already begun to appear
    exited_before_kill: int = 0  # the command finished before its kill moment
    resumes: int = 0  # runs started on the output of a killed run
    mismatches: int = 0  # final outputs different from the uninterrupted run
    invalid_complete_files: int = 0  # files that looked complete after a kill but did not validate
    complete_files_checked: int = 0
    leftover_temporaries: int = 0  # *.tmp-<pid> / *.partial files left in a finished output (harmless)
    leftover_examples: list[str] = field(default_factory=list)
    reference_seconds: float = 0.0
    seconds: float = 0.0
    kill_moments_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return self.mismatches == 0 and self.invalid_complete_files == 0 and not self.problems


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "ASTEROID_DEBUG"):
        env.pop(key, None)
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "asteroid_hpc", *map(str, args)]


def run_to_end(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def run_and_kill(argv: list[str], cwd: Path, delay_s: float, started: Callable[[], bool] | None,
                 timeout: float = 600) -> tuple[bool, float, float]:
    """Start ``argv`` in its own process group and SIGKILL the group ``delay_s`` after launch (or, with
    ``started``, after ``started()`` first holds). Returns (killed while running, seconds since launch,
    seconds since the origin of the delay)."""
    launched = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        origin = launched
        if started is not None:
            while not started() and proc.poll() is None and time.monotonic() - launched < timeout:
                time.sleep(0.01)
            origin = time.monotonic()
        while proc.poll() is None and time.monotonic() - origin < delay_s:
            time.sleep(0.005)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return True, time.monotonic() - launched, time.monotonic() - origin
        return False, time.monotonic() - launched, time.monotonic() - origin
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".partial")]


# ----------------------------------------------------------------------------------------------- subjects
class Subject:
    """One command under trial: how to run it, when its work has started, how to validate its output."""

    name = ""

    def setup(self, root: Path) -> None:
        """Make inputs and the uninterrupted reference output under ``root``."""

    def command(self, out: Path) -> list[str]:
        raise NotImplementedError

    def started(self, out: Path) -> bool:
        raise NotImplementedError

    def scan(self, out: Path) -> tuple[int, list[str]]:
        """After a kill: (complete-looking files checked, problems with them)."""
        raise NotImplementedError

    def compare(self, out: Path) -> list[str]:
        """After the final resume: differences from the reference."""
        raise NotImplementedError


class PreprocessSubject(Subject):
    name = "preprocess"
    FRAMES, ATOMS, FRAMES_PER_SHARD = 120_000, 21, 2_000

    def setup(self, root: Path) -> None:
        import numpy as np

        from asteroid_hpc.data.amber import AmberWriter

        self.root = root
        self.input = root / "input.nc"
        rng = np.random.default_rng(0)
        with AmberWriter(self.input, self.ATOMS, rng.choice([1, 6, 8], self.ATOMS), timestep_ps=0.0005) as writer:
            position = rng.normal(scale=2.0, size=(self.ATOMS, 3))
            for _ in range(self.FRAMES // 10_000):
                steps = rng.normal(scale=0.01, size=(10_000, self.ATOMS, 3))
                chunk = position + np.cumsum(steps, axis=0)
                position = chunk[-1]
                writer.append(chunk.astype(np.float32))
        self.reference = root / "reference"
        began = time.monotonic()
        run_to_end(self.command(self.reference), root)
        self.reference_seconds = time.monotonic() - began
        self.reference_shards = {p.name: sha256(p) for p in (self.reference / "shards").glob("*.nc")}
        self.reference_fingerprint = self.fingerprint(self.reference)

    def command(self, out: Path) -> list[str]:
        return _cli("preprocess", "--no-progress", self.input, "-o", out,
                    f"data.frames_per_shard={self.FRAMES_PER_SHARD}")

    def started(self, out: Path) -> bool:
        return (out / "shards").is_dir()

    @staticmethod
    def fingerprint(dataset: Path) -> dict:
        manifest = json.loads((dataset / "manifest.json").read_text())
        manifest.pop("created_utc")
        return {"manifest": manifest,
                "shards": {p.name: sha256(p) for p in sorted((dataset / "shards").glob("*.nc"))}}

    def scan(self, out: Path) -> tuple[int, list[str]]:
        from asteroid_hpc.data.manifest import read_manifest

        checked, problems = 0, []
        if (out / "manifest.json").exists():
            checked += 1
            try:
                read_manifest(out)
                if self.fingerprint(out) != self.reference_fingerprint:
                    problems.append(f"{out}/manifest.json: dataset differs from the reference")
            except Exception as exc:  # noqa: BLE001 - any failure here is the finding
                problems.append(f"{out}/manifest.json: {type(exc).__name__}: {exc}")
        for shard in sorted((out / "shards").glob("*.nc")) if (out / "shards").is_dir() else []:
            checked += 1
            if self.reference_shards.get(shard.name) != sha256(shard):
                problems.append(f"{shard}: differs from the reference shard (half-written?)")
        for sidecar in sorted((out / "shards").glob("shard-*.json")) if (out / "shards").is_dir() else []:
            checked += 1
            try:
                record = json.loads(sidecar.read_text())["record"]
                if record["sha256"] != self.reference_shards.get(record["file"].split("/")[-1]):
                    problems.append(f"{sidecar}: vouches for a shard that differs from the reference")
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"{sidecar}: unreadable sidecar ({exc})")
        return checked, problems

    def compare(self, out: Path) -> list[str]:
        if not (out / "manifest.json").exists():
            return [f"{out}: no manifest after the final run"]
        return [] if self.fingerprint(out) == self.reference_fingerprint else [f"{out}: dataset differs"]


class TrainSubject(Subject):
    name = "train"
    STEPS = 12

    def setup(self, root: Path) -> None:
        self.root = root
        self.dataset = make_tiny_dataset(root / "data")
        self.reference = root / "reference"
        began = time.monotonic()
        # every checkpoint kept, so that any checkpoint a trial leaves can be compared with the same step
        run_to_end(self.command(self.reference) + ["train.keep_last=1000"], root)
        self.reference_seconds = time.monotonic() - began
        self.reference_losses = train_losses(self.reference)
        assert sorted(self.reference_losses) == list(range(1, self.STEPS + 1)), self.reference_losses

    def command(self, out: Path) -> list[str]:
        return _cli("train", TINY_CONFIG, f"data.dataset={self.dataset}", f"train.run_dir={out}",
                    f"train.max_steps={self.STEPS}", "train.checkpoint_every=1", "train.val_every=3",
                    "--resume", "auto")

    def started(self, out: Path) -> bool:
        return (out / "metrics.jsonl").exists()

    def _check_folder(self, folder: Path) -> list[str]:
        import torch

        from asteroid_hpc.train.checkpoint import CLIENT_STATE, read_json, safe_torch_load, step_of

        problems = []
        try:
            state = read_json(folder / CLIENT_STATE)
            step = step_of(folder.name)
            if state.get("step") != step:
                problems.append(f"{folder}: client state says step {state.get('step')}")
            for rng in folder.glob("rng_rank*.json"):
                read_json(rng)
            module = safe_torch_load(folder / "mp_rank_00_model_states.pt")["module"]
            expected = torch.load(self.reference / "checkpoints" / folder.name / "mp_rank_00_model_states.pt",
                                  map_location="cpu", weights_only=True)["module"]
            differing = [k for k in expected if k not in module or not torch.equal(module[k], expected[k])]
            if differing or set(module) != set(expected):
                problems.append(f"{folder}: weights differ from the reference at step {step} ({differing[:3]})")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{folder}: marked COMPLETE but does not validate: {type(exc).__name__}: {exc}")
        return problems

    def scan(self, out: Path) -> tuple[int, list[str]]:
        from asteroid_hpc.train.checkpoint import CheckpointManager

        checkpoints = out / "checkpoints"
        if not checkpoints.is_dir():
            return 0, []
        checked, problems = 0, []
        for folder in sorted(checkpoints.glob("step_*")):
            if CheckpointManager.is_complete(folder):
                checked += 1
                problems += self._check_folder(folder)
        chosen = CheckpointManager(checkpoints, keep_last=2).latest()  # what --resume auto would take
        if chosen is not None and not CheckpointManager.is_complete(chosen):
            problems.append(f"{checkpoints}: resume would pick the incomplete {chosen.name}")
        return checked, problems

    def compare(self, out: Path) -> list[str]:
        problems = self._check_folder(out / "checkpoints" / f"step_{self.STEPS:06d}")
        losses = train_losses(out)
        if losses != self.reference_losses:
            worst = max((abs(losses.get(s, float("inf")) - v) for s, v in self.reference_losses.items()))
            problems.append(f"{out}: losses differ from the straight run (max |diff| {worst:.3g}; "
                            f"steps {sorted(losses)})")
        return problems


class EnsembleSubject(Subject):
    name = "ensemble"
    MEMBERS, HORIZON, CHUNK = 6, 120, 8

    def setup(self, root: Path) -> None:
        self.root = root
        self.model = ensemble_model_file(root / "model.safetensors")
        self.initial = molecule_trajectory(root / "initial.nc", n_atoms=9, n_frames=12)
        self.reference = root / "reference"
        began = time.monotonic()
        run_to_end(self.command(self.reference), root)
        self.reference_seconds = time.monotonic() - began
        self.reference_members = {p.name: self.coordinates(p) for p in (self.reference / "members").glob("*.nc")}
        assert len(self.reference_members) == self.MEMBERS

    def command(self, out: Path) -> list[str]:
        return _cli("ensemble-forecast", self.model, self.initial, "-o", out, f"ensemble.members={self.MEMBERS}",
                    f"ensemble.horizon_frames={self.HORIZON}", f"ensemble.chunk_frames={self.CHUNK}",
                    "ensemble.seed=3")

    def started(self, out: Path) -> bool:
        return (out / "members").is_dir()

    @staticmethod
    def coordinates(path: Path):
        from asteroid_hpc.data.amber import AmberReader

        with AmberReader(path) as reader:
            return reader.read(0, reader.n_frames).coordinates.copy()

    def _check_member(self, path: Path) -> list[str]:
        import numpy as np

        try:
            got = self.coordinates(path)
        except Exception as exc:  # noqa: BLE001
            return [f"{path}: looks complete but does not read: {type(exc).__name__}: {exc}"]
        expected = self.reference_members[path.name]
        if got.shape != expected.shape or not np.array_equal(got, expected):
            return [f"{path}: trajectory differs from the reference ({got.shape} vs {expected.shape})"]
        return []

    def scan(self, out: Path) -> tuple[int, list[str]]:
        members = out / "members"
        if not members.is_dir():
            return 0, []
        checked, problems = 0, []
        for path in sorted(members.glob("member_*.nc")):
            checked += 1
            problems += self._check_member(path)
        for marker in sorted(members.glob("member_*.done")):
            checked += 1
            if not marker.with_suffix(".nc").is_file():
                problems.append(f"{marker}: marks a member whose file is missing")
        if (out / "COMPLETE").exists():
            checked += 1
            problems += self.compare(out)
        return checked, problems

    def compare(self, out: Path) -> list[str]:
        members = sorted((out / "members").glob("member_*.nc"))
        problems = [] if len(members) == self.MEMBERS else [f"{out}: {len(members)} member files"]
        for path in members:
            problems += self._check_member(path)
        if not (out / "COMPLETE").exists() or not (out / "summary.json").exists():
            problems.append(f"{out}: no COMPLETE / summary.json after the final run")
        return problems


# ----------------------------------------------------------------------------------------------- training data
def train_losses(run_dir: Path) -> dict[int, float]:
    from asteroid_hpc.train import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", kind="train")}


# ----------------------------------------------------------------------------------------------- the trials
def run_trials(subject: Subject, root: Path, trials: int, rng: random.Random, log=print) -> Stats:
    """Set ``subject`` up under ``root`` and run ``trials`` kill-and-resume trials; returns the counts."""
    began = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    subject.setup(root)
    stats = Stats(subject.name, reference_seconds=round(subject.reference_seconds, 2))
    ref = subject.reference_seconds
    work = ref * 0.6  # shrinks to the observed work phase (first output -> exit) when a kill comes too late
    for trial in range(trials):
        out = root / f"trial-{trial:03d}"
        shutil.rmtree(out, ignore_errors=True)
        kills_planned = 1 + (rng.random() < 0.5)
        attempt = 0
        while attempt < kills_planned:
            if attempt:
                stats.resumes += 1
            anytime = rng.random() < 0.5
            delay = rng.uniform(0, ref) if anytime else rng.uniform(0, work)
            killed, moment, since_origin = run_and_kill(subject.command(out), root, delay,
                                          None if anytime else (lambda: subject.started(out)))
            if killed:
                stats.kills += 1
                stats.kills_after_first_output += subject.started(out)
                stats.kill_moments_s.append(round(moment, 3))
            else:
                stats.exited_before_kill += 1
                if not anytime:
                    work = min(work, since_origin)
                if attempt == 0:  # the run was faster than the reference: start over, every trial has a kill
                    ref = min(ref, moment)
                    shutil.rmtree(out, ignore_errors=True)
                    continue
            checked, problems = subject.scan(out)
            stats.complete_files_checked += checked
            stats.invalid_complete_files += len(problems)
            stats.problems += problems
            attempt += 1
        stats.resumes += 1
        try:
            run_to_end(subject.command(out), root)
            differences = subject.compare(out)
        except Exception as exc:  # noqa: BLE001 - a failed resume is a finding
            differences = [f"{out}: final resume failed: {exc}"]
        stats.mismatches += bool(differences)
        stats.problems += differences
        left = leftovers(out)
        stats.leftover_temporaries += len(left)
        stats.leftover_examples += [str(p.relative_to(out)) for p in left][: max(0, 5 - len(stats.leftover_examples))]
        stats.trials += 1
        log(f"[{subject.name}] trial {trial + 1}/{trials}: {stats.kills} kills, "
            f"{'MISMATCH ' + differences[0] if differences else 'equal to the uninterrupted run'}")
        if not differences:
            shutil.rmtree(out, ignore_errors=True)
    stats.seconds = round(time.monotonic() - began, 1)
    return stats


SUBJECT_CLASSES = {"preprocess": PreprocessSubject, "train": TrainSubject, "ensemble": EnsembleSubject}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="trials per command (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--only", default=",".join(SUBJECTS), help=f"comma-separated subset of {','.join(SUBJECTS)}")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a fresh temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the counts as JSON here")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SUBJECTS))
    if unknown:
        parser.error(f"unknown subject(s) {unknown}; choose from {SUBJECTS}")
    import tempfile

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault-trials-"))
    rng = random.Random(args.seed)
    results = []
    for name in chosen:
        stats = run_trials(SUBJECT_CLASSES[name](), workdir / name, args.trials, rng)
        results.append(stats)
        print(json.dumps({k: v for k, v in asdict(stats).items() if k != "kill_moments_s"}), flush=True)
    header = ("command", "trials", "kills", "in work", "resumes", "mismatches", "invalid", "checked", "seconds")
    print("\n" + "".join(f"{h:>11}" for h in header))
    for s in results:
        row = (s.subject, s.trials, s.kills, s.kills_after_first_output, s.resumes, s.mismatches,
               s.invalid_complete_files, s.complete_files_checked, s.seconds)
        print("".join(f"{v:>11}" for v in row))
    if args.json:
        command = " ".join(["python", "tools/fault_trials.py", *(argv or sys.argv[1:])])
        args.json.write_text(json.dumps({"seed": args.seed, "trials_per_command": args.trials, "command": command,
                                         "results": [asdict(s) for s in results]}, indent=1) + "\n")
    return 0 if all(s.ok() for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
