"""The layers of docs/architecture.md are a test: `lint-imports` checks the contracts in pyproject.toml
([tool.importlinter]) against every import in asteroid_hpc/, function-level ones included; and no function
is over 60 lines or module over 400 without a comment saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` run in ``root`` (it analyses root/asteroid_hpc with root/pyproject.toml)."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the test extra (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([exe, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of the package's Python sources and pyproject.toml, to plant bad imports in."""
    shutil.copytree(REPO / "asteroid_hpc", tmp_path / "asteroid_hpc",
                    ignore=shutil.ignore_patterns("__pycache__", "resources"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


LAYERS, CLI = "Layers: a package imports only from the layers below it", "Only the entry point imports the CLI"
# (file to add a line to, the line, the contract that must break, the illegal import it must name)
VIOLATIONS = {
    "an arrow back up": ("model/asteroid.py", "from ..train import checkpoint\n", LAYERS,
                         "asteroid_hpc.model.asteroid -> asteroid_hpc.train.checkpoint"),
    "a lazy import back up": ("data/windows.py", "def _late():\n    from asteroid_hpc.ensemble import run\n",
                              LAYERS, "asteroid_hpc.data.windows -> asteroid_hpc.ensemble.run"),
    "siblings of one layer": ("train/trainer.py", "from asteroid_hpc.datagen import xtb\n", LAYERS,
                              "asteroid_hpc.train.trainer -> asteroid_hpc.datagen.xtb"),
    "a bottom module importing a package": ("errors.py", "from .config import schema\n", LAYERS,
                                            "asteroid_hpc.errors -> asteroid_hpc.config.schema"),
    "the CLI imported by the package root": ("__init__.py", "def _main():\n    from .cli import common\n", CLI,
                                             "asteroid_hpc -> asteroid_hpc.cli.common"),
    "a module in no layer": ("orphan.py", "", LAYERS, "asteroid_hpc.orphan"),
}


@pytest.mark.parametrize("case", VIOLATIONS, ids=list(VIOLATIONS))
def test_a_planted_violation_breaks_a_contract(package_copy, case):
    """The check can fail: one bad import (or a module placed in no layer) in a copy of the package."""
    relative, line, contract, named = VIOLATIONS[case]
    target = package_copy / "asteroid_hpc" / relative
    with open(target, "a") as handle:
        handle.write("\n" + line)
    proc = lint_imports(package_copy)
    assert proc.returncode != 0, proc.stdout
    assert f"{contract} BROKEN" in proc.stdout, proc.stdout
    assert named in proc.stdout + proc.stderr, proc.stdout + proc.stderr


MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400
SIZE_WAIVER = "size: "  # a comment starting so, on a function's first line or a module's first lines, says why


def oversized(package: Path) -> list[str]:
    """Functions over MAX_FUNCTION_LINES and modules over MAX_MODULE_LINES lines, unless waived by a comment."""
    import ast

    found = []
    for path in sorted(package.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES and not any(f"# {SIZE_WAIVER}" in line for line in lines[:5]):
            found.append(f"{path.relative_to(package.parent)}: module of {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"# {SIZE_WAIVER}" not in lines[node.lineno - 1]:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_function_or_module_is_oversized():
    assert oversized(REPO / "asteroid_hpc") == []


def test_the_size_check_finds_a_long_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (package / "long.py").write_text(f"def long():\n{body}\n")
    (package / "waived.py").write_text(f"def waived():  # {SIZE_WAIVER}one table, clearer whole\n{body}\n")
    assert oversized(package) == [f"pkg/long.py:1 long: {MAX_FUNCTION_LINES + 1} lines"]
