"""Fixtures shared by all tests (plain helpers live in tests/support/)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """In-process CLI runs bind the project's log handler to the test's captured stderr: drop such handlers
    before and after, or in-process logging (e.g. while building a fixture) writes to a closed stream."""
    root = logging.getLogger("asteroid_hpc")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and lose 10-50x when the cores are busy
    (tools/test.sh also exports OMP_NUM_THREADS=1; this covers a bare pytest run)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
