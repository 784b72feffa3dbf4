"""Fixtures for the executor's tests: real namespaces, cgroups, overlayfs and veth.

Every test leaves nothing of mlq behind; ``nothing_left`` (autouse) checks the
cgroups, mounts, veths, network namespaces and processes after each one.
"""

from __future__ import annotations

import os
import time

import pytest
from exec_helpers import leftovers, make_rootfs
from mlq.executor.cgroups import detect


@pytest.fixture(autouse=True, scope="session")
def _subreaper():
    """Like a daemon should: orphans of a killed supervisor come to us to be reaped."""
    import ctypes

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


@pytest.fixture(autouse=True)
def nothing_left(tmp_path):
    yield
    marker = str(tmp_path)
    deadline = time.monotonic() + 5
    while (left := leftovers(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"mlq left behind: {left}"


@pytest.fixture
def state_dir(tmp_path) -> str:
    d = tmp_path / "state"
    d.mkdir()
    return str(d)


@pytest.fixture(scope="session")
def cgroup_version() -> int:
    version = detect().version
    # tests/vm runs this suite on a cgroup v2 kernel and says so: never a quiet v1 run
    expected = os.environ.get("MLQ_EXPECT_CGROUP")
    assert expected is None or int(expected) == version, f"expected v{expected}, found v{version}"
    return version


@pytest.fixture(autouse=True, scope="session")
def _check_cgroup_version(cgroup_version):
    return cgroup_version


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("rootfs")
    return str(make_rootfs(root, {"/etc/mlq-image": "busybox-image\n"}))


@pytest.fixture(autouse=True, scope="session")
def _release_cgroup_parents():
    """At the end, as any user of the executor that stops launching does."""
    yield
    from mlq.executor.cgroups import release_parents

    release_parents()
