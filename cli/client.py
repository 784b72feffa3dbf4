"""A small HTTP client for the daemon's Unix socket, on the standard library only.

Kept free of httpx and pydantic on purpose: every CLI command pays for what it
imports. One ``Client`` keeps one keep-alive connection for all its requests.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import urlencode

from mlq.scheduler.errors import InvalidInput, MlqError, Unreachable, error_for_status
from mlq.scheduler.paths import DEFAULT_SOCKET


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLQ_SOCKET") or DEFAULT_SOCKET


class _Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _UnixConnection:
    """HTTP/1.1 over a Unix socket with keep-alive, in a few lines.

    Not ``http.client``: importing it pulls in ``ssl`` and ``email``, about 20 ms of
    every CLI command's start-up, for features a local socket never uses.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    def _read_until(self, sep: bytes) -> bytes:
        assert self.sock is not None
        while sep not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(sep)
        return head

    def _read_exact(self, n: int) -> bytes:
        assert self.sock is not None
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def request(self, method: str, url: str, body: bytes | None) -> _Response:
        sock = self.sock or self._connect()
        head = f"{method} {url} HTTP/1.1\r\nHost: mlq\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        status_line, *lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in lines:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                parts.append(self._read_exact(size))
                self._read_exact(2)
            self._read_until(b"\r\n")
            data = b"".join(parts)
        else:
            data = self._read_exact(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            self.close()
        return _Response(status, headers, data)


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
        for attempt in (1, 2):
            try:
                resp = self._conn.request(method, url, payload)
                data = resp.body
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
            except (BrokenPipeError, ConnectionResetError) as exc:
                # A kept-alive connection the server closed: reconnect once.
                self._conn.close()
                if attempt == 2:
                    raise Unreachable(
                        f"the mlq daemon at {self.path} closed the connection: {exc}"
                    ) from None
        try:
            result = json.loads(data) if data else None
        except ValueError:  # not mlq's answer (a proxy, a crash mid-write): say what came
            text = data[:200].decode(errors="replace").strip()
            raise MlqError(f"the daemon answered HTTP {resp.status}: {text}") from None
        if resp.status >= 400:
            err = error_for_status(resp.status)
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
