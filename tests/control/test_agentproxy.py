"""The agent's socket proxy: vouches for the caller the kernel named, drops what a
caller claims itself, and holds no body the control plane would refuse."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mlq.scheduler.daemon.agentproxy import proxy_app
from mlq.scheduler.daemon.limits import MAX_BODY
from mlq.scheduler.daemon.peer import Peer


class RecordingLink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes, dict[str, str]]] = []

    def request(self, method, path, body, headers, timeout):  # noqa: ANN001, ANN201
        self.calls.append((method, path, body, headers))
        return 200, [("content-type", "application/json")], b'{"ok": true}'


def call(
    app: Any, body: bytes, headers: list[tuple[bytes, bytes]], chunk: int = 1 << 16
) -> tuple[int, dict]:
    """One request through the ASGI app, its body streamed in chunks."""
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    sent: list[dict] = []

    async def receive() -> dict:
        data = parts.pop(0) if parts else b""
        return {"type": "http.request", "body": data, "more_body": bool(parts)}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/jobs",
        "raw_path": b"/v1/jobs",
        "query_string": b"",
        "headers": headers,
        "mlq.peer": Peer(pid=4242, uid=1001, gid=1001, user="alice", groups=("alice",)),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload)


def test_a_body_the_control_plane_would_refuse_is_refused_on_the_node() -> None:
    link = RecordingLink()
    status, answer = call(proxy_app(link), b"x" * (MAX_BODY + 1), [])
    assert status == 413
    assert answer["error"] == "TooLarge"
    assert link.calls == []


def test_a_declared_oversize_length_is_refused_before_reading() -> None:
    link = RecordingLink()
    status, _ = call(proxy_app(link), b"", [(b"content-length", str(64 << 20).encode())])
    assert status == 413
    assert link.calls == []


def test_the_caller_is_vouched_for_and_its_own_claims_dropped() -> None:
    link = RecordingLink()
    forged = [(b"x-mlq-uid", b"0"), (b"X-Mlq-Gid", b"0"), (b"content-type", b"application/json")]
    status, _ = call(proxy_app(link), b'{"a": 1}', forged)
    assert status == 200
    [(method, path, body, headers)] = link.calls
    assert (method, path, body) == ("POST", "/v1/jobs", b'{"a": 1}')
    vouched = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-mlq-")}
    assert vouched == {"x-mlq-uid": "1001", "x-mlq-gid": "1001", "x-mlq-pid": "4242"}
