"""The cluster's own certificate authority, the certificates it signs and the join tokens.

``mlq server`` (the control plane) and ``mlq agent`` (a node) talk HTTPS with mutual
TLS. mlq makes a small CA itself: ``init_ca`` once on the control plane, then one
certificate per machine whose subject says who it is (``CN=<name>``,
``OU=mlq-node|mlq-control-plane|mlq-admin``); the server reads that subject back from
the TLS transport with ``identity_from_peercert``.

Joining a node works like ``kubeadm join``: the admin runs ``new_join_token`` on the
control plane and copies the token string (``mlq1.<id>.<secret>.<ca fingerprint>``)
to the node. The node makes its own key and CSR (``make_key``, ``make_csr``): the key
never leaves it. It then, in this order:

1. connects with ``pinned_context(fingerprint)``: no CA to verify with yet, so the
   handshake accepts any server certificate and nothing is trusted so far;
2. fetches the CA certificate (``ca.crt``) without sending the token's secret;
3. ``verify_ca_pem(ca_pem, fingerprint)``: this is the CA the admin's token names;
4. ``server_cert_matches(ssl_object, ca_pem)``: the server's leaf was signed by that
   CA and is a control-plane certificate (a node's certificate is a TLS server too,
   and no hostname is checked on this connection, so the role check is what keeps a
   node from posing as the control plane);
5. only then sends the token and the CSR; the control plane checks the secret
   (``secret_matches``) and answers ``sign_csr``'s certificate;
6. ``verify_issued_by(cert_pem, ca_pem)``, then writes ``ca.crt`` and its certificate.

Sending the secret before step 4 would hand it to whoever answered the connection.
``verify_enrolment_server`` does steps 3 and 4 in one call. From then on the node
uses ``client_context`` and ``server_context``, which trust that CA and nothing else.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mlq.executor.errors import MlqError

ROLES = ("node", "control-plane", "admin")
# The OU each role gets in a certificate: prefixed, so that a certificate some other
# CA made for "node" is never read as one of ours.
_OU = {role: f"mlq-{role}" for role in ROLES}
_ROLE_OF_OU = {ou: role for role, ou in _OU.items()}
# What each role's certificate may be used for: an agent also serves (the control plane
# calls it), an admin's certificate only ever connects.
_EKU = {
    "node": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    "control-plane": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "admin": [ExtendedKeyUsageOID.CLIENT_AUTH],
}

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
TOKEN_PREFIX = "mlq1"

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_TOKEN_ID = re.compile(r"[0-9a-f]{8}")
_TOKEN_SECRET = re.compile(r"[A-Za-z0-9_-]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Certificates start a little in the past so a machine whose clock is behind the
# control plane's still accepts one signed a moment ago.
_BACKDATE = datetime.timedelta(minutes=5)


class PkiError(MlqError):
    """A CA, certificate, key, CSR or join token that mlq cannot use, and why."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is: a machine's name and its role."""

    name: str
    role: str


# --- the CA -----------------------------------------------------------------------------


def init_ca(ca_dir: Path, name: str = "mlq cluster CA", days: int = 3650) -> Path:
    """Create ``ca_dir/ca.key`` (0600) and ``ca_dir/ca.crt``; refuse to replace a CA."""
    ca_dir = Path(ca_dir)
    for existing in (ca_dir / CA_KEY, ca_dir / CA_CERT):
        if existing.exists():
            raise PkiError(
                f"init CA in {ca_dir}: {existing} already exists; every certificate of "
                "the cluster hangs on it, so mlq does not replace it (move it away first)"
            )
    _check_days(days)
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: the CA signs machines' certificates, never another CA
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        # OpenSSL's strict mode (Python 3.13's default) wants an AKI on every cert
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    # The key first and exclusively: two concurrent init_ca calls cannot both win.
    key_path = ca_dir / CA_KEY
    _write(key_path, _key_pem(key), 0o600, replace=False)
    try:
        _write(
            ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644, replace=False
        )
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    return ca_dir


def ca_fingerprint(ca_cert_pem: bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER: what a join token pins."""
    cert = _load_cert(ca_cert_pem, "CA certificate")
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --- keys, CSRs and signing -------------------------------------------------------------


def make_key() -> bytes:
    """A new EC P-256 private key, PKCS8 PEM, unencrypted (the file's mode protects it)."""
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))


def make_csr(key_pem: bytes, name: str, role: str) -> bytes:
    """A CSR for ``key_pem`` asking for ``name`` and ``role`` (the CA decides, though)."""
    _check_name(name)
    _check_role(role)
    key = _load_key(key_pem, "private key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(name, role))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(
    ca_dir: Path,
    csr_pem: bytes,
    name: str,
    role: str,
    sans: Sequence[str] = (),
    days: int = 825,
) -> bytes:
    """Sign ``csr_pem``'s key as ``name``/``role``; the subject the CSR asks for is ignored.

    The control plane decides who the key belongs to (from the join token), so nothing
    in the CSR but its key and its proof of holding that key is used.
    """
    _check_name(name)
    _check_role(role)
    _check_days(days)
    alt_names = [_san(s) for s in sans]
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise PkiError(f"CSR for {name!r}: not a PEM certificate signing request ({e})") from e
    if not csr.is_signature_valid:
        raise PkiError(
            f"CSR for {name!r}: its signature does not match its key (corrupt or tampered)"
        )
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise PkiError(f"CSR for {name!r}: the key must be EC P-256 (make it with make_key)")
    ca_key, ca_cert = _load_ca(Path(ca_dir))
    now = _now()
    # Never outlive the CA: a certificate valid past it fails verification anyway.
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(name, role))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_EKU[role]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if alt_names:  # an empty SubjectAlternativeName is invalid, so none at all
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(
    ca_dir: Path, out_dir: Path, name: str, role: str, sans: Sequence[str] = ()
) -> tuple[Path, Path]:
    """Make a key and a certificate for ``name`` in ``out_dir`` (the control plane's own,
    or an admin's); returns (certificate, key). A node enrols instead (module docstring).
    """
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    key_pem = make_key()
    cert_pem = sign_csr(ca_dir, make_csr(key_pem, name, role), name, role, sans)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path = out_dir / f"{name}.key", out_dir / f"{name}.crt"
    _write(key_path, key_pem, 0o600, replace=True)
    _write(cert_path, cert_pem, 0o644, replace=True)
    ca_copy = out_dir / CA_CERT
    if not ca_copy.exists():
        _write(ca_copy, _read(ca_dir / CA_CERT), 0o644, replace=True)
    return cert_path, key_path


# --- identities -------------------------------------------------------------------------


def identity_of(cert_der_or_pem: bytes) -> Identity:
    """The identity an mlq certificate (PEM or DER) names; PkiError for any other."""
    cert = _load_cert(cert_der_or_pem, "certificate")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return _identity(
        [str(a.value) for a in cns], [str(a.value) for a in ous], cert.subject.rfc4514_string()
    )


def identity_from_peercert(peercert: Mapping[str, object]) -> Identity:
    """The identity in the dict ``ssl.SSLSocket.getpeercert()`` returns for a verified peer.

    That dict is empty when the peer sent no certificate (or was not verified), and then
    this raises: an anonymous peer has no identity.
    """
    subject = peercert.get("subject")
    if not isinstance(subject, tuple) or not subject:
        raise PkiError("peer certificate: none was presented and verified, so no identity")
    cns: list[str] = []
    ous: list[str] = []
    shown: list[str] = []
    for rdn in subject:
        for pair in rdn if isinstance(rdn, tuple) else ():
            if isinstance(pair, tuple) and len(pair) == 2:
                key, value = pair
                shown.append(f"{key}={value}")
                if key == "commonName":
                    cns.append(str(value))
                elif key == "organizationalUnitName":
                    ous.append(str(value))
    return _identity(cns, ous, ", ".join(shown))


# --- TLS contexts -----------------------------------------------------------------------


def server_context(
    cert: Path, key: Path, ca: Path, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A TLS 1.3 server context that presents ``cert`` and trusts only ``ca``'s clients.

    ``require_client_cert=False`` is for the listener that also serves enrolment (a
    joining node has no certificate yet): a client certificate is then still verified
    when sent, and each endpoint but enrolment must insist on an identity itself.
    """
    ctx = _context(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_trust(ctx, Path(ca))
    _load_chain(ctx, Path(cert), Path(key))
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts only ``ca`` and checks the server's name
    against its SANs; presents ``cert`` when given."""
    if (cert is None) != (key is None):
        raise PkiError("client TLS: give both a certificate and its key, or neither")
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    _load_trust(ctx, Path(ca))
    if cert is not None and key is not None:
        _load_chain(ctx, Path(cert), Path(key))
    return ctx


def pinned_context(fingerprint: str) -> ssl.SSLContext:
    """The enrolment connection's context: it verifies nothing, so the caller must run
    ``verify_enrolment_server`` before sending anything secret (module docstring).

    ``fingerprint`` is checked for form here so a mistyped token fails before connecting.
    """
    _fingerprint_hex(fingerprint, "pinned CA fingerprint")
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # before verify_mode: ssl refuses CERT_NONE with it on
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verify_ca_pem(ca_pem: bytes, fingerprint: str) -> None:
    """Raise unless ``ca_pem`` is a CA certificate whose fingerprint is ``fingerprint``."""
    want = _fingerprint_hex(fingerprint, "pinned CA fingerprint")
    got = ca_fingerprint(ca_pem).removeprefix("sha256:")
    if not hmac.compare_digest(want, got):
        raise PkiError(
            f"CA certificate: its fingerprint is sha256:{got}, the join token pins "
            f"sha256:{want}; this is not the cluster's CA (or the token is for another cluster)"
        )
    _check_is_ca(_load_cert(ca_pem, "CA certificate"))


def verify_issued_by(cert_pem: bytes, ca_pem: bytes) -> None:
    """Raise unless ``cert_pem`` was signed by the CA in ``ca_pem`` (which must be a CA).

    Only the signature and the issuer are checked here, not the validity period.
    """
    cert = _load_cert(cert_pem, "certificate")
    ca = _load_cert(ca_pem, "CA certificate")
    _check_is_ca(ca)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise PkiError(
            f"certificate {cert.subject.rfc4514_string()}: not issued by the CA "
            f"{ca.subject.rfc4514_string()} ({str(e) or 'bad signature'})"
        ) from e


def server_cert_matches(ssl_object: ssl.SSLSocket | ssl.SSLObject, ca_pem: bytes) -> bool:
    """Whether the server on this connection holds a control-plane certificate of that CA.

    The TLS handshake proved the server holds the key of the leaf it presented, so a
    leaf signed by the pinned CA is as good as verifying it through that CA.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return False
    try:
        verify_issued_by(der, ca_pem)
        return identity_of(der).role == "control-plane"
    except PkiError:
        return False


def verify_enrolment_server(
    ssl_object: ssl.SSLSocket | ssl.SSLObject, ca_pem: bytes, fingerprint: str
) -> None:
    """Steps 3 and 4 of enrolment: raise unless it is safe to send the join token now."""
    verify_ca_pem(ca_pem, fingerprint)
    if not server_cert_matches(ssl_object, ca_pem):
        raise PkiError(
            "enrolment: the server's certificate is not a control-plane certificate of the "
            "pinned CA; not sending the join token"
        )


# --- join tokens ------------------------------------------------------------------------


def new_join_token(ca_cert_pem: bytes, ttl_s: int = 3600) -> tuple[str, str, str]:
    """A one-time join token: (string for the admin, token id, secret's hash to store).

    The control plane stores the id, the hash and its own expiry (now + ``ttl_s``); the
    secret itself is shown once and never stored.
    """
    if ttl_s <= 0:
        raise PkiError(f"join token: ttl_s must be a positive number of seconds, not {ttl_s}")
    fingerprint = ca_fingerprint(ca_cert_pem).removeprefix("sha256:")
    token_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(24)  # 24 bytes: exactly 32 characters, no padding
    return f"{TOKEN_PREFIX}.{token_id}.{secret}.{fingerprint}", token_id, hash_secret(secret)


def parse_join_token(token: str) -> tuple[str, str, str]:
    """(token id, secret, ``sha256:<hex>`` CA fingerprint) of a token string."""
    parts = token.strip().split(".")
    # The messages never echo the token: it carries the secret.
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        raise PkiError(
            f"join token: expected {TOKEN_PREFIX}.<id>.<secret>.<CA fingerprint>, four parts "
            f"joined by dots (got {len(parts)} part(s)); copy the whole token again"
        )
    _, token_id, secret, fingerprint = parts
    if not _TOKEN_ID.fullmatch(token_id):
        raise PkiError("join token: the id (second part) must be 8 lowercase hex characters")
    if not _TOKEN_SECRET.fullmatch(secret):
        raise PkiError("join token: the secret (third part) must be 32 URL-safe characters")
    if not _HEX64.fullmatch(fingerprint.lower()):
        raise PkiError(
            "join token: the CA fingerprint (fourth part) must be 64 hex characters (SHA-256)"
        )
    return token_id, secret, "sha256:" + fingerprint.lower()


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a token's secret: what the control plane stores instead of it."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` is the one whose hash was stored, in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


# --- helpers ----------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PkiError(
            f"certificate name {name!r}: must be 1-63 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-' (like a hostname label)"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PkiError(f"certificate role {role!r}: must be one of {', '.join(ROLES)}")


def _check_days(days: int) -> None:
    if days <= 0:
        raise PkiError(f"certificate validity: days must be positive, not {days}")


def _subject(name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _OU[role]),
        ]
    )


def _identity(cns: list[str], ous: list[str], shown: str) -> Identity:
    roles = [_ROLE_OF_OU[ou] for ou in ous if ou in _ROLE_OF_OU]
    if len(cns) != 1 or len(roles) != 1 or len(ous) != 1 or not _NAME.fullmatch(cns[0]):
        raise PkiError(
            f"certificate subject {shown!r}: not an mlq certificate (wants one CN=<name> "
            f"and one OU of {', '.join(_OU.values())})"
        )
    return Identity(cns[0], roles[0])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,  # ECDHE with an ECDSA key: the leaf signs
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError(f"certificate {cert.subject.rfc4514_string()}: key is not EC")
    return key


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        pass
    labels = entry.split(".")
    if len(entry) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise PkiError(f"subject alternative name {entry!r}: neither an IP address nor a DNS name")
    return x509.DNSName(entry.lower())


def _check_is_ca(cert: x509.Certificate) -> None:
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:
        raise PkiError(f"certificate {cert.subject.rfc4514_string()}: not a CA certificate")


def _load_cert(data: bytes, what: str) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise PkiError(f"{what}: not a PEM or DER X.509 certificate ({e})") from e


def _load_key(data: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise PkiError(f"{what}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{what}: must be an EC private key (make it with make_key)")
    return key


def _load_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _load_key(_read(ca_dir / CA_KEY), str(ca_dir / CA_KEY))
    cert = _load_cert(_read(ca_dir / CA_CERT), str(ca_dir / CA_CERT))
    _check_is_ca(cert)
    if key.public_key() != cert.public_key():
        raise PkiError(f"CA in {ca_dir}: {CA_KEY} is not the key of {CA_CERT}")
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _fingerprint_hex(fingerprint: str, what: str) -> str:
    algo, _, hexdigest = fingerprint.strip().partition(":")
    if algo.lower() != "sha256" or not _HEX64.fullmatch(hexdigest.lower()):
        raise PkiError(f"{what} {fingerprint!r}: expected sha256:<64 hex characters>")
    return hexdigest.lower()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PkiError(f"read {path}: {e.strerror or e}") from e


def _write(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte (a key is never briefly
    world-readable); ``replace`` swaps it in atomically, otherwise an existing file fails."""
    try:
        if not replace:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except FileExistsError as e:
        raise PkiError(f"write {path}: already exists") from e
    except OSError as e:
        raise PkiError(f"write {path}: {e.strerror or e}") from e


def _context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)  # a bare context trusts nothing until told
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # both ends are mlq: no older peer to serve
    # What Python 3.13 turns on by default; our certificates pass it on any version.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def _load_trust(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise PkiError(f"load CA certificate {ca}: {e}") from e


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as e:
        raise PkiError(f"load certificate {cert} with key {key}: {e}") from e
