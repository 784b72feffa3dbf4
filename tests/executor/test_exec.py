"""``mlq exec``'s executor half, for real: a command started in a running job's
namespaces, cgroup and identity, with no more privilege than the job's command, that
ends with the job; fds that could reach outside the job are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from exec_helpers import finish, make_rootfs, request
from mlq.executor import IdMap, Namespaces, Root, User, execin, kill_now, start  # noqa: F401
from mlq.executor.errors import Conflict, InvalidInput

WAIT = ["/bin/sh", "-c", "echo up; while :; do sleep 0.1; done"]


@pytest.fixture
def public() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mlq-exec-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def alice(unix_users) -> User:
    a = unix_users["alice"]
    return User(uid=a.pw_uid, gid=a.pw_gid, additional_gids=os.getgrouplist(a.pw_name, a.pw_gid))


def running(state_dir: str, rootfs: Path, user: User, **kw):
    h = start(request(state_dir, WAIT, root=Root(image=str(rootfs)), user=user, **kw))
    deadline = time.monotonic() + 30
    while "up" not in Path(h.stdout).read_text():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return h


def exec_out(
    state_dir: str, h, args: list[str], stdin: int | None = None, **kw
) -> tuple[int, str, str]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            p = execin.start(
                state_dir,
                h.run_id,
                args,
                (stdin if stdin is not None else null, out.fileno(), err.fileno()),
                **kw,
            )
            code = p.wait(timeout=30)
        finally:
            os.close(null)
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(), err.read().decode()


def status_field(text: str, name: str) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name + ":")
    )


def test_exec_runs_in_the_jobs_root_namespaces_and_cgroup_as_its_user(state_dir, public, alice):
    rootfs = make_rootfs(public / "root", {"/etc/marker": "the job's own root\n"})
    h = running(state_dir, rootfs, alice)
    try:
        script = "id -u; id -g; hostname; cat /etc/marker; cat /proc/1/comm; cat /proc/self/cgroup; cat /proc/self/status"
        code, out, err = exec_out(state_dir, h, ["sh", "-c", script])
        assert code == 0, err
        lines = out.splitlines()
        assert lines[:5] == [
            str(alice.uid),
            str(alice.gid),
            "testjob",
            "the job's own root",
            "mlq-init",
        ]
        # the job's cgroup namespace: its own cgroup is the root it sees
        assert "0::/" in out or ":/\n" in out
        status = out[out.index("Name:") :]
        assert int(status_field(status, "CapEff"), 16) == 0  # the job's command has none
        assert int(status_field(status, "CapPrm"), 16) == 0
        assert status_field(status, "NoNewPrivs") == "1"
        assert status_field(status, "Seccomp") == "2"  # the job's filter
        # the job's cgroup holds it: it counts toward the job's limits
        assert Path(f"/proc/{h.init_pid}/cgroup").read_text().strip()
    finally:
        kill_now(h)
        finish(h)


def test_exec_passes_exit_codes_and_says_what_it_could_not_run(state_dir, public, alice):
    h = running(state_dir, make_rootfs(public / "root"), alice)
    try:
        assert exec_out(state_dir, h, ["sh", "-c", "exit 7"])[0] == 7
        code, _, err = exec_out(state_dir, h, ["no-such-program"])
        assert code == 127 and "no-such-program: not found in the job's PATH" in err
        code, _, err = exec_out(state_dir, h, ["/etc"])
        assert code == 126
        code, _, _ = exec_out(state_dir, h, ["sh", "-c", "kill -TERM $$"])
        assert code == 128 + 15
    finally:
        kill_now(h)
        finish(h)


def test_exec_refuses_fds_that_reach_outside_the_job(state_dir, public, alice):
    h = running(state_dir, make_rootfs(public / "root"), alice)
    try:
        directory = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        path_only = os.open("/etc/hostname", os.O_PATH)
        try:
            with pytest.raises(
                InvalidInput, match="stdin: only a pipe, socket, terminal or regular file"
            ):
                exec_out(state_dir, h, ["true"], stdin=directory)
            with pytest.raises(InvalidInput, match="path-only"):
                exec_out(state_dir, h, ["true"], stdin=path_only)
        finally:
            os.close(directory)
            os.close(path_only)
        with pytest.raises(InvalidInput, match="command"):
            exec_out(state_dir, h, [])
    finally:
        kill_now(h)
        finish(h)


def test_exec_in_a_user_namespace_job_is_root_inside_and_the_user_outside(state_dir, public, alice):
    ns = Namespaces(
        user=True, uid_mappings=[IdMap(0, alice.uid, 1)], gid_mappings=[IdMap(0, alice.gid, 1)]
    )
    inside = User(uid=0, gid=0)
    h = running(state_dir, make_rootfs(public / "root"), inside, namespaces=ns)
    try:
        code, out, err = exec_out(state_dir, h, ["sh", "-c", "id -u; cat /proc/self/uid_map"])
        assert code == 0, err
        lines = out.split()
        assert lines[0] == "0"
        assert lines[1:4] == ["0", str(alice.uid), "1"]
    finally:
        kill_now(h)
        finish(h)


def test_what_exec_started_ends_with_the_job_and_an_ended_job_takes_no_exec(
    state_dir, public, alice
):
    h = running(state_dir, make_rootfs(public / "root"), alice)
    null = os.open("/dev/null", os.O_RDWR)
    try:
        p = execin.start(state_dir, h.run_id, ["sleep", "1000"], (null, null, null))
        time.sleep(0.3)
        assert p.poll() is None
        kill_now(h)
        finish(h)  # the job ends whoever waits for mlq exec's side
        assert p.wait(timeout=30) == 128 + 9  # the command was killed with the job
        with pytest.raises(Conflict, match="not running"):
            execin.start(state_dir, h.run_id, ["true"], (null, null, null))
    finally:
        os.close(null)
        subprocess.run(["true"])
