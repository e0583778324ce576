"""Fixtures shared by all tests (plain helpers live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO


@pytest.fixture
def repo() -> Path:
    return REPO
