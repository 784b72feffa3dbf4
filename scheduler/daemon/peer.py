"""Who is calling: the Unix socket's peer credentials (SO_PEERCRED), or the node a
mutual-TLS client certificate names (the control plane's port).

The caller's identity comes from the kernel or the TLS handshake, never from
anything the client says. A uvicorn protocol subclass reads the credentials once per connection and
puts them in each request's ASGI scope under ``mlq.peer``.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str
    groups: tuple[str, ...]
    gids: tuple[int, ...] = ()  # the same groups as numbers (the job's supplementary groups)


def peer_of(sock: socket.socket) -> Peer:
    """Credentials of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return identify(pid, uid, gid)


def identify(pid: int, uid: int, gid: int) -> Peer:
    """Turn a uid/gid into a user name and group names (numbers if unknown)."""
    try:
        user = pwd.getpwuid(uid).pw_name
        gids = os.getgrouplist(user, gid)
    except KeyError:
        user, gids = str(uid), [gid]
    names = []
    for g in gids:
        try:
            names.append(grp.getgrgid(g).gr_name)
        except KeyError:
            names.append(str(g))
    return Peer(pid=pid, uid=uid, gid=gid, user=user, groups=tuple(names), gids=tuple(gids))


class PeerCredProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the caller in every scope: the peer's
    credentials on a Unix socket (``mlq.peer``), or on a mutual-TLS connection the
    node its certificate names (``mlq.node``, an ``mlq.scheduler.pki.Identity``)."""

    _peer: Peer | None = None
    _node: object | None = None
    _address: str = ""

    def connection_made(self, transport) -> None:  # type: ignore[override, no-untyped-def]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            self._peer = peer_of(sock)
            return
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            from mlq.scheduler.pki import PkiError, identity_from_peercert

            cert = tls.getpeercert()
            try:
                self._node = identity_from_peercert(cert) if cert else None
            except PkiError:
                self._node = None
            peer = transport.get_extra_info("peername")
            self._address = str(peer[0]) if peer else ""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["mlq.peer"] = self._peer  # type: ignore[typeddict-unknown-key]
        self.scope["mlq.node"] = self._node  # type: ignore[typeddict-unknown-key]
        self.scope["mlq.address"] = self._address  # type: ignore[typeddict-unknown-key]
