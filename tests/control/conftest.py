"""The control loop and the store with a fake executor, a frozen clock and a temporary
SQLite database: no root, no process, milliseconds a test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Harness  # noqa: E402


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)
