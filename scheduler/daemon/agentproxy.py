"""The agent's Unix socket: users on a node reach the control plane through it.

The kernel names the caller (SO_PEERCRED, ``peer.py``); the agent forwards the
request over its mutual-TLS link and vouches for the caller in ``X-Mlq-Uid``,
``X-Mlq-Gid`` and ``X-Mlq-Pid``, as munge does for Slurm. Whatever a caller puts
in those headers itself is dropped first. The control plane believes a vouched
identity only from a connection with a node's certificate, and never as root or
an mlq admin unless the node is one the cluster config trusts for that
(``docs/security.md``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mlq.scheduler.daemon.agent import Link
from mlq.scheduler.daemon.limits import BodyLimit

VOUCHED = ("x-mlq-uid", "x-mlq-gid", "x-mlq-pid")
HOP = ("host", "connection", "keep-alive", "transfer-encoding", "content-length")


def _error(status: int, kind: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"error": kind, "message": message, "problems": []}).encode()
    return status, [("content-type", "application/json")], body


class Proxy:
    """A plain ASGI app: every request goes to the control plane, vouched.

    Wrap it in ``limits.BodyLimit`` (``proxy_app``): the control plane refuses the
    same bodies, and the agent must not buffer more than it would accept.
    """

    def __init__(self, link: Link) -> None:
        self.link = link

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        peer = scope.get("mlq.peer")
        chunks, more = [], True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        if peer is None:
            return await self._send(
                send, *_error(403, "Refused", "the caller could not be identified")
            )
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.decode("latin-1").lower() not in VOUCHED + HOP
        }
        headers |= {
            "X-Mlq-Uid": str(peer.uid),
            "X-Mlq-Gid": str(peer.gid),
            "X-Mlq-Pid": str(peer.pid),
        }
        path = scope.get("raw_path") or scope["path"].encode()
        target = path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            answer = await asyncio.to_thread(
                self.link.request, scope["method"], target, b"".join(chunks), headers, 120.0
            )
        except ConnectionError as exc:
            answer = _error(503, "Unavailable", str(exc))
        await self._send(send, *answer)

    @staticmethod
    async def _send(send: Any, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in headers
            if k.lower() not in HOP
        ]
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


def proxy_app(link: Link) -> Any:
    """The socket's app: the proxy behind the control plane's own body limit."""
    return BodyLimit(Proxy(link))
