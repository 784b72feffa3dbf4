"""``mlq agent``: one node of a cluster. It runs what the control plane orders, with
the same local executor (and supervisors) as the single-machine daemon.

The agent syncs with the active control plane over mutual TLS (``wire.py``) and
makes the node match each answer: it starts each order it lacks, sends each stop
that an order asks for, and kills every run it holds that no order names under
that run's epoch (a run another decision replaced: the node was declared down
meanwhile, or its job was requeued). It keeps what it needs to re-adopt its runs
in ``<state>/agent/`` (each run's epoch, the highest term seen), so a restarted
agent re-adopts every run whose supervisor lives and reports it again.

Fencing, in both directions:
- an answer from a control plane whose term is lower than one already seen is
  ignored (a deposed leader gives no orders);
- without an answer for ``lease_s * wire.SELF_FENCE`` (half the lease) every run of
  the node is killed: the control plane declares the node down only after the whole
  lease and requeues its jobs then, so no job runs on two nodes at once. Each run's
  supervisor does it itself (the ``alive`` file this agent touches on every answer is
  its dead man's switch), so it holds when the agent is dead too; the agent also
  kills them when it notices.

Users on the node reach the cluster through the agent's Unix socket
(``agentproxy.py``), as they reach a single-machine daemon.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import select
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlq.executor import rundir
from mlq.executor.interface import LocalExecutor
from mlq.executor.request import Alive, LaunchRequest
from mlq.executor.status import Outcome, Status
from mlq.scheduler import pki, wire
from mlq.scheduler.errors import Conflict, Refused

log = logging.getLogger("mlq.agent")


@dataclass
class Run:
    job_id: int
    epoch: int
    state: str = "starting"  # "starting" | "running" | "ended"
    status: Status | None = None
    cgroup: str = ""
    stop_sent: str = ""  # "", "graceful" or "now"
    launching: bool = False


@dataclass
class AgentConfig:
    name: str
    servers: list[str]  # https://host:port of each control plane, active or standby
    ca: Path
    cert: Path
    key: Path
    state_dir: Path
    socket: Path
    cpus: int  # millicores
    memory: int  # bytes
    topology: str = ""  # its switches, outermost first (the node config's topology)
    # the node config's bridge for network: bridge jobs, put in every request it runs
    # (the control plane knows only its own node's)
    bridge: str = "mlq0"
    bridge_subnet: str = "10.88.0.0/16"


_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _maybe_closed(conn: http.client.HTTPSConnection, used: float) -> bool:
    """Whether an idle kept-alive connection may be closed by the server: idle long,
    or readable (nothing is owed on an idle connection: that is the server's close)."""
    if conn.sock is None:
        return False
    if time.monotonic() - used > wire.KEEP_ALIVE_S / 2:
        return True
    readable, _, _ = select.select([conn.sock], [], [], 0)
    return bool(readable)


class Link:
    """HTTPS to the control planes, trying each in turn (standbys do not listen).

    Each thread keeps its own kept-alive connection. One the server may have closed
    (idle for half of ``wire.KEEP_ALIVE_S``, or readable while idle: the server's
    close) is opened again before use, and a request that finds its reused connection
    closed anyway is sent once more on a new one to the same server when it is safe to
    repeat: counting that as the server's failure would send the request to a standby,
    which does not listen, and tell the user that no control plane answered.
    """

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.ctx = pki.client_context(cfg.ca, cfg.cert, cfg.key)
        self.index = 0
        self._index_lock = threading.Lock()
        self._local = threading.local()

    def _conn(self, timeout: float) -> tuple[http.client.HTTPSConnection, bool]:
        """This thread's connection, and whether it was used before."""
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is not None and _maybe_closed(conn, getattr(self._local, "used", 0.0)):
            self.drop()
            conn = None
        reused = conn is not None
        if conn is None:
            u = urlsplit(self.cfg.servers[self.index % len(self.cfg.servers)])
            conn = http.client.HTTPSConnection(
                u.hostname or "", u.port or 7800, context=self.ctx, timeout=timeout
            )
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, reused

    def drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _next_server(self, seen: int) -> None:
        """Move on from server ``seen`` (once, however many threads saw it fail)."""
        with self._index_lock:
            if self.index == seen:
                self.index += 1

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        repeatable: bool | None = None,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to the active control plane; on a connection failure the next
        server is tried (each once). ``repeatable``: whether sending it twice is
        harmless (by default, for GET and HEAD)."""
        if repeatable is None:
            repeatable = method in ("GET", "HEAD")
        last: Exception | None = None
        tries = len(self.cfg.servers)
        while tries > 0:
            seen = self.index
            conn, reused = self._conn(timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self._local.used = time.monotonic()
                return resp.status, resp.getheaders(), data
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                self.drop()
                if reused and repeatable and isinstance(exc, _CLOSED):
                    continue  # the server closed it as we sent: once more, new connection
                self._next_server(seen)
                tries -= 1
        raise ConnectionError(f"no control plane answered ({', '.join(self.cfg.servers)}): {last}")


class Agent:
    def __init__(self, cfg: AgentConfig, executor: LocalExecutor) -> None:
        self.cfg = cfg
        self.executor = executor
        self.link = Link(cfg)
        self.boot = uuid.uuid4().hex[:12]
        self.dir = cfg.state_dir / "agent"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.term = self._load_term()
        self.runs: dict[str, Run] = {}
        self.gen = -1
        self.lease_s = 30.0
        self.heartbeat_s = 2.0
        self.last_ok = time.monotonic()  # when the last answered sync was sent
        self.fenced = False
        self.send_facts = True
        self.fetched: list[wire.Fetched] = []
        self.state = "unknown"
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._nudge_r, self._nudge_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlq-launch")
        self._readopt()

    # -- state kept across restarts ------------------------------------------------

    def _load_term(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / "term").read_text())
        return 0

    def _save_term(self) -> None:
        tmp = self.dir / "term.tmp"
        tmp.write_text(str(self.term))
        os.replace(tmp, self.dir / "term")

    def _record(self, run_id: str, run: Run) -> None:
        tmp = self.dir / f"{run_id}.json.tmp"
        tmp.write_text(json.dumps({"job_id": run.job_id, "epoch": run.epoch}))
        os.replace(tmp, self.dir / f"{run_id}.json")

    def _unrecord(self, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{run_id}.json").unlink()

    def _readopt(self) -> None:
        """After a restart: every run this agent had, as its executor finds it."""
        for f in sorted(self.dir.glob("*.json")):
            run_id = f.name[: -len(".json")]
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            run = Run(int(rec["job_id"]), int(rec["epoch"]))
            found = self.executor.adopt(run_id)
            if found.running:
                run.state = "running"
                run.stop_sent = "graceful" if found.stop_asked else ""
            elif found.status is not None:
                run.state, run.status = "ended", found.status
            else:  # never started: nothing of it runs
                self.executor.discard(run_id)
                self._unrecord(run_id)
                continue
            self.runs[run_id] = run
            log.info("re-adopted run %s (epoch %d): %s", run_id, run.epoch, run.state)

    # -- mlq exec (execserver.py) ---------------------------------------------------

    def exec_target(self, caller: Any, job_id: int) -> tuple[LocalExecutor, str]:
        """The run of ``job_id`` running on this node, for its owner or root of this
        node (``caller``: an ``auth.Caller``); the refusal otherwise."""
        with self._lock:
            live = sorted(
                r for r, run in self.runs.items() if run.job_id == job_id and run.state == "running"
            )
        if not live:
            raise Conflict(
                f"job {job_id} is not running on node {self.cfg.name}: `mlq show {job_id}` "
                "names its node; run mlq exec there"
            )
        rid = live[-1]
        request = rundir.run_dir(self.cfg.state_dir, rid) / "request.json"
        try:
            owner = (json.loads(request.read_bytes()).get("submitter") or {}).get("uid")
        except (OSError, ValueError):
            owner = None
        if caller.peer.uid != 0 and caller.peer.uid != owner:
            raise Refused(
                f"{caller.user} may not exec into job {job_id}: a command there runs as its "
                "owner; only they and root of this node may"
            )
        return self.executor, rid

    # -- the sync ---------------------------------------------------------------------

    def facts(self) -> wire.NodeFacts:
        return wire.NodeFacts(
            cpus=self.cfg.cpus,
            memory=self.cfg.memory,
            gpus=self.executor.inventory().to_json(),
            state_dir=str(self.cfg.state_dir),
            socket=str(self.cfg.socket),
            topology=self.cfg.topology,
        )

    def _request(self, wait: bool) -> tuple[wire.SyncRequest, list[wire.Fetched]]:
        with self._lock:
            self._collect()
            reports = []
            stray = 0
            for rid, r in self.runs.items():
                stats = None
                if r.state == "running":
                    s = self.executor.stats(rid)
                    stats = {k: int(v) for k, v in vars(s).items()} if s else None
                reports.append(
                    wire.RunReport(
                        run_id=rid, epoch=r.epoch, state=r.state, cgroup=r.cgroup,
                        status=wire.status_json(r.status) if r.status else None, stats=stats,
                    )
                )  # fmt: skip
                if r.state != "ended" and r.stop_sent == "stray":
                    stray += 1
            marks = {}
            for r in self.runs.values():
                m = self.executor.checkpoint_mark(r.job_id)
                if m:
                    marks[str(r.job_id)] = m
            fetched, self.fetched = self.fetched, []
            req = wire.SyncRequest(
                node=self.cfg.name,
                boot=self.boot,
                term=self.term,
                gen=self.gen if wait else -1,
                facts=self.facts() if self.send_facts else None,
                runs=reports,
                marks=marks,
                fetched=fetched,
                stray=stray,
            )
        return req, fetched

    def sync(self, wait: bool = True) -> bool:
        """One sync: report, get the answer, act on it. True when it was answered."""
        req, fetched = self._request(wait)
        sent = time.monotonic()
        body = req.model_dump_json().encode()
        try:
            status, _, data = self.link.request(
                "POST", "/v1/agent/sync", body,
                {"Content-Type": "application/json"}, timeout=self.heartbeat_s + 5,
                repeatable=True,  # the node's whole state: the same answer twice
            )  # fmt: skip
        except ConnectionError as exc:
            log.warning("%s", exc)
            with self._lock:
                self.fetched = fetched + self.fetched  # say them again next time
            return False
        if status != 200:
            log.warning("sync refused (%d): %s", status, data[:300].decode(errors="replace"))
            with self._lock:
                self.fetched = fetched + self.fetched
            return False
        reply = wire.SyncReply.model_validate_json(data)
        with self._lock:
            if reply.term < self.term:
                log.warning("ignoring an answer of term %d (seen %d)", reply.term, self.term)
                self.link.drop()
                self.link.index += 1
                return False
            if reply.term > self.term:
                self.term = reply.term
                self._save_term()
            self.last_ok = max(self.last_ok, sent)
            self.lease_s, self.heartbeat_s = reply.lease_s, reply.heartbeat_s
            self._touch_alive()
            if self.fenced:
                log.warning("the control plane answers again")
                self.fenced = False
            if reply.want_facts:
                self.send_facts = True
                return True
            if req.facts is not None:
                self.send_facts = False
            self.state = reply.state
            self.gen = reply.gen
            self._reconcile(reply.orders)
            for f in reply.fetches:
                self.fetched.append(self._fetch(f))
            if reply.fetches:
                self.nudge()
        return True

    def _touch_alive(self) -> None:
        """The runs' dead man's switch: their supervisors kill them once this file is
        older than half the lease, with or without this agent."""
        path = self.dir / "alive"
        try:
            os.utime(path)
        except FileNotFoundError:
            path.touch()

    # -- making the node match -----------------------------------------------------

    def _reconcile(self, orders: list[wire.Order]) -> None:
        wanted = {o.run_id: o for o in orders}
        for rid, r in list(self.runs.items()):
            o = wanted.get(rid)
            if o is not None and o.epoch == r.epoch:
                continue
            if r.state == "ended":
                # its end is recorded (or no longer wanted): keep the output, drop the rest
                del self.runs[rid]
                self._unrecord(rid)
            elif r.stop_sent != "stray" and not r.launching:
                log.warning(
                    "run %s (epoch %d) is not this node's any more: killing it", rid, r.epoch
                )
                r.stop_sent = "stray"
                with contextlib.suppress(Exception):
                    self.executor.stop(rid, now=True)
        for rid, o in wanted.items():
            r = self.runs.get(rid)
            if r is None:
                r = self.runs[rid] = Run(o.job_id, o.epoch, launching=True)
                self._record(rid, r)
                self._pool.submit(self._launch, rid, o)
                continue
            if r.epoch != o.epoch or r.launching or r.state == "ended":
                continue
            if o.stop and r.stop_sent not in (o.stop, "now", "stray"):
                r.stop_sent = o.stop
                with contextlib.suppress(Exception):
                    self.executor.stop(rid, now=o.stop == "now")

    def _launch(self, rid: str, order: wire.Order) -> None:
        try:
            request = LaunchRequest.from_json(order.launch)
            if request.run_id != rid or Path(request.state_dir) != self.cfg.state_dir:
                raise ValueError("the order does not match this node (run id or state dir)")
            request.alive = Alive(str(self.dir / "alive"), self.lease_s * wire.SELF_FENCE)
            request.network.bridge = self.cfg.bridge
            request.network.subnet = self.cfg.bridge_subnet
            if request.root.image != "host":
                while not self._stop.is_set():
                    verdict = self.executor.image(request.root.image, request.host_user())
                    if verdict.error is not None:
                        raise RuntimeError(verdict.error)
                    if verdict.ready:
                        break
                    time.sleep(0.2)
            if self.executor.has_run(rid):  # left by an earlier, cut-short launch
                self.executor.discard(rid)
            started = self.executor.start(request)
            with self._lock:
                r = self.runs.get(rid)
                if r is not None:
                    r.state, r.cgroup, r.launching = "running", started.cgroup, False
                    if r.stop_sent:  # stopped while it launched
                        self.executor.stop(rid, now=r.stop_sent in ("now", "stray"))
        except Exception as exc:
            log.warning("run %s could not start: %s", rid, exc)
            with self._lock:
                r = self.runs.get(rid)
                if r is not None:
                    r.launching = False
                    r.state = "ended"
                    r.status = Status(
                        state=Outcome.FAILED, exit_code=-1, signal=None, duration_s=0.0,
                        max_memory_bytes=0, oom_kills=0, error=f"could not start: {exc}",
                    )  # fmt: skip
        self.nudge()

    def _collect(self) -> None:
        for rid, r in self.runs.items():
            if r.state == "running":
                status = self.executor.poll(rid)
                if status is not None:
                    r.state, r.status = "ended", status

    def _fetch(self, f: wire.Fetch) -> wire.Fetched:
        try:
            if f.kind == "has":
                return wire.Fetched(id=f.id, runs=[r for r in f.runs if self.executor.has_run(r)])
            if f.kind == "volumes":
                found = self.executor.volumes.list(sizes=f.sizes)
                return wire.Fetched(id=f.id, volumes=[(v.key, v.modified, v.bytes) for v in found])
            if f.kind == "drop":
                removed = []
                for key in f.keys:
                    try:
                        removed.append((key, 0.0, self.executor.volumes.remove(key)))
                    except OSError as exc:
                        log.warning("remove checkpoint volume %s: %s", key, exc)
                return wire.Fetched(id=f.id, volumes=removed)
            skipped, data, limit = self.executor.read_log(f.run_id, f.stream, f.offset, f.limit)
            return wire.Fetched(
                id=f.id, skipped=skipped, data=base64.b64encode(data).decode(), limit=limit
            )
        except Exception as exc:
            return wire.Fetched(id=f.id, error=f"{type(exc).__name__}: {exc}")

    # -- fencing -----------------------------------------------------------------------

    def check_fence(self) -> None:
        """No answer for half the lease: stop every run before the control plane may
        declare this node down and start its jobs elsewhere."""
        with self._lock:
            silent = time.monotonic() - self.last_ok
            if self.fenced or silent < self.lease_s * wire.SELF_FENCE:
                return
            self.fenced = True
            live = [rid for rid, r in self.runs.items() if r.state != "ended"]
            log.error(
                "no answer from the control plane for %.1fs (lease %gs): killing %d runs",
                silent, self.lease_s, len(live),
            )  # fmt: skip
            for rid in live:
                self.runs[rid].stop_sent = "stray"
                with contextlib.suppress(Exception):
                    self.executor.stop(rid, now=True)

    # -- threads --------------------------------------------------------------------

    def nudge(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._nudge_w, b"x")

    def run(self) -> None:
        """Until ``stop``: the long-poll sync, a watcher that reports at once when a run
        ends, and the fence."""
        threading.Thread(target=self._watch, name="mlq-agent-watch", daemon=True).start()
        while not self._stop.is_set():
            ok = self.sync(wait=True)
            self.check_fence()
            if not ok:
                self._stop.wait(min(1.0, self.heartbeat_s / 2))

    def _watch(self) -> None:
        # its own connection (Link's are per thread): the long poll holds the other
        while not self._stop.is_set():
            with self._lock:
                fds = [self._nudge_r, *self.executor.wait_fds()]
            with contextlib.suppress(OSError, ValueError):
                r, _, _ = select.select(fds, [], [], 0.2)
            self.check_fence()
            if not r:
                continue
            with contextlib.suppress(BlockingIOError):
                while os.read(self._nudge_r, 4096):
                    pass
            with self._lock:
                self._collect()
            self.sync(wait=False)

    def stop(self) -> None:
        self._stop.set()
        self.nudge()
        self._pool.shutdown(wait=False, cancel_futures=True)
