"""``mlq exec ID -- CMD``: a command inside a running job, as ``docker exec``.

The command gets this process's own stdout and stderr (and stdin with ``-i``), passed
to the daemon over its exec socket (scheduler/daemon/execserver.py), so output is
never relayed and pipes work as they do locally. ``-t`` makes a pseudo-terminal here
and passes its other end: this process relays the user's terminal (raw mode, window
size) to it. The exit code is the command's; mlq's own errors exit 125, a command that cannot
be executed 126, one not found 127 (``docker exec``'s codes; cli/main.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import tty as ttymod
from typing import Annotated, Any

import typer
from mlq.cli.client import socket_path
from mlq.cli.jobs import SocketOpt
from mlq.scheduler.errors import HTTP_STATUS, InvalidInput, MlqError, Unreachable

ERRORS = {cls.__name__: cls for cls in HTTP_STATUS}  # the daemon's refusals, by name


def _connect(sock: str | None) -> socket.socket:
    from mlq.scheduler.paths import exec_socket_path  # light: not the daemon's modules

    path = exec_socket_path(socket_path(sock))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError as exc:
        s.close()
        raise Unreachable(
            f"cannot reach mlq exec's socket {path}: {exc.strerror or exc}; is `mlq server` "
            "running on this node? (in a cluster, run mlq exec on the job's node)"
        ) from None
    return s


class _Lines:
    """The daemon's JSON lines on the exec socket."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def feed(self) -> list[dict[str, Any]]:
        data = self.s.recv(65536)
        if not data:
            raise MlqError("mlq exec: the daemon closed the connection before the command ended")
        self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out


def _outcome(message: dict[str, Any]) -> int | None:
    """The exit code an end message gives; raises a daemon's refusal as its error."""
    if "error" in message:
        raise ERRORS.get(str(message["error"]), MlqError)(str(message.get("message", "")))
    if "exit" in message:
        return int(message["exit"])
    return None


def _winsize(fd: int) -> bytes:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    except OSError:
        return struct.pack("HHHH", 24, 80, 0, 0)


def _relay(s: socket.socket, master: int) -> int:
    """The user's terminal <-> the pty's master until the command's end comes."""
    lines = _Lines(s)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    code: int | None = None
    master_open = True
    winch_r, winch_w = os.pipe()
    os.set_blocking(winch_w, False)
    signal.set_wakeup_fd(winch_w)
    signal.signal(signal.SIGWINCH, lambda *_: None)
    try:
        while code is None or master_open:
            watch = [s, winch_r] + ([master, stdin] if master_open else [])
            if code is not None:
                watch = [master, winch_r]
            readable, _, _ = select.select(watch, [], [], 0.5 if code is not None else None)
            if code is not None and not readable:
                break  # the command ended and its terminal is drained
            if winch_r in readable:
                os.read(winch_r, 64)
                with contextlib.suppress(OSError):
                    fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(stdout))
            if s in readable and code is None:
                for message in lines.feed():
                    got = _outcome(message)
                    if got is not None:
                        code = got
            if master_open and master in readable:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:  # EIO: every end of the slave is closed
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if data:
                    os.write(stdout, data)
                else:
                    master_open = False
            if master_open and stdin in readable:
                data = os.read(stdin, 65536)
                if data:
                    os.write(master, data)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(winch_r)
        os.close(winch_w)
    return code if code is not None else 125


def exec_(
    job_id: Annotated[int, typer.Argument(help="A running job's ID", min=1)],
    command: Annotated[list[str], typer.Argument(help="The program and its arguments, after --")],
    interactive: Annotated[
        bool, typer.Option("--interactive", "-i", help="Pass this terminal's stdin to it")
    ] = False,
    tty: Annotated[
        bool, typer.Option("--tty", "-t", help="Give it a terminal (with -i: a shell in the job)")
    ] = False,
    sock: SocketOpt = None,
) -> None:
    """Run a command inside a running job: its namespaces, root, cgroup, user and
    privileges, never more (the job's owner and mlq admins; docs/daemon.md)."""
    if command[:1] == ["--"]:  # after the job ID, options end anyway (docker exec's way)
        command = command[1:]
    if not command:
        raise InvalidInput("mlq exec: give the command after the job ID, e.g. mlq exec 12 -- ls")
    raise typer.Exit(run_in_job(job_id, command, interactive, tty, sock))


def run_in_job(
    job_id: int, command: list[str], interactive: bool, tty: bool, sock: str | None
) -> int:
    """``command`` in running job ``job_id`` with this process's stdio (or a pty it
    relays); its exit code. ``mlq exec`` and ``mlq submit -i`` (interactive jobs)."""
    if tty and not sys.stdin.isatty():
        raise MlqError("-t: stdin is not a terminal; leave out -t to pipe into it")
    s = _connect(sock)
    request: dict[str, Any] = {"job": job_id, "args": command, "tty": tty}
    null = -1
    master = slave = -1
    try:
        if tty:
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(sys.stdout.fileno()))
            request["env"] = {"TERM": os.environ.get("TERM", "xterm")}
            fds = [slave, slave, slave]
        else:
            null = os.open(os.devnull, os.O_RDONLY)
            stdin = sys.stdin.fileno() if interactive else null
            fds = [stdin, sys.stdout.fileno(), sys.stderr.fileno()]
        sys.stdout.flush()
        socket.send_fds(s, [json.dumps(request).encode() + b"\n"], fds)
        if slave >= 0:
            os.close(slave)
            slave = -1
        if null >= 0:
            os.close(null)
            null = -1
        if tty:
            saved = termios.tcgetattr(sys.stdin.fileno())
            ttymod.setraw(sys.stdin.fileno(), termios.TCSANOW)  # keep what was typed ahead
            try:
                return _relay(s, master)
            finally:
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        lines = _Lines(s)
        while True:
            for message in lines.feed():
                got = _outcome(message)
                if got is not None:
                    return got
    finally:
        for fd in (null, master, slave):
            if fd >= 0:
                os.close(fd)
        s.close()


def register(app: typer.Typer) -> None:
    app.command(
        "exec",
        context_settings={"allow_interspersed_args": False},
    )(exec_)
