"""The agent's link to the control planes: a kept-alive connection the active one
closed while idle (its keep-alive ran out) is opened again on the same server, not
counted as that server's failure (which sent every request after an idle spell to
the standby, which does not listen, and answered users "no control plane")."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from mlq.scheduler import pki
from mlq.scheduler.daemon.agent import AgentConfig, Link


class ClosingServer:
    """TLS on 127.0.0.1: answers each request with 200, keeps the connection open
    (HTTP/1.1 keep-alive), and closes it once it was idle ``idle_s``, as uvicorn does."""

    def __init__(self, ctx: ssl.SSLContext, idle_s: float) -> None:
        self.ctx, self.idle_s = ctx, idle_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(raw,), daemon=True).start()

    def _one(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                while True:
                    conn.settimeout(self.idle_s)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)  # past idle_s: TimeoutError, closed
                        if not chunk:
                            return
                        data += chunk
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def link_and_server(tmp_path: Path):
    ca = tmp_path / "ca"
    pki.init_ca(ca)
    cp_cert, cp_key = pki.issue(ca, tmp_path / "cp", "control-plane", "control-plane",
                                ["127.0.0.1"])  # fmt: skip
    node_cert, node_key = pki.issue(ca, tmp_path / "n1", "n1", "node")
    server = ClosingServer(pki.server_context(cp_cert, cp_key, ca / "ca.crt"), idle_s=0.2)
    refused = socket.create_server(("127.0.0.1", 0))  # a standby: bound, never listening
    standby_port = refused.getsockname()[1]
    refused.close()
    cfg = AgentConfig(
        name="n1",
        servers=[f"https://127.0.0.1:{server.port}", f"https://127.0.0.1:{standby_port}"],
        ca=ca / "ca.crt", cert=node_cert, key=node_key, state_dir=tmp_path,
        socket=tmp_path / "s", cpus=1000, memory=1 << 30,
    )  # fmt: skip
    yield Link(cfg), server
    server.close()


def test_a_connection_the_server_closed_while_idle_is_opened_again(link_and_server) -> None:
    link, server = link_and_server
    assert link.request("GET", "/v1/whoami", None, {}, 5.0)[0] == 200
    time.sleep(0.6)  # the server closed the kept-alive connection meanwhile
    status, _, body = link.request("GET", "/v1/whoami", None, {}, 5.0)
    assert (status, body) == (200, b"ok")
    assert server.connections == 2


def test_a_live_kept_alive_connection_is_reused(tmp_path: Path, link_and_server) -> None:
    link, server = link_and_server
    server.idle_s = 5.0
    for _ in range(3):
        assert link.request("GET", "/v1/whoami", None, {}, 5.0)[0] == 200
    assert server.connections == 1
