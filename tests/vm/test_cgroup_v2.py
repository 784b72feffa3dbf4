"""The executor's suite on a real cgroup v2 kernel, booted over this machine's own files.

This host is a cgroup v1 hybrid, so the v2 driver is tested inside a guest kernel
(``boot.py``: user-mode-linux where it boots, else qemu with Debian's kernel) with
``guest-init.sh`` as PID 1. It mounts cgroup2 with memory, cpu, pids and io enabled
and runs tests/executor (``MLQ_EXPECT_CGROUP=2`` makes that suite refuse to run on
anything but v2). The guest starts at the end of collection (``conftest.py``) and
runs beside the host's tests; this test waits for it and reads its results. A
machine where neither way boots fails here with one line saying why; it never
passes quietly.
"""

from __future__ import annotations

import guest
import pytest
from boot import TIMEOUT_S, Result

NAMES = {"uml": "user-mode-linux", "qemu": "qemu"}


def _why(tried: list[Result]) -> str:
    return "; ".join(f"{NAMES[t.way]}: {t.why_not_booted()}" for t in tried)


@pytest.mark.timeout(2 * TIMEOUT_S + 120)
def test_the_executor_suite_passes_on_a_cgroup_v2_kernel(cgroup_v2_guest):
    r, tried = cgroup_v2_guest.result(timeout=2 * TIMEOUT_S + 60)
    if not r.booted:
        pytest.fail(f"no cgroup v2 kernel could boot here: {_why(tried)}", pytrace=False)
    fell_back = f" (after {_why(tried[:-1])})" if len(tried) > 1 else ""
    kernel = r.boot.split("kernel ", 1)[-1].split("\n", 1)[0]
    guest.summary.append(
        f"{NAMES[r.way]}, kernel {kernel}{fell_back}: {r.counts()} in {r.seconds:.0f}s"
    )
    assert "cgroup.subtree_control cpu io memory pids" in r.boot, r.boot
    assert r.tests > 0, f"no test results from the guest: {r.report[-3000:]}"
    assert r.passed, f"{r.counts()}, exit {r.exit_code}:\n{r.report[-6000:]}"
