"""The job's own `mlq` (executor/jobtool/mlq-job.c): bound read-only at /.mlq/bin/mlq
into every job, whatever its image, with /.mlq/bin last in the job's PATH."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from exec_helpers import make_rootfs, run
from mlq.executor import Checkpoint, Outcome, Root, User, helper
from mlq.executor.errors import ExecutorError
from mlq.executor.request import DEFAULT_PATH, JOB_TOOL_DIR, with_job_tool
from mlq.executor.rundir import CHECKPOINT_MARK, checkpoint_dir, checkpoint_mark

MARK_ENV = {"MLQ_CHECKPOINT_MARK": f"/ckpt/{CHECKPOINT_MARK}"}
USAGE = "inside an mlq job only checkpoint-done is available"


@pytest.fixture
def public_rootfs():
    """A busybox root (no mlq, no Python) that any user may read, as a user's image."""
    d = Path(tempfile.mkdtemp(prefix="mlq-tool-"))
    d.chmod(0o755)
    yield str(make_rootfs(d / "rootfs"))
    shutil.rmtree(d, ignore_errors=True)


def test_checkpoint_done_in_an_image_without_mlq_marks_the_checkpoint(
    state_dir, public_rootfs, unix_users
):
    a = unix_users["alice"]
    assert not os.path.exists(os.path.join(public_rootfs, "usr/bin/mlq"))
    ck = Checkpoint(checkpoint_dir(state_dir, 41), "/ckpt")
    st, out, err = run(
        state_dir,
        ["/bin/sh", "-c", "command -v mlq && mlq checkpoint-done && echo marked"],
        root=Root(image=public_rootfs),
        checkpoint=ck,
        env=MARK_ENV,
        user=User(a.pw_uid, a.pw_gid),
    )
    assert (st.state, out, err) == (Outcome.COMPLETED, "/.mlq/bin/mlq\nmarked\n", "")
    # what the daemon reads (Executor.checkpoint_mark): the mark, made by the job's user
    assert checkpoint_mark(state_dir, 41) is not None
    mark = Path(ck.source) / CHECKPOINT_MARK
    assert mark.lstat().st_uid == a.pw_uid and stat.S_ISREG(mark.lstat().st_mode)


def test_any_other_command_says_only_checkpoint_done_is_available(state_dir, busybox_rootfs):
    st, out, err = run(
        state_dir,
        ["/bin/sh", "-c", "mlq frobnicate; echo rc=$?; mlq --help; echo rc=$?"],
        root=Root(image=busybox_rootfs),
    )
    assert st.state == Outcome.COMPLETED and out == "rc=2\nrc=2\n"
    first, second = err.splitlines()
    assert (
        first.startswith("mlq: error: no such command 'frobnicate' inside a job") and USAGE in first
    )
    assert second.startswith("mlq: error: usage: mlq checkpoint-done") and USAGE in second


def test_without_a_checkpoint_volume_it_says_why_as_the_full_cli_does(state_dir, busybox_rootfs):
    st, out, err = run(
        state_dir,
        ["/bin/sh", "-c", "mlq checkpoint-done; echo rc=$?"],
        root=Root(image=busybox_rootfs),
    )
    assert (st.state, out) == (Outcome.COMPLETED, "rc=2\n")
    assert err == (
        "mlq: error: MLQ_CHECKPOINT_MARK is not set: run this inside an mlq job that has a "
        "checkpoint volume\n"
    )


def test_a_symlink_at_the_mark_is_refused_not_followed(state_dir, busybox_rootfs):
    ck = Checkpoint(checkpoint_dir(state_dir, 42), "/ckpt")
    st, out, err = run(
        state_dir,
        [
            "/bin/sh",
            "-c",
            f"ln -s /etc/victim /ckpt/{CHECKPOINT_MARK}; mlq checkpoint-done; echo rc=$?",
        ],
        root=Root(image=busybox_rootfs),
        checkpoint=ck,
        env=MARK_ENV,
    )
    assert (st.state, out) == (Outcome.COMPLETED, "rc=1\n")
    assert err == (
        f"mlq: error: mark the checkpoint: open `/ckpt/{CHECKPOINT_MARK}`: "
        "Too many levels of symbolic links\n"
    )


def test_the_tool_is_read_only_nosuid_and_nodev_even_for_the_jobs_root(state_dir, busybox_rootfs):
    script = (
        "grep ' /.mlq/bin/mlq ' /proc/self/mountinfo | cut -d' ' -f6; "
        "echo x > /.mlq/bin/mlq || echo refused"
    )
    st, out, _ = run(state_dir, ["/bin/sh", "-c", script], root=Root(image=busybox_rootfs))
    opts, refused = out.splitlines()
    assert st.state == Outcome.COMPLETED and refused == "refused"
    assert {"ro", "nosuid", "nodev"} <= set(opts.split(","))
    built = os.stat(helper.job_tool_path())
    assert not built.st_mode & (stat.S_ISUID | stat.S_ISGID)


def test_on_the_host_image_the_tool_is_there_and_the_hosts_root_is_untouched(state_dir):
    assert not os.path.lexists("/.mlq")
    st, out, _ = run(state_dir, ["/bin/sh", "-c", "ls /.mlq/bin; echo $PATH"])
    assert st.state == Outcome.COMPLETED
    assert out.splitlines() == [
        "mlq",
        f"{DEFAULT_PATH}:{JOB_TOOL_DIR}",
    ]
    assert not os.path.lexists("/.mlq")


def test_a_job_files_own_path_gets_the_tools_directory_appended(state_dir, busybox_rootfs):
    st, out, _ = run(
        state_dir,
        ["/bin/sh", "-c", "echo $PATH; mlq checkpoint-done 2>/dev/null; echo rc=$?"],
        root=Root(image=busybox_rootfs),
        env={"PATH": "/opt/bin:/bin"},
    )
    assert (st.state, out) == (Outcome.COMPLETED, f"/opt/bin:/bin:{JOB_TOOL_DIR}\nrc=2\n")


@pytest.mark.parametrize(
    ("path", "want"),
    [
        pytest.param("/opt/bin:/bin", f"/opt/bin:/bin:{JOB_TOOL_DIR}", id="appended last"),
        pytest.param(f"{JOB_TOOL_DIR}:/bin", f"/bin:{JOB_TOOL_DIR}", id="once, and last"),
        pytest.param("", JOB_TOOL_DIR, id="an empty PATH becomes just the tool's directory"),
    ],
)
def test_with_job_tool(path, want):
    assert with_job_tool(path) == want


def test_a_job_tool_built_from_other_sources_is_refused(tmp_path, monkeypatch):
    built = helper.job_tool_path()
    copy = tmp_path / "mlq-job"
    shutil.copy2(built, copy)
    Path(helper.stamp_path(str(copy))).write_text("0" * 64 + "\n")
    monkeypatch.setenv("MLQ_JOB_TOOL", str(copy))
    with pytest.raises(
        ExecutorError, match=r"the job tool .* older than its sources.*install-venv"
    ):
        helper.job_tool_path()
    monkeypatch.setenv("MLQ_JOB_TOOL", str(tmp_path / "absent"))
    with pytest.raises(ExecutorError, match=r"the job tool .* is missing.*install-venv"):
        helper.job_tool_path()
