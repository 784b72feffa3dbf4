"""Bounds the daemon holds before it spends memory on a request.

A request body is refused past ``MAX_BODY`` bytes (HTTP 413), whether it declares
its length or streams it in chunks; the body is never buffered beyond the cap. The
route models bound everything inside a body (counts, integer ranges, text), and
``install_handlers`` turns what still slips through (an integer the database
cannot hold, text that is not valid Unicode, a JSON document nested too deep, a
full disk) into one JSON error instead of a traceback, so the daemon answers
every request and survives all of them.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_BODY = 1 << 20
log = logging.getLogger("mlq.api")


def _error(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"error": kind, "message": message, "problems": [message] if status == 422 else []}


class BodyLimit:
    """Pure ASGI middleware: 413 for a body above ``limit`` bytes."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0

        async def bounded_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, bounded_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(too_large(self.limit)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                # no "connection: close": the server reads the rest of the body and
                # throws it away, so the client can finish sending and read this
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    """Raised from inside ``receive``: an HTTPException, because FastAPI turns any
    other error while it reads a body into a 400."""

    def __init__(self) -> None:
        super().__init__(413, "too large")


def too_large(limit: int = MAX_BODY) -> dict[str, Any]:
    return _error(
        413,
        "TooLarge",
        f"the request body is larger than {limit // 1024} KiB; a job file is configuration, not data",
    )


# errors a hostile body can raise deep inside parsing: each a 422 naming what was wrong
_BAD_INPUT: dict[type[Exception], str] = {
    OverflowError: "a number is out of range: integers must be between -2^63 and 2^63-1",
    UnicodeError: "the request holds text that is not valid Unicode (a lone surrogate?)",
    RecursionError: "the request is nested too deeply",
}


def _bad_input(msg: str) -> Any:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_error(422, "InvalidInput", msg), status_code=422)

    return handler


def install_handlers(app: FastAPI) -> None:
    """JSON answers for what the models cannot catch; never a plain-text 500."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        if isinstance(exc, _TooLarge):
            return JSONResponse(too_large(), status_code=413)
        return await http_exception_handler(request, exc)

    for kind, msg in _BAD_INPUT.items():
        app.add_exception_handler(kind, _bad_input(msg))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            log.error("%s %s: the disk is full: %s", request.method, request.url.path, exc)
            msg = f"the node's disk is full ({exc.filename or 'state dir'}); nothing was changed"
            return JSONResponse(_error(507, "DiskFull", msg), status_code=507)
        log.exception("%s %s failed", request.method, request.url.path)
        msg = f"internal error ({type(exc).__name__}); the daemon logged it and carries on"
        return JSONResponse(_error(500, "InternalError", msg), status_code=500)
