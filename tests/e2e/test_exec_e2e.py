"""``mlq exec`` through a real daemon: the job's owner runs commands inside it (its
output straight to their terminal or pipe, stdin with -i, a terminal with -t, the
command's exit code); another user, a pending job and a broken request are refused
with one line and 125; the daemon survives hostile clients of its exec socket."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import time

from daemon_helpers import MLQ

LONG = """
name: sleeper
team: nlp
command: [/bin/sh, -c, 'echo up; while [ ! -e /gate/open ]; do sleep 0.1; done']
resources: {{cpus: 1, memory: 128Mi}}
volumes: [{{source: {gate}, target: /gate, readonly: true}}]
"""


def as_user(user) -> dict:
    return {
        "user": user.pw_uid,
        "group": user.pw_gid,
        "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
    }


def running_job(d, user) -> tuple[int, object]:
    gate = d.home / "gate"
    gate.mkdir(exist_ok=True)
    job = d.submit(LONG.format(gate=gate), user=user)
    d.wait_for(job, "RUNNING")
    return job, gate


def test_the_owner_runs_commands_inside_their_job_and_others_are_refused(make_daemon, unix_users):
    d = make_daemon()
    alice, bob = unix_users["alice"], unix_users["bob"]
    job, gate = running_job(d, alice)

    r = d.cli(
        "exec",
        str(job),
        "--",
        "sh",
        "-c",
        "id -un; cat /proc/1/comm; echo $MLQ_JOB_ID; cat /proc/self/status",
        user=alice,
    )
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[:3] == [alice.pw_name, "mlq-init", str(job)]
    caps = next(line for line in lines if line.startswith("CapEff:"))
    assert int(caps.split()[1], 16) == 0  # the job's own (none), not the daemon's
    assert "NoNewPrivs:\t1" in r.out

    # the command's exit code, and the codes of a command that cannot start
    assert d.cli("exec", str(job), "--", "sh", "-c", "exit 5", user=alice).code == 5
    missing = d.cli("exec", str(job), "--", "no-such-tool", user=alice)
    assert missing.code == 127 and "no-such-tool: not found" in missing.err

    # -i: stdin goes to it; piped output comes straight back
    p = subprocess.run(
        [MLQ, "exec", "-i", str(job), "--", "sh", "-c", "tr a-z A-Z"],
        input="hello from stdin\n", capture_output=True, text=True, timeout=60,
        env=d.env(), **as_user(alice),
    )  # fmt: skip
    assert p.returncode == 0 and p.stdout == "HELLO FROM STDIN\n", p.stderr

    # a teammate who is not its owner: refused, one line, mlq's own code
    r = d.cli("exec", str(job), "--", "id", user=bob)
    assert r.code == 125
    assert f"{bob.pw_name} may not exec into job {job}" in r.err and "Traceback" not in r.err

    (gate / "open").touch()
    d.wait_for(job, "COMPLETED")
    r = d.cli("exec", str(job), "--", "id", user=alice)
    assert r.code == 125 and "not RUNNING" in r.err
    r = d.cli("exec", "999", "--", "id", user=alice)
    assert r.code == 125 and "999" in r.err


def test_exec_with_a_terminal_gives_the_command_a_tty_and_its_exit_code(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    job, gate = running_job(d, alice)
    pid, fd = pty.fork()
    if pid == 0:  # the child: alice at a terminal, running mlq exec -it
        os.setgroups(os.getgrouplist(alice.pw_name, alice.pw_gid))
        os.setgid(alice.pw_gid)
        os.setuid(alice.pw_uid)
        os.execve(MLQ, [MLQ, "exec", "-it", str(job), "--", "sh"], d.env() | {"TERM": "dumb"})
    out = b""

    def read_until(marker: bytes, timeout: float = 30) -> bytes:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out:
            assert time.monotonic() < deadline, f"never saw {marker!r}; got {out!r}"
            readable, _, _ = select.select([fd], [], [], 0.5)
            if readable:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        return out

    try:
        read_until(b"$ ")  # the shell's prompt
        os.write(fd, b"test -t 0 && echo IS-A-TTY; echo TERM=$TERM\n")
        read_until(b"IS-A-TTY\r\n")  # its answer, not the echo of the line
        read_until(b"TERM=dumb")
        os.write(fd, b"exit 3\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        os.close(fd)
        (gate / "open").touch()
    d.wait_for(job, "COMPLETED")


def test_the_exec_socket_survives_hostile_requests(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    job, gate = running_job(d, alice)
    path = str(d.socket) + ".exec"

    def ask(payload: bytes, fds: list[int] | None = None) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(path)
            if fds:
                socket.send_fds(s, [payload], fds)
            else:
                s.sendall(payload)
            return json.loads(s.makefile().readline())

    root_dir = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert ask(b"not json\n")["error"] == "InvalidInput"
        assert ask(b"[1, 2]\n")["error"] == "InvalidInput"
        request = json.dumps({"job": job, "args": ["id"]}).encode() + b"\n"
        got = ask(request)  # no fds: refused, nothing started
        assert got["error"] == "InvalidInput" and "3 files" in got["message"]
        # a directory as stdin would be a way out of the job's root: refused
        got = ask(request, [root_dir, 1, 2])
        assert got["error"] == "InvalidInput" and "stdin" in got["message"]
        with socket.socket(socket.AF_UNIX) as s:  # a client that sends half and goes
            s.connect(path)
            s.sendall(b'{"job": ')
        # the daemon still answers, and the job still runs
        assert d.cli("queue", user=alice).code == 0
        assert d.show(job)["state"] == "RUNNING"
    finally:
        os.close(root_dir)
        (gate / "open").touch()
    d.wait_for(job, "COMPLETED")


ASKS = """
name: asks
team: nlp
command: [/bin/sh, -c, 'read x; echo "got $x"; test -t 0 && echo TTY; exit 4']
resources: {cpus: 1, memory: 64Mi}
time_limit: 5m
"""


def test_an_interactive_job_runs_its_command_with_the_submitters_stdin_and_ends_as_it_did(
    make_daemon, unix_users
):
    d = make_daemon()
    alice = unix_users["alice"]
    path = d.job_file("asks.yaml", ASKS)
    p = subprocess.run(
        [MLQ, "submit", "-i", str(path)], input="hello\n", capture_output=True, text=True,
        timeout=60, env=d.env(), cwd=str(d.home), **as_user(alice),
    )  # fmt: skip
    assert p.returncode == 4, p.stderr
    assert p.stdout == "got hello\n"  # no terminal without -t
    job = int(p.stderr.split("Submitted job ")[1].split()[0])
    ended = d.wait_for(job, {"FAILED", "COMPLETED"})
    assert ended["state"] == "FAILED" and ended["exit_code"] == 4  # the job ends as it did

    # -it: a terminal; the job is COMPLETED when its command exits 0
    pid, fd = pty.fork()
    if pid == 0:
        os.setgroups(os.getgrouplist(alice.pw_name, alice.pw_gid))
        os.setgid(alice.pw_gid)
        os.setuid(alice.pw_uid)
        os.chdir(d.home)
        os.execve(MLQ, [MLQ, "submit", "-it", str(path)], d.env())
    out = b""
    deadline = time.monotonic() + 60
    try:
        os.write(fd, b"typed\n")
        while b"TTY" not in out:
            assert time.monotonic() < deadline, out
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
        assert b"got typed" in out
    finally:
        os.close(fd)

    r = d.cli("submit", "-t", str(path), user=alice)
    assert r.code == 2 and "-i" in r.err


def test_an_interactive_job_whose_terminal_goes_away_ends_hung_up_and_one_can_attach_later(
    make_daemon, unix_users
):
    d = make_daemon()
    alice = unix_users["alice"]
    path = d.job_file("asks.yaml", ASKS)
    p = subprocess.Popen(
        [MLQ, "submit", "-i", str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=d.env(), cwd=str(d.home), **as_user(alice),
    )  # fmt: skip
    job = int(p.stderr.readline().split()[-1])  # "Submitted job N"
    d.wait_for(job, "RUNNING")
    time.sleep(1)  # its command now waits on stdin
    p.kill()  # the terminal goes away (ssh dropped): the command is hung up
    p.wait()
    ended = d.wait_for(job, {"FAILED", "COMPLETED"})
    assert ended["state"] == "FAILED" and ended["exit_code"] == 128 + 1  # SIGHUP

    # a job file may say interactive: true itself; mlq attach gives it a terminal later
    later = d.job_file(
        "later.yaml", ASKS.replace("name: asks", "name: later") + "interactive: true\n"
    )
    job = d.submit(later.read_text(), user=alice)
    d.wait_for(job, "RUNNING")
    r = subprocess.run(
        [MLQ, "attach", str(job)], input="later\n", capture_output=True, text=True,
        timeout=60, env=d.env(), **as_user(alice),
    )  # fmt: skip
    assert r.returncode == 4 and r.stdout == "got later\n", r.stderr
    assert d.wait_for(job, {"FAILED"})["exit_code"] == 4
    # attach to a job that is not interactive: refused, saying what to use
    plain = d.submit(ASKS.replace("name: asks", "name: plain"), user=alice)
    r = d.cli("attach", str(plain), user=alice)
    assert r.code == 125 and "not interactive" in r.err
