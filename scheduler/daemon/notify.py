"""Job notifications: a webhook per job (``notify:`` in the job file) and per team
(``mlq team set-webhook``), POSTed when a job ends or is preempted
(docs/notifications.md).

The store tells the ``Notifier`` of what it committed (``Store.listeners``); the
notifier only puts it on a bounded queue, so a pass or an API request never waits on
the network, and a full queue drops the event with a log line. Sender threads drain
the queue: each builds the payload, resolves the host, checks every address against
the destination rules (``scheduler/webhooks.py``) and connects to the address it
checked, with one deadline over the whole attempt (connect, send, answer) and a few
retries with backoff. Nothing is followed: a redirect is an answer, not a new
destination. The queue lives in memory: a control plane that dies loses what it had
not sent yet.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import SplitResult, urlsplit

from mlq.executor.units import format_duration
from mlq.scheduler import states
from mlq.scheduler.cluster import NotifyConfig
from mlq.scheduler.daemon.schemas import iso, job_dict
from mlq.scheduler.store import Notice, Store
from mlq.scheduler.webhooks import EVENTS, Rules, shown

log = logging.getLogger("mlq.notify")
EVENT_NAMES = {"ended": "job.ended", "preempted": "job.preempted"}
MAX_ANSWER = 64 * 1024  # what is read of an answer (and then dropped)
MAX_TEXT_REASON = 300  # the reason's share of the one-line summary
DROP_LOG_S = 10.0  # a full queue says so at most this often (with the count)


@dataclass(frozen=True)
class Delivery:
    """One POST to make: to ``url``, the payload ``body`` of ``event`` for ``job_id``."""

    url: str
    body: bytes
    event: str
    job_id: int
    source: str  # "job" or "team": whose webhook it is (for the log)
    # the same on every attempt, so a receiver can tell a retry from a new event
    id: str = ""


@dataclass(frozen=True)
class Attempt:
    """How one attempt went: ``status`` (0 if no answer), ``error``, and whether
    another attempt may do better."""

    status: int
    error: str = ""
    retry: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Notifier:
    """Sends notifications from its own threads; ``tell`` is the store's listener."""

    def __init__(
        self,
        store: Store,
        config: NotifyConfig,
        backoff: float = 1.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.store = store
        # the system's CAs verify each https webhook's certificate (tests pass their own)
        self.tls = tls or ssl.create_default_context()
        self.rules: Rules = config.rules()
        self.timeout = float(config.timeout)
        self.attempts = config.attempts
        self.backoff = backoff  # seconds before the second attempt; doubled after
        self.senders = config.senders
        self._queue: queue.Queue[Notice | Delivery | None] = queue.Queue(config.queue)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.counts = {"sent": 0, "failed": 0, "dropped": 0, "refused": 0}
        self._counts_lock = threading.Lock()
        self._dropped_unsaid = 0  # drops since the last log line about them
        self._drop_said_at = -DROP_LOG_S

    # -- the store's side: never blocks ---------------------------------------------

    def tell(self, notices: list[Notice]) -> None:
        for n in notices:
            self._put(n)

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    def _put(self, item: Notice | Delivery) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # a thousand cancelled jobs must not write a thousand lines: one line, then
            # one every DROP_LOG_S with how many went since
            job = item.job.get("id") if isinstance(item, Notice) else item.job_id
            with self._counts_lock:
                self.counts["dropped"] += 1
                self._dropped_unsaid += 1
                now = time.monotonic()
                if now - self._drop_said_at < DROP_LOG_S:
                    return
                dropped, self._dropped_unsaid, self._drop_said_at = self._dropped_unsaid, 0, now
            log.warning(
                "notifications: %d events wait to be sent already; dropped %d (the last "
                "for job %s)",
                self._queue.maxsize, dropped, job,
            )  # fmt: skip

    # -- the senders ----------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.senders):
            t = threading.Thread(target=self._work, name=f"mlq-notify-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the senders; what is still queued is lost (docs/notifications.md)."""
        self._stopping.set()
        for _ in self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                if isinstance(item, Notice):
                    for d in self.deliveries(item):
                        self._put(d)
                else:
                    self.deliver(item)
            except Exception:  # one bad event must not end a sender
                log.exception("notifications: an event could not be handled")

    def deliveries(self, n: Notice) -> list[Delivery]:
        """The POSTs one notice makes: the job's webhook if its ``events`` want it,
        and its team's. A multi-node job is told once, by its first part."""
        job = n.job
        if job.get("gang_rank") not in (None, 0):
            return []
        urls: list[tuple[str, str]] = []
        notify = _spec_notify(dict(self.store.specs([int(str(job["id"]))])).get(job["id"]))
        wanted = notify.get("events") if notify is not None else None
        if notify is not None and wants(n, wanted if isinstance(wanted, list) else list(EVENTS)):
            urls.append((str(notify.get("webhook") or ""), "job"))
        team = next((t for t in self.store.teams() if t.name == job.get("team")), None)
        if team is not None and team.webhook:
            urls.append((team.webhook, "team"))
        seen: set[str] = set()
        out = []
        body = json.dumps(payload(n, self.nodes(n)), separators=(",", ":")).encode()
        for url, source in urls:
            if url and url not in seen:
                seen.add(url)
                out.append(
                    Delivery(
                        url, body, EVENT_NAMES[n.event], int(job["id"]), source, uuid.uuid4().hex
                    )
                )
        return out

    def nodes(self, n: Notice) -> list[str]:
        """The nodes the job ran on: its own, and a multi-node job's other parts'."""
        node = n.job.get("node")
        out = [str(node)] if node else []
        gang = n.job.get("gang_id")
        if gang is not None:
            for part in self.store.jobs(gang=int(str(gang)), with_spec=False):
                if part.node and part.node not in out:
                    out.append(part.node)
        return out

    def deliver(self, d: Delivery) -> Attempt:
        """POST ``d`` until it is answered 2xx, it fails for good, or the attempts are
        spent; logs how it went (the URL's scheme and host, never its path)."""
        where = f"{d.source} webhook {shown(d.url)}"
        attempt = Attempt(0, "not tried")
        for n in range(1, self.attempts + 1):
            attempt = self.post(d.url, d.body, {"X-Mlq-Event": d.event, "X-Mlq-Delivery": d.id})
            if attempt.ok:
                self._count("sent")
                log.info("notified %s of %s of job %d", where, d.event, d.job_id)
                return attempt
            if not attempt.retry or n == self.attempts or self._stopping.is_set():
                break
            self._stopping.wait(self.backoff * 2 ** (n - 1))
        self._count("failed")
        log.warning(
            "could not notify %s of %s of job %d: %s (%d attempt%s)",
            where, d.event, d.job_id, attempt.error, n, "" if n == 1 else "s",
        )  # fmt: skip
        return attempt

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        """One attempt: resolve, check every address, connect to a checked one, POST,
        read the status; all within ``timeout`` seconds."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        https = parts.scheme.lower() == "https"
        port = parts.port or (443 if https else 80)
        refused = self.rules.host_problem(host)
        if refused is not None:
            self._count("refused")
            return Attempt(0, f"refused: {refused}")
        deadline = time.monotonic() + self.timeout
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return Attempt(0, f"resolve {host}: {exc}", retry=True)
        addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
        for a in addresses:  # a name that leads anywhere forbidden is refused whole
            problem = self.rules.address_problem(a)
            if problem is not None:
                self._count("refused")
                return Attempt(0, f"refused: {host} resolves to {problem}")
        if not addresses:
            return Attempt(0, f"resolve {host}: no address", retry=True)
        conn = _connection(host, port, addresses, self.tls if https else None, deadline)
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, (conn,))
        timer.daemon = True
        timer.start()
        try:
            return self._exchange(conn, parts, body, headers, deadline)
        finally:
            timer.cancel()
            conn.close()

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        parts: SplitResult,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
    ) -> Attempt:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:  # the same certificate next time
            return Attempt(0, f"TLS: {exc.verify_message or exc}")
        except OSError as exc:  # nothing was sent: trying again is safe
            return Attempt(0, f"connect: {_why(exc, deadline, self.timeout)}", retry=True)
        headers = {"Content-Type": "application/json", "User-Agent": "mlq", **headers}
        try:
            conn.request("POST", path, body, headers)
            answer = conn.getresponse()
            answer.read(MAX_ANSWER)
        except (OSError, http.client.HTTPException) as exc:
            late = time.monotonic() >= deadline or isinstance(exc, TimeoutError)
            # a server that took the request and did not answer in time may act on it
            # yet: sending it again would tell twice, and hold a sender as long again
            return Attempt(0, _why(exc, deadline, self.timeout), retry=not late)
        status = answer.status
        if 200 <= status < 300:
            return Attempt(status)
        if 300 <= status < 400:
            return Attempt(status, f"answered {status}: redirects are not followed")
        retry = status >= 500 or status == 429
        return Attempt(status, f"answered {status} {answer.reason}".rstrip(), retry=retry)


def wants(n: Notice, events: list[str]) -> bool:
    """Whether a job's ``notify.events`` asks for this notice: ``end`` for every final
    state (a preemption that does not requeue is one), ``preempt`` for preemptions."""
    if n.event == "preempted":
        return "preempt" in events or ("end" in events and not n.requeued)
    return "end" in events


def payload(n: Notice, nodes: list[str]) -> dict[str, object]:
    """What a webhook is sent: ``event``, a one-line ``text`` (what Slack and
    Mattermost show) and the ``job`` as ``GET /v1/jobs/ID`` lists it, with its nodes."""
    job = n.job
    view = job_dict(SimpleNamespace(**job))
    view["nodes"] = nodes
    if n.event == "preempted":
        view["requeued"] = n.requeued
        view["preempted_by"] = job.get("stop_for")
    return {
        "event": EVENT_NAMES[n.event],
        "text": summary(n, nodes),
        "at": iso(n.at or time.time()),
        "job": view,
    }


def summary(n: Notice, nodes: list[str]) -> str:
    """``mlq: job 42 train (team nlp, user alice) COMPLETED on gpu1 after 1h2m: exit
    code 0``, with <, > and & escaped as Slack asks."""
    job = n.job
    head = f"mlq: job {job.get('id')} {job.get('name')} (team {job.get('team')}, user {job.get('user')})"
    state = str(job.get("state"))
    what = "was preempted" if n.event == "preempted" else state
    where = f" on {', '.join(nodes)}" if nodes else ""
    started, ended = job.get("started_at"), job.get("ended_at")
    took = ""
    if isinstance(started, int | float) and isinstance(ended, int | float) and ended >= started:
        took = f" after {format_duration(int(ended - started))}"
    reason = str(job.get("reason") or "")
    if len(reason) > MAX_TEXT_REASON:
        reason = reason[: MAX_TEXT_REASON - 1] + "…"
    tail = "; requeued" if n.event == "preempted" and n.requeued else ""
    if state == states.CANCELLED and not started:
        took = ""
    text = f"{head} {what}{where}{took}" + (f": {reason}" if reason else "") + tail
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _spec_notify(spec: object) -> dict[str, object] | None:
    if not isinstance(spec, str) or '"notify"' not in spec:
        return None
    value = json.loads(spec).get("notify")
    return value if isinstance(value, dict) and value.get("webhook") else None


def _connection(
    host: str, port: int, addresses: list[str], tls: ssl.SSLContext | None, deadline: float
) -> http.client.HTTPConnection:
    """A connection that names ``host`` (Host header; with ``tls``, the TLS server name
    and the certificate's) and connects only to ``addresses``, the ones the rules
    checked, in turn, as ``socket.create_connection`` tries a name's addresses, all
    within the attempt's ``deadline`` (resolving took its share)."""
    timeout = max(0.05, deadline - time.monotonic())
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def to_checked(
        _addr: tuple[str, int], timeout: float | None = None, source: object = None
    ) -> socket.socket:
        error: OSError = OSError(f"no address of {host} to connect to")
        for address in addresses:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"connect to {host}: no answer in time")
            try:
                return socket.create_connection((address, port), left)
            except OSError as exc:
                error = exc
        raise error

    conn._create_connection = to_checked  # type: ignore[attr-defined]
    return conn


def _abort(conn: http.client.HTTPConnection) -> None:
    """The attempt's deadline: end whatever it waits on (connect, send or answer)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _why(exc: BaseException, deadline: float, timeout: float) -> str:
    if time.monotonic() >= deadline or isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
