"""A webhook receiver for the notification tests: a real HTTP server on 127.0.0.1 in a
thread, that records what it is sent and answers as a test scripts it."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Hook:
    """``answers``: the status of each request in turn (then 200); ``hang``: hold every
    request unanswered until ``release()``; ``redirect``: answer 302 to that URL;
    ``tls``: serve https with this context (``tls_contexts``)."""

    def __init__(
        self,
        answers: list[int] | None = None,
        hang: bool = False,
        redirect: str = "",
        tls: ssl.SSLContext | None = None,
    ):
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
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"

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


def tls_contexts(tmp: Path, names: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(a server context with a certificate for ``names``, a client context that
    trusts only the CA that signed it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    return server, client
