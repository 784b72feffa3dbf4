"""A webhook receiver for the notification tests: a real HTTP server on 127.0.0.1 in a
thread, that records what it is sent and answers as a test scripts it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hook:
    """``answers``: the status of each request in turn (then 200); ``hang``: hold every
    request unanswered until ``release()``; ``redirect``: answer 302 to that URL."""

    def __init__(self, answers: list[int] | None = None, hang: bool = False, redirect: str = ""):
        self.answers = list(answers or [])
        self.requests: list[dict] = []
        self.holding = 0  # requests held unanswered now
        self._hang = threading.Event() if hang else None
        self._lock = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    hook.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = hook.answers.pop(0) if hook.answers else 200
                    hook._lock.notify_all()
                if hook._hang is not None:
                    with hook._lock:
                        hook.holding += 1
                    hook._hang.wait(120)
                    with hook._lock:
                        hook.holding -= 1
                    return  # closes without an answer
                self.send_response(status)
                if redirect:
                    self.send_header("Location", redirect)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def wait(self, count: int, timeout: float = 60) -> list[dict]:
        """The first ``count`` requests' JSON bodies, once they have arrived."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} requests came, not {count}")
                self._lock.wait(left)
        return self.bodies()[:count]

    def release(self) -> None:
        if self._hang is not None:
            self._hang.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
