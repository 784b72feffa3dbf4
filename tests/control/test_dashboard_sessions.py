"""The dashboard's identity rules without a browser: a login token is good once and
briefly, a session lasts its lifetime and no longer, and anything else is refused;
the dashboard answers as the session's user through the same API routes the Unix
socket serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from mlq.scheduler.daemon.app import Daemon, build_app
from mlq.scheduler.daemon.auth import Caller
from mlq.scheduler.daemon.dashboard import (
    SESSION_TTL_S,
    TOKEN_TTL_S,
    Dashboard,
    Sessions,
    login_url,
)
from mlq.scheduler.daemon.peer import Peer
from mlq.scheduler.store import Store, sqlite_url

ALICE = Caller(
    peer=Peer(pid=1, uid=1001, gid=1001, user="alice", groups=("alice",)), is_admin=False
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sessions(clock: Clock) -> Sessions:
    return Sessions(clock=clock)


def test_a_token_opens_one_session_as_its_caller_and_only_once(sessions: Sessions) -> None:
    token = sessions.issue(ALICE)
    cookie = sessions.redeem(token)
    assert cookie is not None
    assert sessions.caller(cookie) == ALICE
    assert sessions.redeem(token) is None  # single use


def test_a_token_past_its_lifetime_opens_nothing(sessions: Sessions, clock: Clock) -> None:
    token = sessions.issue(ALICE)
    clock.now += TOKEN_TTL_S + 1
    assert sessions.redeem(token) is None


def test_a_session_ends_after_its_lifetime(sessions: Sessions, clock: Clock) -> None:
    cookie = sessions.redeem(sessions.issue(ALICE))
    assert cookie is not None
    clock.now += SESSION_TTL_S - 1
    assert sessions.caller(cookie) == ALICE
    clock.now += 2
    assert sessions.caller(cookie) is None


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("", id="an empty token"),
        pytest.param("nodot", id="a token without its two parts"),
        pytest.param("x" * 5000, id="a token far too long"),
        pytest.param("ünïcode.ünïcode", id="a token that is not ASCII"),
    ],
)
def test_a_malformed_token_or_cookie_opens_nothing(sessions: Sessions, bad: str) -> None:
    assert sessions.redeem(bad) is None
    assert sessions.caller(bad) is None


def test_a_token_with_the_right_id_and_a_wrong_secret_is_refused_and_stays_good(
    sessions: Sessions,
) -> None:
    token = sessions.issue(ALICE)
    ident, _, secret = token.partition(".")
    assert sessions.redeem(f"{ident}.{'A' * len(secret)}") is None
    assert sessions.redeem(token) is not None  # a guess does not burn the real one


def test_a_session_cookie_is_not_a_token_and_a_token_is_not_a_session(sessions: Sessions) -> None:
    token = sessions.issue(ALICE)
    assert sessions.caller(token) is None
    cookie = sessions.redeem(token)
    assert cookie is not None
    assert sessions.redeem(cookie) is None


def test_unredeemed_tokens_are_bounded(sessions: Sessions) -> None:
    tokens = [sessions.issue(ALICE) for _ in range(Sessions.MAX_TOKENS + 5)]
    assert len(sessions._tokens) == Sessions.MAX_TOKENS
    assert sessions.redeem(tokens[0]) is None  # the oldest went first
    assert sessions.redeem(tokens[-1]) is not None


def test_the_login_url_names_a_host_a_browser_can_reach() -> None:
    assert login_url("127.0.0.1:8080", "t.s") == "http://127.0.0.1:8080/login?token=t.s"
    assert login_url("[::1]:8080", "t.s") == "http://[::1]:8080/login?token=t.s"
    every = login_url(":8080", "t.s")
    assert every.startswith("http://") and "0.0.0.0" not in every


def _dashboard(tmp_path: Path) -> tuple[Dashboard, Store]:
    store = Store(sqlite_url(tmp_path))
    daemon = Daemon(store)
    api = build_app(daemon)
    return Dashboard(api, daemon, "127.0.0.1:1"), store


def get(app: object, path: str, cookies: dict[str, str] | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(
            transport=transport, base_url="http://dash", cookies=cookies
        ) as c:
            return await c.get(path)

    return asyncio.run(go())


def test_without_a_session_the_dashboard_answers_401_saying_to_run_mlq_dashboard(
    tmp_path: Path,
) -> None:
    dash, store = _dashboard(tmp_path)
    try:
        for path in ("/", "/api/queue", "/api/jobs/1"):
            r = get(dash.app, path)
            assert r.status_code == 401, path
            assert "mlq dashboard" in r.text
        r = get(dash.app, "/api/queue", cookies={"mlq_session": "forged.cookie"})
        assert r.status_code == 401
        r = get(dash.app, "/login?token=nope.nope")
        assert r.status_code == 401 and "mlq dashboard" in r.text
    finally:
        store.close()


def test_a_login_sets_a_strict_httponly_cookie_and_the_api_answers_as_that_user(
    tmp_path: Path,
) -> None:
    dash, store = _dashboard(tmp_path)
    try:
        r = get(dash.app, "/login?token=" + dash.sessions.issue(ALICE))
        assert r.status_code == 303 and r.headers["location"] == "/"
        set_cookie = r.headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie.replace(
            "Strict", "strict"
        )
        cookie = r.cookies["mlq_session"]
        who = get(dash.app, "/api/whoami", cookies={"mlq_session": cookie})
        assert who.status_code == 200 and who.json()["user"] == "alice"
        queue = get(dash.app, "/api/queue", cookies={"mlq_session": cookie})
        assert queue.status_code == 200 and queue.json()["jobs"] == []
        missing = get(dash.app, "/api/jobs/42", cookies={"mlq_session": cookie})
        assert missing.status_code == 404  # the API's own answer, passed on
    finally:
        store.close()


def test_the_dashboard_serves_no_method_that_changes_anything(tmp_path: Path) -> None:
    dash, store = _dashboard(tmp_path)
    try:
        for route in dash.app.routes:
            methods = getattr(route, "methods", None) or set()
            assert methods <= {"GET", "HEAD"}, route
    finally:
        store.close()
