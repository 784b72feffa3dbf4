"""``mlq exec``'s socket: ``<the API socket>.exec`` (docs/daemon.md "mlq exec").

A command inside a running job gets the caller's own stdin, stdout and stderr (or
the pty ``mlq exec -t`` made), passed over this Unix socket with SCM_RIGHTS, so no
byte of it goes through the daemon and a terminal is a real one. One connection is
one command:

1. the client sends one JSON line, ``{"job": ID, "args": [...], "tty": false,
   "env": {"TERM": "xterm"}}``, with its three fds;
2. the daemon answers ``{"started": true}`` or ``{"error": "Refused", "message": ...}``
   (a started command's end may come first: a client reads lines until an end);
3. when the command ends, ``{"exit": CODE}``, written by the runtime, which holds
   the connection from then on (the daemon waits for nothing). A client that goes
   away (Ctrl-C without a terminal) has its command sent SIGHUP, then SIGKILL 5 s
   later (executor/runtime/exec.c).

Who may: the job's owner and mlq admins (it runs as the job's user: a team admin may
cancel a member's job, never act as the member). The kernel names the caller
(SO_PEERCRED). Only a RUNNING job on this process's own node: ``mlq server`` serves
it for its node (``daemon_target``), a cluster's agent for its own (``Agent.exec_target``:
there the job's owner and root of the node, whose admins are not the cluster's). The
executor refuses fds that could reach outside the job. At most ``MAX_EXECS`` running, ``PER_USER`` per user;
a request line is read within ``REQUEST_TIMEOUT_S`` and at most ``REQUEST_MAX`` bytes,
so no client can hold the daemon's threads.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from mlq.scheduler import states
from mlq.scheduler.daemon.auth import Caller
from mlq.scheduler.daemon.logs import run_id
from mlq.scheduler.daemon.peer import peer_of
from mlq.scheduler.errors import Conflict, InvalidInput, MlqError, Refused
from mlq.scheduler.store import Store

log = logging.getLogger("mlq.exec")

MAX_EXECS = 64
PER_USER = 8
REQUEST_MAX = 256 * 1024
REQUEST_TIMEOUT_S = 10.0
CONNECTIONS = 128  # being read at once; more are closed at once (a flood holds nothing)


# (who asks, the job's ID) -> (the executor that runs it here, its run's ID), or raise
# the refusal: where the job is and who may are the server's or the agent's to know
Target = Callable[[Caller, int], tuple[Any, str]]


def daemon_target(store: Store, loop: Any) -> Target:
    """``mlq server``'s: the store says whose the job is and where it runs."""

    def target(caller: Caller, job_id: int) -> tuple[Any, str]:
        job = store.job(job_id)  # NotFound names the job
        if not (caller.is_admin or job.user == caller.user):
            raise Refused(
                f"{caller.user} may not exec into job {job_id}: it belongs to {job.user} "
                "(a command there runs as its owner; only they and mlq admins may)"
            )
        if job.state != states.RUNNING:
            raise Conflict(
                f"job {job_id} is {job.state}, not RUNNING: mlq exec enters running jobs"
            )
        executor = loop.executor_of(job) if loop is not None else None
        if executor is None or not hasattr(executor, "exec_in"):
            raise Conflict(
                f"job {job_id} runs on node {job.node}: run mlq exec on that node "
                "(its agent's socket)"
            )
        return executor, run_id(job)

    return target


class ExecServer:
    def __init__(self, path: str, target: Target, admin_group: str) -> None:
        self.path = path
        self.target = target
        self.admin_group = admin_group
        self._sock: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(CONNECTIONS)
        self._lock = threading.Lock()
        self._running: dict[int, list[subprocess.Popen[bytes]]] = {}  # uid -> its execs

    def start(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            os.unlink(self.path)  # a stale socket: the daemon's state dir lock is held
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)  # who may is decided per request, as on the API socket
        sock.listen(64)
        self._sock = sock
        threading.Thread(target=self._accept, name="mlq-exec", daemon=True).start()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    # -- one connection ----------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)
            peer = peer_of(conn)
            request, fds = _read_request(conn)
            caller = Caller.of(peer, self.admin_group)
            with self._lock:
                for uid in list(self._running):  # those that ended (or the loop reaped)
                    self._running[uid] = [p for p in self._running[uid] if p.poll() is None]
                mine = self._running.setdefault(peer.uid, [])
                if len(mine) >= PER_USER or sum(map(len, self._running.values())) >= MAX_EXECS:
                    raise Conflict(
                        f"too many mlq exec commands at once (at most {PER_USER} per user, "
                        f"{MAX_EXECS} in all); wait for one to end"
                    )
                mine.append(self._start(caller, request, fds, conn.fileno()))
            # the runtime may have written the end already: the client takes either order
            _send(conn, {"started": True})
        except MlqError as exc:
            _send(conn, {"error": type(exc).__name__, "message": str(exc)})
        except (OSError, ValueError) as exc:
            log.info("mlq exec: a connection failed: %s", exc)
        except Exception:  # the daemon survives any request
            log.exception("mlq exec failed")
            message = "mlq exec failed in the daemon (its log says why)"
            _send(conn, {"error": "Internal", "message": message})
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()  # the runtime holds its own copy
            self._slots.release()

    def _start(
        self, caller: Caller, request: dict[str, Any], fds: list[int], report: int
    ) -> subprocess.Popen[bytes]:
        job_id, args, tty, env = _parse(request)
        if len(fds) != 3:
            raise InvalidInput(
                "mlq exec passes its stdin, stdout and stderr: 3 files, not " + str(len(fds))
            )
        executor, rid = self.target(caller, job_id)
        stdio = (fds[0], fds[1], fds[2])
        return executor.exec_in(rid, args, stdio, tty=tty, env=env, report=report)  # type: ignore[no-any-return]


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, REQUEST_MAX, 3)
    while not data.endswith(b"\n"):
        if len(data) >= REQUEST_MAX:
            for fd in fds:
                os.close(fd)
            raise InvalidInput(f"the request is longer than {REQUEST_MAX} bytes")
        more = conn.recv(REQUEST_MAX - len(data))
        if not more:
            for fd in fds:
                os.close(fd)
            raise InvalidInput("the request ended before its end of line")
        data += more
    try:
        request = json.loads(data)
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise InvalidInput("the request is not JSON") from None
    if not isinstance(request, dict):
        for fd in fds:
            os.close(fd)
        raise InvalidInput("the request is not a JSON object")
    return request, list(fds)


def _parse(request: dict[str, Any]) -> tuple[int, list[str], bool, dict[str, str]]:
    job_id = request.get("job")
    if not isinstance(job_id, int) or isinstance(job_id, bool) or not 1 <= job_id < 2**63:
        raise InvalidInput("job: give a job ID (a positive integer)")
    args = request.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidInput("command: give the program and its arguments, e.g. mlq exec 12 -- ls -l")
    if len(args) > 4096:
        raise InvalidInput("command: at most 4096 arguments")
    tty = request.get("tty", False)
    env = request.get("env") or {}
    if not isinstance(tty, bool) or not isinstance(env, dict):
        raise InvalidInput("tty: true or false; env: names and values")
    if len(env) > 16 or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise InvalidInput("env: at most 16 names with string values")
    return job_id, args, tty, env


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass  # the client went away; the command's end is logged nowhere else
