"""A command inside a running job: ``mlq exec`` (``docker exec``'s counterpart).

The caller's stdin, stdout and stderr (pipes, a terminal, a file; never a directory
or a path-only fd, which would be a way out of the job's root) become the command's
fds 0-2; the runtime (``mlq-runtime exec``, executor/runtime/exec.c) joins the job's
cgroup and namespaces and becomes what the job's command became (ids, groups, user
namespace, capabilities, seccomp, no_new_privs, working directory, environment)
before it execs. It knows nothing of who asked: the caller checks that.
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess

from mlq.executor import helper, rundir, runner
from mlq.executor.errors import Conflict, InvalidInput

NAME_MAX = 255  # an environment name the caller adds (TERM)
VALUE_MAX = 4096


def check_fd(fd: int, which: str) -> None:
    """Refuse an fd that could reach outside the job: a directory, an O_PATH fd, or
    anything but a pipe, socket, character device or regular file."""
    try:
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise InvalidInput(f"{which}: not an open file ({exc.strerror})") from None
    if flags & getattr(os, "O_PATH", 0o10000000):
        raise InvalidInput(f"{which}: a path-only (O_PATH) file is not allowed")
    mode = st.st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISREG(mode)):
        raise InvalidInput(
            f"{which}: only a pipe, socket, terminal or regular file is allowed, not a "
            + ("directory" if stat.S_ISDIR(mode) else "block device or other file")
        )


def start(
    state_dir: str,
    run_id: str,
    args: list[str],
    stdio: tuple[int, int, int],
    tty: bool = False,
    env: dict[str, str] | None = None,
    report: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in run ``run_id``; its exit code is the command's (125: mlq
    exec's own failure, 126/127: the exec's, 128+N: killed by signal N). ``report``:
    a connected socket that gets ``{"exit": N}`` at the end, and whose peer going
    away hangs the command up (exec.c)."""
    if not args or not all(isinstance(a, str) and "\0" not in a for a in args):
        raise InvalidInput("command: give the program and its arguments, e.g. -- ls -l")
    for i, fd in enumerate(stdio):
        check_fd(fd, ("stdin", "stdout", "stderr")[i])
    extra: list[str] = []
    for name, value in (env or {}).items():
        bad = not name or len(name) > NAME_MAX or "=" in name or "\0" in name
        if bad or len(value) > VALUE_MAX or "\0" in value:
            raise InvalidInput(f'env: "{name[:40]}" is not a name=value mlq exec passes')
        extra += ["--env", f"{name}={value}"]
    run_dir = str(rundir.run_dir(state_dir, run_id))
    sup = runner._supervisor(run_dir)
    info = runner._read_json(os.path.join(run_dir, "supervisor.json")) or {}
    init_pid = int(info.get("init_pid", 0))
    plan_path = os.path.join(run_dir, "plan")
    ended = os.path.exists(os.path.join(run_dir, "status.json"))  # its supervisor tidies up
    if sup is None or ended or init_pid < 2 or not os.path.exists(plan_path):
        raise Conflict(f"run {run_id} is not running here")
    argv = [helper.path(), "exec", plan_path, str(init_pid)]
    argv += (["--tty"] if tty else []) + (["--report", str(report)] if report is not None else [])
    argv += extra + ["--", *args]
    return subprocess.Popen(
        argv,
        stdin=stdio[0],
        stdout=stdio[1],
        stderr=stdio[2],
        close_fds=True,
        pass_fds=(report,) if report is not None else (),
        env={},
    )
