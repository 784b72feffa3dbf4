"""Starts the cgroup v2 guest as soon as collection ends, so it runs beside the rest.

The guest (``boot.py``) runs the executor's suite on its own kernel while the host
runs everything else; ``test_cgroup_v2.py`` then only waits for its result. The
guest's /tmp, /run and /etc are its own (tmpfs, and an overlay for the user
database), so tests on both sides cannot see each other's runs or users.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import boot  # noqa: E402  (tests/vm/boot.py)
import guest  # noqa: E402

TEST_FILE = HERE / "test_cgroup_v2.py"
_started: list[guest.Guest] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.path == TEST_FILE for item in session.items):
        from mlq.executor import helper

        helper.path()  # found (built by scripts/install-venv): the guest runs the same binary
        _started.append(guest.Guest(os.environ.get("MLQ_VM_TESTS", boot.DEFAULT_ARGS)))


@pytest.fixture(scope="session")
def cgroup_v2_guest() -> guest.Guest:
    if not _started:
        pytest.fail("the cgroup v2 guest was not started at collection (tests/vm/conftest.py)")
    return _started[0]


def pytest_terminal_summary(terminalreporter) -> None:
    if guest.summary:
        terminalreporter.write_sep("-", "cgroup v2 kernel")
        for line in guest.summary:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for g in _started:
        g.close()
