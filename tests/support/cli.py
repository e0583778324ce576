"""The repository root, CLI and mpiexec runners, the user-error check (no pytest needed to import)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.pop("ASTEROID_DEBUG", None)
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 300, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m asteroid_hpc ARGS`` in a subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "asteroid_hpc", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env or cli_env(), cwd=cwd)


def mpiexec_cmd(n: int, *args: str, mpi4py_runner: bool = True) -> list[str]:
    """``mpiexec -n N python [-m mpi4py] ARGS`` (mpi4py's runner aborts all ranks on an uncaught exception)."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        import pytest

        pytest.fail("mpiexec not found: run the tests through tools/test.sh, which installs Open MPI")
    runner = ["-m", "mpi4py"] if mpi4py_runner else []
    return [mpiexec, "-n", str(n), sys.executable, *runner, *map(str, args)]


def run_mpi(n: int, *args: str, timeout: float = 300, env: dict | None = None,
            mpi4py_runner: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(mpiexec_cmd(n, *args, mpi4py_runner=mpi4py_runner), capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env())


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, one error line on stderr naming each fragment, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr  # no INFO line, no warning before it
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def json_objects(text: str) -> list[dict]:
    """Every JSON object in ``text``: mpiexec forwards the ranks' output in pieces, so two ranks' lines
    can arrive joined ("{...}{...}\n\n") and a line-by-line parse would be flaky."""
    decoder, found, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        obj, end = decoder.raw_decode(text, at)
        found.append(obj)
        at = text.find("{", end)
    return found
