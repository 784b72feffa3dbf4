"""Fixtures for the cluster tests: a control plane and node agents on one machine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from clusterlab import ClusterLab
from netlab import NetLab, netlab  # noqa: F401  (the fixture, re-exported for pytest)


@pytest.fixture
def cluster(netlab: NetLab, pg_database: str, unix_users) -> Iterator[ClusterLab]:  # noqa: F811
    """A cluster CA and certificates, no process yet: tests start servers and agents."""
    c = ClusterLab(netlab, pg_database)
    try:
        yield c
    finally:
        c.close()
        if not os.environ.get("MLQ_TEST_KEEP"):  # set it to read the processes' logs
            shutil.rmtree(c.home, ignore_errors=True)
