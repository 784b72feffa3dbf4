"""The cluster CA, its certificates and join tokens, over real TLS on 127.0.0.1.

Each TLS test runs a one-connection server in a thread with ``server_context`` and a
client with ``client_context`` or ``pinned_context``; nothing of ``ssl`` is faked.
"""

from __future__ import annotations

import base64
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from mlq.scheduler.pki import (
    Identity,
    PkiError,
    ca_fingerprint,
    client_context,
    hash_secret,
    identity_from_peercert,
    identity_of,
    init_ca,
    issue,
    make_csr,
    make_key,
    new_join_token,
    parse_join_token,
    pinned_context,
    secret_matches,
    server_cert_matches,
    server_context,
    sign_csr,
    verify_ca_pem,
    verify_enrolment_server,
    verify_issued_by,
)

HOST = "127.0.0.1"
TIMEOUT = 5.0


@dataclass
class Cluster:
    """A CA and certificates it issued, each as (cert, key) paths."""

    ca_dir: Path
    certs: Path

    @property
    def ca(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.read_bytes()

    def issue(self, name: str, role: str, sans: Sequence[str] = ()) -> tuple[Path, Path]:
        return issue(self.ca_dir, self.certs, name, role, sans)


def _cluster(root: Path) -> Cluster:
    return Cluster(init_ca(root / "ca"), root / "certs")


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return _cluster(tmp_path / "ours")


@pytest.fixture
def other(tmp_path: Path) -> Cluster:
    """Another cluster's CA: nothing it signed may be trusted by ours."""
    return _cluster(tmp_path / "theirs")


# --- a real TLS server and client -------------------------------------------------------


@dataclass
class Served:
    port: int
    seen: list[Identity | None] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)


@contextmanager
def serve_once(ctx: ssl.SSLContext) -> Iterator[Served]:
    """Accept one connection, read the client's identity and send it back as a line."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(TIMEOUT)
    served = Served(listener.getsockname()[1])

    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as e:
            served.error.append(e)
            return
        conn.settimeout(TIMEOUT)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                try:
                    who: Identity | None = identity_from_peercert(tls.getpeercert() or {})
                except PkiError:
                    who = None  # anonymous: allowed only when the context allows it
                served.seen.append(who)
                tls.recv(1024)  # the client's line first: closing on unread data resets
                tls.sendall(f"{who.name} {who.role}\n".encode() if who else b"anonymous\n")
        except (OSError, ssl.SSLError) as e:
            served.error.append(e)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        thread.join(TIMEOUT)
        listener.close()


def talk(
    ctx: ssl.SSLContext,
    port: int,
    hostname: str = HOST,
    check: Callable[[ssl.SSLSocket], None] | None = None,
) -> bytes:
    """Connect, run ``check`` on the connection after the handshake, read the reply."""
    with (
        socket.create_connection((HOST, port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        if check:
            check(tls)
        tls.sendall(b"hello\n")
        return tls.recv(1024)


def refused(ctx: ssl.SSLContext, port: int) -> BaseException:
    """The error the client saw: in TLS 1.3 a rejected client certificate shows on the
    first read, after the client's side of the handshake had finished."""
    try:
        reply = talk(ctx, port)
    except (OSError, ssl.SSLError) as e:
        return e
    pytest.fail(f"the connection was accepted and answered {reply!r}")


# --- mutual TLS -------------------------------------------------------------------------


def test_a_node_with_its_certificate_is_seen_by_name_and_role(cluster: Cluster):
    cp_cert, cp_key = cluster.issue("cp", "control-plane", ["127.0.0.1", "localhost"])
    n_cert, n_key = cluster.issue("n1", "node")
    with serve_once(server_context(cp_cert, cp_key, cluster.ca)) as served:
        reply = talk(client_context(cluster.ca, n_cert, n_key), served.port)
    assert reply == b"n1 node\n"
    assert served.seen == [Identity("n1", "node")]


def test_a_client_without_a_certificate_is_refused(cluster: Cluster):
    cp_cert, cp_key = cluster.issue("cp", "control-plane", ["127.0.0.1"])
    with serve_once(server_context(cp_cert, cp_key, cluster.ca)) as served:
        refused(client_context(cluster.ca), served.port)
    assert served.seen == []
    assert isinstance(served.error[0], ssl.SSLError)


def test_a_client_certificate_from_another_ca_is_refused(cluster: Cluster, other: Cluster):
    cp_cert, cp_key = cluster.issue("cp", "control-plane", ["127.0.0.1"])
    x_cert, x_key = other.issue("n1", "node")
    # the impostor trusts our CA for the server, so only its own certificate is wrong
    with serve_once(server_context(cp_cert, cp_key, cluster.ca)) as served:
        refused(client_context(cluster.ca, x_cert, x_key), served.port)
    assert served.seen == []
    assert "certificate verify failed" in str(served.error[0])


def test_a_server_certificate_from_another_ca_is_refused(cluster: Cluster, other: Cluster):
    x_cert, x_key = other.issue("cp", "control-plane", ["127.0.0.1"])
    n_cert, n_key = cluster.issue("n1", "node")
    with (
        serve_once(server_context(x_cert, x_key, other.ca)) as served,
        pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"),
    ):
        talk(client_context(cluster.ca, n_cert, n_key), served.port)


def test_a_server_whose_sans_do_not_name_the_address_is_refused(cluster: Cluster):
    cp_cert, cp_key = cluster.issue("cp", "control-plane", ["10.0.0.9"])
    with (
        serve_once(server_context(cp_cert, cp_key, cluster.ca)) as served,
        pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"),
    ):
        talk(client_context(cluster.ca), served.port)


def test_an_admin_certificate_cannot_serve(cluster: Cluster):
    """Its only extended key usage is clientAuth, and OpenSSL enforces that."""
    a_cert, a_key = cluster.issue("alice", "admin", ["127.0.0.1"])
    with (
        serve_once(server_context(a_cert, a_key, cluster.ca)) as served,
        pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"),
    ):
        talk(client_context(cluster.ca), served.port)


# --- enrolment over the pinned connection -----------------------------------------------


def test_enrolment_trusts_the_server_only_after_pin_and_issuer_check(
    cluster: Cluster, other: Cluster
):
    cp_cert, cp_key = cluster.issue("cp", "control-plane", ["127.0.0.1"])
    token, token_id, stored = new_join_token(cluster.ca_pem)
    _, secret, fingerprint = parse_join_token(token)
    checks: dict[str, bool] = {}

    def check(tls: ssl.SSLSocket) -> None:
        # what the server returns as ca.crt before the token is sent
        verify_enrolment_server(tls, cluster.ca_pem, fingerprint)
        checks["ours"] = server_cert_matches(tls, cluster.ca_pem)
        checks["theirs"] = server_cert_matches(tls, other.ca_pem)
        with pytest.raises(PkiError, match="fingerprint"):
            verify_enrolment_server(tls, other.ca_pem, fingerprint)

    ctx = server_context(cp_cert, cp_key, cluster.ca, require_client_cert=False)
    with serve_once(ctx) as served:
        reply = talk(pinned_context(fingerprint), served.port, check=check)
    assert reply == b"anonymous\n"
    assert checks == {"ours": True, "theirs": False}
    # the control plane's side: the secret matches what it stored, and it signs the CSR
    assert secret_matches(secret, stored) and not secret_matches(secret[::-1], stored)
    key = make_key()
    cert = sign_csr(cluster.ca_dir, make_csr(key, "evil", "admin"), f"n{token_id[:4]}", "node")
    verify_issued_by(cert, cluster.ca_pem)


def test_a_node_certificate_cannot_pose_as_the_control_plane_at_enrolment(cluster: Cluster):
    n_cert, n_key = cluster.issue("n1", "node", ["127.0.0.1"])
    _, _, fingerprint = parse_join_token(new_join_token(cluster.ca_pem)[0])
    results: list[bool] = []
    ctx = server_context(n_cert, n_key, cluster.ca, require_client_cert=False)
    with serve_once(ctx) as served:
        talk(
            pinned_context(fingerprint),
            served.port,
            check=lambda tls: results.append(server_cert_matches(tls, cluster.ca_pem)),
        )
    assert results == [False]


def test_pinned_context_rejects_a_malformed_fingerprint():
    with pytest.raises(PkiError, match="sha256:<64 hex"):
        pinned_context("md5:abcd")


def test_verify_ca_pem_rejects_a_fingerprint_mismatch_and_a_leaf(cluster: Cluster, other: Cluster):
    verify_ca_pem(cluster.ca_pem, ca_fingerprint(cluster.ca_pem))
    with pytest.raises(PkiError, match="not the cluster's CA"):
        verify_ca_pem(other.ca_pem, ca_fingerprint(cluster.ca_pem))
    leaf = cluster.issue("n1", "node")[0].read_bytes()
    with pytest.raises(PkiError, match="not a CA certificate"):
        verify_ca_pem(leaf, ca_fingerprint(leaf))


def test_verify_issued_by_rejects_a_certificate_of_another_ca(cluster: Cluster, other: Cluster):
    ours = cluster.issue("n1", "node")[0].read_bytes()
    theirs = other.issue("n1", "node")[0].read_bytes()
    verify_issued_by(ours, cluster.ca_pem)
    with pytest.raises(PkiError, match="not issued by the CA"):
        verify_issued_by(theirs, cluster.ca_pem)
    with pytest.raises(PkiError, match="not a CA certificate"):
        verify_issued_by(ours, ours)


# --- the CA and what it signs -----------------------------------------------------------


def test_the_ca_certificate_can_sign_only_leaves(cluster: Cluster):
    ca = x509.load_pem_x509_certificate(cluster.ca_pem)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca_fingerprint(cluster.ca_pem).startswith("sha256:")
    assert len(ca_fingerprint(cluster.ca_pem)) == len("sha256:") + 64


def test_keys_are_private_and_the_ca_directory_too(cluster: Cluster):
    cert, key = cluster.issue("n1", "node")
    assert stat.S_IMODE((cluster.ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(cluster.ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (cluster.certs / "ca.crt").read_bytes() == cluster.ca_pem
    assert (cert.name, key.name) == ("n1.crt", "n1.key")


def test_init_ca_refuses_to_replace_a_ca(cluster: Cluster):
    before = (cluster.ca_dir / "ca.key").read_bytes()
    with pytest.raises(PkiError, match=r"ca\.key already exists"):
        init_ca(cluster.ca_dir)
    assert (cluster.ca_dir / "ca.key").read_bytes() == before


def test_the_subject_a_csr_asks_for_is_ignored(cluster: Cluster):
    key = make_key()
    cert_pem = sign_csr(cluster.ca_dir, make_csr(key, "evil", "admin"), "n1", "node")
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert identity_of(cert_pem) == Identity("n1", "node")
    assert identity_of(cert.public_bytes(serialization.Encoding.DER)) == Identity("n1", "node")
    own = serialization.load_pem_private_key(key, password=None).public_key()
    assert cert.public_key() == own


def test_a_csr_with_a_bad_signature_is_refused(cluster: Cluster):
    der = bytearray(x509.load_pem_x509_csr(make_csr(make_key(), "n1", "node")).public_bytes(
        serialization.Encoding.DER
    ))  # fmt: skip
    der[-1] ^= 0x01  # the last byte of the signature's s
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
    pem += b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(PkiError, match="signature does not match"):
        sign_csr(cluster.ca_dir, pem, "n1", "node")
    with pytest.raises(PkiError, match="not a PEM certificate signing request"):
        sign_csr(cluster.ca_dir, b"junk", "n1", "node")


@pytest.mark.parametrize(
    ("role", "want"),
    [
        pytest.param(
            "node",
            {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH},
            id="a node both connects and serves",
        ),
        pytest.param(
            "control-plane",
            {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH},
            id="the control plane both serves and calls the agents",
        ),
        pytest.param("admin", {ExtendedKeyUsageOID.CLIENT_AUTH}, id="an admin only connects"),
    ],
)
def test_each_role_gets_its_key_usages(cluster: Cluster, role: str, want: set):
    cert = x509.load_pem_x509_certificate(cluster.issue("m1", role)[0].read_bytes())
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == want
    assert identity_of(cert.public_bytes(serialization.Encoding.PEM)) == Identity("m1", role)
    ca = x509.load_pem_x509_certificate(cluster.ca_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_sans_are_ip_addresses_or_dns_names(cluster: Cluster):
    cert_path, _ = cluster.issue("cp", "control-plane", ["10.1.2.3", "::1", "CP.example.org"])
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["cp.example.org"]
    with pytest.raises(PkiError, match="'not a host!'"):
        cluster.issue("cp", "control-plane", ["not a host!"])


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("N1", id="upper case"),
        pytest.param("-n1", id="a leading dash"),
        pytest.param("n1-", id="a trailing dash"),
        pytest.param("n_1", id="an underscore"),
        pytest.param("n1.example", id="a dot"),
        pytest.param("n" * 64, id="64 characters"),
    ],
)
def test_a_bad_name_is_refused_by_name(cluster: Cluster, name: str):
    with pytest.raises(PkiError, match=f"name {name!r}"):
        sign_csr(cluster.ca_dir, make_csr(make_key(), "ok", "node"), name, "node")
    with pytest.raises(PkiError, match=f"name {name!r}"):
        make_csr(make_key(), name, "node")


def test_a_bad_role_is_refused_by_name(cluster: Cluster):
    with pytest.raises(PkiError, match="role 'root'"):
        sign_csr(cluster.ca_dir, make_csr(make_key(), "n1", "node"), "n1", "root")
    with pytest.raises(PkiError, match="role 'root'"):
        issue(cluster.ca_dir, cluster.certs, "n1", "root")


def test_a_certificate_not_made_by_mlq_has_no_identity(cluster: Cluster):
    with pytest.raises(PkiError, match="not an mlq certificate"):
        identity_of(cluster.ca_pem)  # CN only, no mlq OU
    with pytest.raises(PkiError, match="not a PEM or DER"):
        identity_of(b"\x30\x03junk")
    with pytest.raises(PkiError, match="none was presented"):
        identity_from_peercert({})
    forged = {"subject": ((("commonName", "n1"),), (("organizationalUnitName", "node"),))}
    with pytest.raises(PkiError, match="not an mlq certificate"):
        identity_from_peercert(forged)


def test_sign_csr_without_a_ca_names_the_missing_file(tmp_path: Path):
    with pytest.raises(PkiError, match=r"read .*ca\.key"):
        sign_csr(tmp_path, make_csr(make_key(), "n1", "node"), "n1", "node")


# --- join tokens ------------------------------------------------------------------------


def test_a_join_token_round_trips(cluster: Cluster):
    token, token_id, stored = new_join_token(cluster.ca_pem)
    parsed_id, secret, fingerprint = parse_join_token(f"  {token}\n")  # as pasted
    assert parsed_id == token_id and len(token_id) == 8
    assert len(secret) == 32 and hash_secret(secret) == stored
    assert fingerprint == ca_fingerprint(cluster.ca_pem)
    assert token == f"mlq1.{token_id}.{secret}.{fingerprint.removeprefix('sha256:')}"
    assert new_join_token(cluster.ca_pem)[0] != token


SECRET = "A" * 32
FP = "ab" * 32


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        pytest.param("", "four parts", id="empty"),
        pytest.param(f"mlq2.0123abcd.{SECRET}.{FP}", "four parts", id="another version"),
        pytest.param(f"mlq1.0123abcd.{SECRET}", "four parts", id="no fingerprint"),
        pytest.param(f"mlq1.0123ABCD.{SECRET}.{FP}", "the id", id="an upper-case id"),
        pytest.param(f"mlq1.0123abc.{SECRET}.{FP}", "the id", id="a short id"),
        pytest.param(f"mlq1.0123abcd.{SECRET[:-1]}.{FP}", "the secret", id="a short secret"),
        pytest.param(f"mlq1.0123abcd.{SECRET[:-1]}+.{FP}", "the secret", id="a '+' in it"),
        pytest.param(f"mlq1.0123abcd.{SECRET}.{FP[:-2]}", "fingerprint", id="a short hash"),
    ],
)
def test_a_malformed_join_token_is_refused_without_echoing_it(token: str, problem: str):
    with pytest.raises(PkiError, match=problem) as exc:
        parse_join_token(token)
    assert SECRET[:-1] not in str(exc.value)


def test_a_join_token_needs_a_positive_lifetime(cluster: Cluster):
    with pytest.raises(PkiError, match="ttl_s"):
        new_join_token(cluster.ca_pem, ttl_s=0)
