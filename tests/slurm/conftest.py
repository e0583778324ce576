"""A real local Slurm cluster for tests: ``slurm_cluster`` (session scope) brings it up with
tools/slurm_local.sh, submits batch jobs with ``sbatch --wait`` under an outer timeout, and tears the
cluster down at the end of the session (unless it was already up, or SLURM_LOCAL_KEEP=1)."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import REPO

SCRIPT = REPO / "tools" / "slurm_local.sh"
UP_TIMEOUT_S = 900  # includes apt-get update + install on a fresh machine
DOWN_TIMEOUT_S = 120
HEALTH_CHECK_S = 5  # how often a waiting submission checks that the cluster is still up
# Variables of an enclosing Slurm job (tests run inside an allocation) must not leak into our jobs.
_FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "PMIX_", "PMI_")


class _ClusterWentDown(RuntimeError):
    def __init__(self, job_id: int | None, status: list[str]) -> None:
        super().__init__(f"job {job_id}: {status}")
        self.job_id, self.status = job_id, " ".join(status)


class SlurmJobTimeout(TimeoutError):
    """A submitted job did not finish within the test's timeout; it has been cancelled."""


@dataclass(frozen=True)
class SlurmJob:
    """One finished batch job. ``returncode`` is the exit code of ``sbatch --wait`` (= the job's)."""

    job_id: int
    returncode: int
    state: str  # JobState from the job completion log: COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    elapsed_s: float  # wall time from submission to sbatch's return
    job_dir: Path  # fresh directory of this submission (holds the outputs)
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def describe(self) -> str:
        """Everything needed to understand a failing assertion."""
        return (f"job {self.job_id}: exit {self.returncode}, state {self.state}, {self.elapsed_s:.1f} s\n"
                f"--- stdout ({self.stdout_path})\n{self.stdout()[-4000:]}\n"
                f"--- stderr ({self.stderr_path})\n{self.stderr()[-4000:]}")


class SlurmCluster:
    """Handle on the running local cluster (see tools/slurm_local.sh)."""

    def __init__(self, conf_path: Path, jobs_root: Path, script_env: dict[str, str] | None = None) -> None:
        self.conf_path = conf_path
        self.jobs_root = jobs_root
        self.script_env = script_env  # for tools/slurm_local.sh (None: never restart the cluster)
        self.env = _job_env(conf_path)
        self._counter = itertools.count(1)
        nodes = self.run("sinfo", "-h", "-N", "-o", "%N %G").stdout.split("\n")
        rows = sorted({tuple(line.split()) for line in nodes if line.strip()})
        self.nodes: tuple[str, ...] = tuple(row[0] for row in rows)
        self.gpus_per_node = min(_gpu_count(row[1]) for row in rows)
        config = self.run("scontrol", "show", "config").stdout
        self.jobcomp_path = Path(_config_value(config, "JobCompLoc"))

    def run(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run a Slurm client command (sinfo, squeue, scontrol, scancel, ...) against this cluster."""
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def submit(self, script: str | os.PathLike, args: tuple | list = (), *, sbatch_args: tuple | list = (),
               env: dict[str, str] | None = None, timeout: float = 120, cwd: str | os.PathLike | None = None
               ) -> SlurmJob:
        """``sbatch --wait`` SCRIPT ARGS and return the finished job.

        sbatch_args: options before the script (they override the script's #SBATCH lines).
        env: extra variables, merged over ``self.env``; the job inherits them (--export=ALL).
        cwd: where sbatch runs, i.e. SLURM_SUBMIT_DIR and the job's working directory
             (default: the fresh ``job_dir``). Outputs always go to job_dir/stdout.txt and stderr.txt.
        timeout: seconds until the job is cancelled and SlurmJobTimeout is raised.

        A daemon of the local cluster that dies (a node goes DOWN: seen once, slurmd aborting inside glibc)
        would leave the job waiting until the timeout: the cluster is checked before submitting and while
        waiting, restarted when it is not up, and the job submitted once more (with a warning naming why).
        """
        self._ensure_up()
        try:
            return self._submit_once(script, args, sbatch_args, env, timeout, cwd)
        except _ClusterWentDown as down:
            warnings.warn(f"local Slurm cluster went down during job {down.job_id} ({down.status}); "
                          "restarted it and submitted the job again", stacklevel=2)
            self._ensure_up()
            return self._submit_once(script, args, sbatch_args, env, timeout, cwd)

    def _submit_once(self, script, args, sbatch_args, env, timeout, cwd) -> SlurmJob:
        job_dir = self.jobs_root / f"job-{next(self._counter):03d}"
        job_dir.mkdir(parents=True)
        stdout_path, stderr_path = job_dir / "stdout.txt", job_dir / "stderr.txt"
        argv = ["sbatch", "--wait", "--parsable", f"--output={stdout_path}", f"--error={stderr_path}",
                *map(str, sbatch_args), str(script), *map(str, args)]
        sbatch_log = job_dir / "sbatch.log"
        started = time.monotonic()
        with open(sbatch_log, "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or job_dir,
                                    env={**self.env, **(env or {})})
            try:
                returncode = self._wait(proc, timeout, sbatch_log)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                job_id = _job_id(sbatch_log.read_text())
                details = self._cancel(job_id) if job_id is not None else "(no job id: sbatch did not submit)"
                raise SlurmJobTimeout(
                    f"{shlex.join(argv)} did not finish within {timeout} s; cancelled.\n{details}\n"
                    f"--- stdout\n{_tail(stdout_path)}\n--- stderr\n{_tail(stderr_path)}") from None
        elapsed_s = time.monotonic() - started
        text = sbatch_log.read_text()
        job_id = _job_id(text)
        if job_id is None:
            raise RuntimeError(f"{shlex.join(argv)} did not submit a job (exit {returncode}): {text.strip()}")
        return SlurmJob(job_id, returncode, self.job_record(job_id).get("JobState", "UNKNOWN"), elapsed_s,
                        job_dir, stdout_path, stderr_path)

    def submit_text(self, text: str, args: tuple | list = (), **kwargs) -> SlurmJob:
        """Write TEXT (a batch script with its #! line) to a file and ``submit`` it."""
        script_dir = self.jobs_root / "scripts"
        script_dir.mkdir(parents=True, exist_ok=True)
        script = script_dir / f"script-{time.monotonic_ns()}.sh"
        script.write_text(text)
        return self.submit(script, args, **kwargs)

    def job_record(self, job_id: int, timeout: float = 10) -> dict[str, str]:
        """The job's line in the job completion log as KEY=VALUE pairs ({} if it never appears)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.jobcomp_path.exists():
                for line in self.jobcomp_path.read_text().splitlines():
                    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
                    if fields.get("JobId") == str(job_id):
                        return fields
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.2)

    def _wait(self, proc: subprocess.Popen, timeout: float, sbatch_log: Path) -> int:
        """sbatch's exit code; checks the cluster every HEALTH_CHECK_S and raises _ClusterWentDown (the job
        cancelled) if it is no longer up."""
        deadline = time.monotonic() + timeout
        failed_checks = 0
        while True:
            try:
                return proc.wait(timeout=min(HEALTH_CHECK_S, max(deadline - time.monotonic(), 0.01)))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
            status = self._status()
            failed_checks = failed_checks + 1 if status.returncode != 0 else 0
            if failed_checks >= 2:  # twice in a row, HEALTH_CHECK_S apart: not a node's passing hiccup
                proc.kill()
                proc.wait(timeout=10)
                job_id = _job_id(sbatch_log.read_text())
                if job_id is not None:
                    self.run("scancel", str(job_id), check=False)
                raise _ClusterWentDown(job_id, (status.stderr or status.stdout).strip().splitlines()[:1])

    def _status(self) -> subprocess.CompletedProcess:
        if self.script_env is None:
            return subprocess.CompletedProcess([], 0, "", "")
        return _script("status", self.script_env, 60)

    def _ensure_up(self) -> None:
        if self._status().returncode == 0:
            return
        up = _script("up", self.script_env, UP_TIMEOUT_S)
        if up.returncode != 0:
            pytest.fail(f"tools/slurm_local.sh up (restart) failed ({up.returncode}):\n{up.stderr}", pytrace=False)

    def _cancel(self, job_id: int) -> str:
        shown = self.run("scontrol", "show", "job", str(job_id), check=False).stdout
        self.run("scancel", str(job_id), check=False)
        deadline = time.monotonic() + 30
        while str(job_id) in self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
            if time.monotonic() > deadline:
                return f"{shown}\n(job {job_id} still in the queue 30 s after scancel)"
            time.sleep(0.5)
        return shown


def _job_env(conf_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN_PREFIXES)}
    env["SLURM_CONF"] = str(conf_path)
    # Jobs inherit this environment: put the Python running the tests (the project venv) first.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, *[p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin]])
    return env


def _job_id(sbatch_output: str) -> int | None:
    for line in sbatch_output.splitlines():
        head = line.strip().split(";")[0]
        if head.isdigit():
            return int(head)
    return None


def _gpu_count(gres: str) -> int:
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            return int(parts[-1])
    return 0


def _config_value(config: str, key: str) -> str:
    for line in config.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    raise RuntimeError(f"scontrol show config has no {key}")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(none)"


def _script(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (daemons, namespaces, /run/munge)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed and apt-get is unavailable to install it")
    env = dict(os.environ)
    env.setdefault("SLURM_LOCAL_GPUS", "2")  # fake GPUs so --gpus-per-node jobs can be scheduled
    was_up = _script("status", env, 60).returncode == 0
    up = _script("up", env, UP_TIMEOUT_S)
    if up.returncode != 0:
        pytest.fail(f"tools/slurm_local.sh up failed ({up.returncode}):\n{up.stderr}", pytrace=False)
    exported = _script("env", env, 30).stdout.strip()  # export SLURM_CONF=...
    conf_path = Path(shlex.split(exported)[1].split("=", 1)[1])
    try:
        yield SlurmCluster(conf_path, tmp_path_factory.mktemp("slurm-jobs"), env)
    finally:
        if not was_up and os.environ.get("SLURM_LOCAL_KEEP") != "1":
            down = _script("down", env, DOWN_TIMEOUT_S)
            if down.returncode != 0:
                pytest.fail(f"tools/slurm_local.sh down failed ({down.returncode}):\n{down.stderr}",
                            pytrace=False)
