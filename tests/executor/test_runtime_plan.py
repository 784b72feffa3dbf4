"""The helper's plan is versioned and read whole or not at all; a helper that is
missing, or was built from other sources, is refused with what to run.

A plan the helper cannot execute exactly as written fails the launch at "read plan"
with the number of the line it stopped at, before the helper makes anything: no log
file, no supervisor record, and (``nothing_left``) no cgroup, mount or process.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from exec_helpers import request
from mlq.executor import LaunchError, helper, start
from mlq.executor import plan as plan_mod
from mlq.executor.errors import ExecutorError

VERSION = "mlq-plan 1"
# what start() itself leaves in the run dir of a launch that failed at the helper
PYTHON_FILES = {"request.json", "plan", "launch.json", "status.json"}


def _steps(text: str) -> list[str]:
    """The plan's step lines, without a version line (whether or not one was written)."""
    return [line for line in text.splitlines() if not line.startswith("mlq-plan")]


def _index(steps: list[str], key: str, field: str | None = None) -> int:
    return next(
        i
        for i, line in enumerate(steps)
        if line.split("\t")[0] == key and (field is None or field in line.split("\t"))
    )


def without_version(steps: list[str]) -> tuple[list[str], int]:
    return steps, 1


def version_2(steps: list[str]) -> tuple[list[str], int]:
    return ["mlq-plan 2", *steps], 1


def unknown_step(steps: list[str]) -> tuple[list[str], int]:
    return [VERSION, *steps[:4], "frobnicate\tx", *steps[4:]], 6


def a_field_too_many(steps: list[str]) -> tuple[list[str], int]:
    i = _index(steps, "hostname")
    steps = list(steps)
    steps[i] += "\textra"
    return [VERSION, *steps], i + 2


def mount_data_past_the_kernels_page(steps: list[str]) -> tuple[list[str], int]:
    # mount(2) reads one page of options and silently drops the rest
    i = _index(steps, "mount", "/tmp")
    steps = list(steps)
    steps[i] += ",nr_inodes=0" * 400
    return [VERSION, *steps], i + 2


def an_alive_switch_of_no_time(steps: list[str]) -> tuple[list[str], int]:
    i = _index(steps, "hostname")
    return [VERSION, *steps[:i], "alive\t/run/x\t0", *steps[i:]], i + 2


@pytest.mark.parametrize(
    "mutate,why",
    [
        pytest.param(without_version, "mlq-plan 1", id="a plan without its version line"),
        pytest.param(version_2, "version 2", id="a plan of version 2"),
        pytest.param(unknown_step, "frobnicate", id="a step the helper does not know"),
        pytest.param(a_field_too_many, "hostname", id="a known step with a field too many"),
        pytest.param(mount_data_past_the_kernels_page, "4095", id="mount options past a page"),
        pytest.param(an_alive_switch_of_no_time, "alive", id="a dead man's switch of 0 ms"),
    ],
)
def test_a_plan_the_helper_cannot_follow_exactly_is_refused_at_its_line_and_nothing_is_made(
    state_dir, monkeypatch, mutate, why
):
    real_render = plan_mod.render
    expected_line: list[int] = []

    def render(lines):
        steps, n = mutate(_steps(real_render(lines)))
        expected_line.append(n)
        return "\n".join(steps) + "\n"

    monkeypatch.setattr(plan_mod, "render", render)
    req = request(state_dir, ["/bin/echo", "ran"])
    with pytest.raises(LaunchError) as info:
        start(req)
    assert info.value.step == "read plan"
    assert re.match(rf"line {expected_line[0]}: ", info.value.message), info.value.message
    assert why in info.value.message and "\n" not in info.value.message
    # the helper stopped before making anything: no stdout/stderr, no supervisor.json
    assert set(os.listdir(req.run_dir)) == PYTHON_FILES
    # nothing_left: the cgroup start() made is gone, and no process or mount remains


def test_the_plan_starts_with_its_version():
    assert plan_mod.render([("rundir", "/r")]) == "mlq-plan 1\nrundir\t/r\n"


def test_a_missing_helper_says_to_run_install_venv(state_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLQ_RUNTIME", str(tmp_path / "mlq-runtime"))
    with pytest.raises(ExecutorError, match=r"missing.*run scripts/install-venv"):
        helper.path()
    req = request(state_dir, ["/bin/true"])
    with pytest.raises(LaunchError, match="scripts/install-venv") as info:
        start(req)
    assert info.value.step == "supervisor" and "\n" not in str(info.value)


def test_a_helper_built_from_other_sources_says_to_run_install_venv(tmp_path, monkeypatch):
    built = helper.path()
    copy = tmp_path / "mlq-runtime"
    shutil.copy2(built, copy)
    Path(helper.stamp_path(str(copy))).write_text("0" * 64 + "\n")
    monkeypatch.setenv("MLQ_RUNTIME", str(copy))
    with pytest.raises(ExecutorError, match=r"older than its sources.*run scripts/install-venv"):
        helper.path()
    # the same copy with the right stamp is used as is
    shutil.copy2(helper.stamp_path(built), helper.stamp_path(str(copy)))
    assert helper.path() == str(copy)
