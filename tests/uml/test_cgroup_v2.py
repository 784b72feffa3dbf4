"""The executor's suite on a real cgroup v2 kernel: user-mode-linux over hostfs.

This host is a cgroup v1 hybrid, so the v2 driver is tested by booting Debian's
user-mode-linux (a Linux kernel as an ordinary process) with tests/uml/init.sh
as PID 1. It mounts cgroup2 with memory, cpu, pids and io enabled, runs
tests/executor inside (``MLQ_EXPECT_CGROUP=2`` makes that suite refuse to run on
anything but v2), and writes the results to a host directory. A machine that
cannot boot it fails here; it never passes quietly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mlq.executor import helper

REPO = Path(__file__).resolve().parents[2]
INIT = REPO / "tests" / "uml" / "init.sh"


@pytest.mark.timeout(330)
def test_the_executor_suite_passes_on_a_cgroup_v2_kernel(tmp_path):
    linux = shutil.which("linux.uml") or shutil.which("linux", path="/usr/bin")
    if not linux:
        pytest.fail("linux.uml not found: install user-mode-linux (scripts/test does)")
    helper.path()  # compiled here: the UML guest runs the same binary from hostfs
    out = tmp_path / "uml"
    out.mkdir()
    console = tmp_path / "console.txt"
    args = os.environ.get("MLQ_UML_TESTS", "tests/executor")
    cmd = [
        linux,
        "mem=1G",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={INIT}",
        "quiet",
        "con=null",
        "con0=fd:0,fd:1",
        f"MLQ_UML_OUT={out}",
        f"MLQ_UML_REPO={REPO}",
        f"MLQ_UML_ARGS={args}",
        "MLQ_EXPECT_CGROUP=2",
    ]
    with open(console, "w") as con:
        try:
            subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT, timeout=300
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"user-mode-linux did not finish in 300s; console: {console.read_text()[-2000:]}"
            )
    boot = out / "boot.txt"
    assert boot.exists(), f"user-mode-linux did not boot: {console.read_text()[-2000:]}"
    controllers = boot.read_text()
    assert "cgroup.subtree_control cpu io memory pids" in controllers, controllers
    report = (out / "pytest.txt").read_text() if (out / "pytest.txt").exists() else "(none)"
    assert (out / "junit.xml").exists(), f"no test results from the guest: {report[-3000:]}"
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    ran = int(suite.get("tests", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    assert ran > 0 and bad == 0 and skipped == 0, report[-6000:]
    assert (out / "exit_code").read_text().strip() == "0", report[-3000:]
