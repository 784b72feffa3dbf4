"""The web dashboard (``mlq server --dashboard-address HOST:PORT``; docs/dashboard.md).

A small read-only FastAPI app on a TCP port of its own: one static page, its script
and its style (``dashboard_static/``, no build step, nothing from a CDN), and GET
endpoints the page polls.

Who is looking: a browser cannot be named by SO_PEERCRED, so ``mlq dashboard`` asks
the daemon over its Unix socket (the caller identified as for every API call) for a
login URL. Its token is good once, for ``TOKEN_TTL_S``, and bound to that caller;
``/login`` trades it for a session cookie (HttpOnly, SameSite=Strict) that lasts
``SESSION_TTL_S``. Tokens and sessions live in this process's memory only (a restart
signs everyone out), are compared in constant time, and are never logged.

What they see: every endpoint answers with the daemon's own API routes, called
in-process as the session's caller (``mlq.caller`` in the scope, which ``app.caller``
honours). The rules of ``mlq queue``, ``mlq show``, ``mlq logs`` and ``mlq nodes``
keep their one home in ``app.py`` and ``auth.py``; nothing here decides who may see
what.
"""

import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.daemon.auth import Caller

log = logging.getLogger("mlq.dashboard")

TOKEN_TTL_S = 120.0  # a login URL: opened at once, by the one who asked for it
SESSION_TTL_S = 12 * 3600.0  # a working day; then `mlq dashboard` again
COOKIE = "mlq_session"
SAMPLE_S = 5.0  # team use is sampled at most this often for the page's history
HISTORY = 720  # samples kept: an hour at SAMPLE_S
QUEUE_LIMIT = 500  # queue lines the page shows (the oldest first, as mlq queue)
RECENT = 20  # ended jobs the page shows
LOG_CHUNK = 64 * 1024  # bytes of a log one poll reads
TAIL_READ = 4 << 20  # a log is read to its end in pieces this big (the API's most)
TAIL_READS = 64  # and no more of them: the tail of a 256 MiB log at most
STATIC = Path(__file__).resolve().parent / "dashboard_static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
NO_SESSION = (
    "No dashboard session: run `mlq dashboard` on a machine of the cluster and open "
    "the URL it prints."
)
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # the login URL's token never leaves in a Referer
    "x-frame-options": "DENY",
}


@dataclass
class _Entry:
    digest: bytes  # sha256 of the secret half: the secret itself is not kept
    caller: Caller
    expires: float


def _split(value: str) -> tuple[str, str] | None:
    """``ID.SECRET`` -> its halves, or None for anything else."""
    if not value or len(value) > 200 or not value.isascii():
        return None
    ident, sep, secret = value.partition(".")
    return (ident, secret) if sep and ident and secret else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Sessions:
    """Login tokens and the sessions they open, in memory. Each value is ``ID.SECRET``:
    the ID finds the entry, the secret is compared with ``hmac.compare_digest``."""

    MAX_TOKENS = 1000  # unredeemed logins; the oldest go first
    MAX_SESSIONS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: OrderedDict[str, _Entry] = OrderedDict()
        self._sessions: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _add(table: OrderedDict[str, _Entry], caller: Caller, expires: float, cap: int) -> str:
        ident, secret = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
        table[ident] = _Entry(_digest(secret), caller, expires)
        while len(table) > cap:
            table.popitem(last=False)
        return f"{ident}.{secret}"

    def _prune(self, now: float) -> None:
        for table in (self._tokens, self._sessions):
            for ident in [k for k, e in table.items() if e.expires <= now]:
                del table[ident]

    def _find(self, table: OrderedDict[str, _Entry], value: str) -> tuple[str, _Entry] | None:
        parts = _split(value)
        if parts is None:
            return None
        entry = table.get(parts[0])
        if entry is None or not hmac.compare_digest(entry.digest, _digest(parts[1])):
            return None
        if entry.expires <= self.clock():
            del table[parts[0]]
            return None
        return parts[0], entry

    def issue(self, caller: Caller) -> str:
        """A login token for ``caller``, good once within ``TOKEN_TTL_S``."""
        with self._lock:
            now = self.clock()
            self._prune(now)
            return self._add(self._tokens, caller, now + TOKEN_TTL_S, self.MAX_TOKENS)

    def redeem(self, token: str) -> str | None:
        """The cookie of a new session for the token's caller; None for a token that is
        unknown, used, expired or wrong. A wrong secret leaves the real token good."""
        with self._lock:
            found = self._find(self._tokens, token)
            if found is None:
                return None
            del self._tokens[found[0]]
            now = self.clock()
            return self._add(
                self._sessions, found[1].caller, now + SESSION_TTL_S, self.MAX_SESSIONS
            )

    def caller(self, cookie: str) -> Caller | None:
        """Who holds this session, while it lasts."""
        with self._lock:
            found = self._find(self._sessions, cookie)
            return found[1].caller if found else None


class History:
    """Each team's use, guarantee and limit, sampled at most every ``SAMPLE_S``: the
    page's "over time" (in memory, the last ``HISTORY`` samples)."""

    def __init__(self) -> None:
        self._points: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._lock = threading.Lock()

    def add(self, teams: list[dict[str, Any]], at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self._lock:
            if self._points and at - self._points[-1]["at"] < SAMPLE_S:
                return
            self._points.append({"at": at, "teams": {t["team"]: t for t in teams}})

    def due(self, at: float | None = None) -> bool:
        at = time.time() if at is None else at
        with self._lock:
            return not self._points or at - self._points[-1]["at"] >= SAMPLE_S

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._points)


def parse_address(address: str) -> tuple[str, int]:
    """``127.0.0.1:8265`` -> (host, port); ``:8265`` listens on every address."""
    from mlq.scheduler.daemon.metrics import parse_address as parse

    try:
        return parse(address)
    except ValueError:
        raise ValueError(
            f'--dashboard-address: "{address}" is not HOST:PORT, e.g. 127.0.0.1:8265'
        ) from None


def login_url(address: str, token: str) -> str:
    """The URL ``mlq dashboard`` prints: the dashboard's address (this machine's name
    where it listens on every address), its ``/login`` and the token."""
    host, port = parse_address(address)
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn() or socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/login?{urlencode({'token': token})}"


class _NoSession(Exception):
    pass


class Dashboard:
    """The dashboard's app (``app``), its sessions and its history. Made with the
    daemon's API app, whose ``POST /v1/dashboard/login`` it then answers."""

    def __init__(
        self, api: FastAPI, daemon: Any, address: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.api = api
        self.daemon = daemon
        self.address = address
        self.sessions = Sessions(clock)
        self.history = History()
        daemon.dashboard = self
        self.app = self._build()

    # -- the Unix socket's side: who asks for a login ------------------------------------

    def login(self, who: Caller) -> S.DashboardLogin:
        """``POST /v1/dashboard/login`` (app.py): a login URL that signs a browser in as
        ``who``, good once for ``TOKEN_TTL_S``."""
        token = self.sessions.issue(who)
        log.info("dashboard: a login for %s", who.user)
        return S.DashboardLogin(
            url=login_url(self.address, token), user=who.user, expires_in_s=TOKEN_TTL_S
        )

    # -- the scheduling loop's side: team use over time ----------------------------------

    def after_pass(self, decisions: object, jobs: object, seconds: float) -> None:
        """Sample each team's use (the loop calls this after every pass, which may be
        many a second: nothing is read unless a sample is due; never raises)."""
        if not self.history.due():
            return
        try:
            from mlq.scheduler.daemon.nodes import node_views

            loop = self.daemon.loop
            nodes = node_views(self.daemon.store, loop) if loop is not None else []
            if nodes:
                self.history.add([t.model_dump() for t in nodes[0].teams])
        except Exception:
            log.exception("dashboard: sampling the teams' use failed")

    # -- the API, as the viewer ----------------------------------------------------------

    async def _get(self, viewer: Caller, path: str, **query: Any) -> tuple[int, bytes]:
        """GET ``path`` of the daemon's own API, in-process, as ``viewer``."""
        qs = urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": qs.encode(),
            "root_path": "",
            "headers": [(b"host", b"mlq-dashboard")],
            "client": None,
            "server": None,
            "mlq.caller": viewer,
            "mlq.peer": None,
            "mlq.node": None,
        }
        sent = False
        status, body = 500, []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        try:
            await self.api(scope, receive, send)
        except Exception:  # the API sent its 500 before it raised
            log.exception("dashboard: GET %s failed", path)
        return status, b"".join(body)

    async def _json(self, viewer: Caller, path: str, **query: Any) -> Any:
        status, body = await self._get(viewer, path, **query)
        if status != 200:
            raise _Passed(status, body)
        return json.loads(body)

    # -- the browser's side ----------------------------------------------------------------

    def viewer(self, request: Request) -> Caller:
        who = self.sessions.caller(request.cookies.get(COOKIE, ""))
        if who is None:
            raise _NoSession()
        return who

    def _build(self) -> FastAPI:
        app = FastAPI(title="mlq dashboard", docs_url=None, redoc_url=None, openapi_url=None)
        page = (STATIC / "index.html").read_bytes()
        assets = {name: (STATIC / name).read_bytes() for name in ASSETS}
        Viewer = Annotated[Caller, Depends(self.viewer)]
        JobId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]

        @app.middleware("http")
        async def headers(request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("cache-control", "no-store")
            return response

        @app.exception_handler(_NoSession)
        async def no_session(request: Request, _: _NoSession) -> Response:
            if request.url.path.startswith("/api/"):
                return JSONResponse({"error": "Unauthorized", "message": NO_SESSION}, 401)
            return HTMLResponse(_plain_page(NO_SESSION), 401)

        @app.exception_handler(_Passed)
        async def passed(_: Request, exc: _Passed) -> Response:
            return Response(exc.body, exc.status, media_type="application/json")

        @app.get("/login")
        async def login(token: Annotated[str, Query(max_length=200)] = "") -> Response:
            cookie = self.sessions.redeem(token)
            if cookie is None:
                text = (
                    "This login link is not valid: it was used already, it is older than "
                    f"{TOKEN_TTL_S:.0f} seconds, or it was cut. Run `mlq dashboard` again "
                    "for a new one."
                )
                return HTMLResponse(_plain_page(text), 401)
            out = RedirectResponse("/", status_code=303)
            out.set_cookie(
                COOKIE, cookie, max_age=int(SESSION_TTL_S), httponly=True,
                samesite="strict", path="/",
            )  # fmt: skip
            return out

        @app.get("/")
        async def index(_: Viewer) -> Response:
            return Response(page, media_type="text/html; charset=utf-8")

        @app.get("/static/{name}")
        async def static(name: str) -> Response:
            if name not in assets:
                return Response(b"not found\n", 404, media_type="text/plain")
            return Response(
                assets[name], media_type=ASSETS[name], headers={"cache-control": "no-cache"}
            )

        @app.get("/api/whoami")
        async def whoami(viewer: Viewer) -> Any:
            return await self._json(viewer, "/v1/whoami")

        @app.get("/api/queue")
        async def queue(viewer: Viewer) -> Any:
            """The queue as mlq queue shows it, and the newest ended jobs."""
            jobs = await self._json(viewer, "/v1/jobs", limit=QUEUE_LIMIT)
            recent = await self._json(viewer, "/v1/history", limit=RECENT)
            listed = [j["state"] for j in jobs["jobs"]]
            return {
                "jobs": jobs["jobs"],
                "recent": list(reversed(recent["jobs"])),  # the newest first
                "pending": listed.count("PENDING"),
                "running": len(listed) - listed.count("PENDING"),
                "limit": QUEUE_LIMIT,
            }

        @app.get("/api/nodes")
        async def nodes(viewer: Viewer) -> Any:
            return await self._json(viewer, "/v1/nodes")

        @app.get("/api/teams")
        async def teams(viewer: Viewer) -> Any:
            """Each team's use against its guarantee and limit, now and over the last
            samples (team use is everyone's to see, as in mlq nodes)."""
            got = await self._json(viewer, "/v1/nodes")
            now = got["nodes"][0]["teams"] if got["nodes"] else []
            self.history.add(now)
            return {"teams": now, "history": self.history.points(), "sample_s": SAMPLE_S}

        @app.get("/api/jobs/{job_id}")
        async def job(job_id: JobId, viewer: Viewer) -> Any:
            """The job as mlq show shows it to the viewer, with its timeline."""
            return await self._json(viewer, f"/v1/jobs/{job_id}")

        @app.get("/api/jobs/{job_id}/log")
        async def job_log(
            job_id: JobId,
            viewer: Viewer,
            stream: Annotated[str, Query(pattern="^(stdout|stderr)$")] = "stdout",
            offset: Annotated[int | None, Query(ge=0, le=2**62)] = None,
            run: Annotated[int | None, Query(ge=0, le=2**31)] = None,
        ) -> Any:
            """A piece of the job's log, for those mlq logs serves it to: from
            ``offset`` on, or without one the last ``LOG_CHUNK`` bytes (the tail)."""
            path = f"/v1/jobs/{job_id}/logs"
            if offset is not None:
                return await self._json(
                    viewer, path, stream=stream, offset=offset, run=run, limit=LOG_CHUNK
                )
            # the tail: read on to the end (bounded), keep the last LOG_CHUNK bytes
            chunk = await self._json(
                viewer, path, stream=stream, offset=0, run=run, limit=TAIL_READ
            )
            text = chunk["data"]
            for _ in range(TAIL_READS):
                if chunk["next_offset"] - chunk["offset"] - chunk["dropped"] < TAIL_READ:
                    break
                chunk = await self._json(
                    viewer, path, stream=stream, offset=chunk["next_offset"],
                    run=chunk["run"], limit=TAIL_READ,
                )  # fmt: skip
                text = (text + chunk["data"])[-LOG_CHUNK:]
            chunk["data"] = text[-LOG_CHUNK:]
            return chunk

        return app

    def server(self, log_level: str = "warning") -> Any:
        """The dashboard's uvicorn server (no access log: a login URL holds a token)."""
        import uvicorn

        host, port = parse_address(self.address)
        config = uvicorn.Config(
            self.app, host=host, port=port, loop="uvloop", log_level=log_level,
            access_log=False, lifespan="off",
        )  # fmt: skip
        return uvicorn.Server(config)


class _Passed(Exception):
    """The API's own refusal (404, 403, 409, ...), passed to the browser as it came."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _plain_page(text: str) -> str:
    from html import escape

    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mlq</title>'
        '<link rel="stylesheet" href="/static/dashboard.css"></head>'
        f'<body><main class="plain"><h1>mlq</h1><p id="message">{escape(text)}</p></main>'
        "</body></html>"
    )
