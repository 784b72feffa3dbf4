"""A small HTTP client for the daemon's Unix socket, on the standard library only.

Kept free of httpx and pydantic on purpose: every CLI command pays for what it
imports. One ``Client`` keeps one keep-alive connection for all its requests.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import urlencode

from mlq.scheduler.errors import Conflict, InvalidInput, MlqError, NotFound, Refused, Unreachable

DEFAULT_SOCKET = "/run/mlq/mlq.sock"
_ERRORS: dict[int, type[MlqError]] = {
    400: InvalidInput,
    422: InvalidInput,
    403: Refused,
    404: NotFound,
    409: Conflict,
}


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLQ_SOCKET") or DEFAULT_SOCKET


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """``Client().get("/v1/jobs")``; raises the ``MlqError`` the daemon reported."""

    def __init__(self, path: str | None = None, timeout: float = 60.0) -> None:
        self.path = socket_path(path)
        self._conn = _UnixConnection(self.path, timeout)

    def close(self) -> None:
        self._conn.close()

    def request(
        self, method: str, url: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            try:
                self._conn.request(method, url, body=payload, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (ConnectionRefusedError, FileNotFoundError) as exc:
                raise Unreachable(
                    f"cannot reach the mlq daemon at {self.path}: {exc.strerror or exc}; "
                    "is `mlq server` running? (set MLQ_SOCKET or --socket to another path)"
                ) from None
            except PermissionError as exc:
                raise Unreachable(
                    f"cannot reach the mlq daemon at {self.path}: {exc.strerror}"
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # A kept-alive connection the server closed: reconnect once.
                self._conn.close()
                if attempt == 2:
                    raise Unreachable(
                        f"the mlq daemon at {self.path} closed the connection: {exc}"
                    ) from None
        result = json.loads(data) if data else None
        if resp.status >= 400:
            err = _ERRORS.get(resp.status, MlqError)
            detail = result if isinstance(result, dict) else {}
            if err is InvalidInput:
                problems = detail.get("problems") or []
                if not problems and isinstance(detail.get("detail"), list):
                    # FastAPI's own validation of a request body or query parameter
                    problems = [
                        f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}"
                        for d in detail["detail"]
                    ]
                raise InvalidInput(problems or [detail.get("message", f"HTTP {resp.status}")])
            raise err(detail.get("message") or f"the daemon answered HTTP {resp.status}: {result}")
        return result

    def get(self, url: str, **query: Any) -> Any:
        return self.request("GET", url, query=query)

    def post(self, url: str, body: Any = None) -> Any:
        return self.request("POST", url, body=body if body is not None else {})

    def put(self, url: str, body: Any) -> Any:
        return self.request("PUT", url, body=body)

    def delete(self, url: str) -> Any:
        return self.request("DELETE", url)
