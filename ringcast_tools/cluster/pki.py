"""A cluster's own certificate authority and each process's certificate (DESIGN §10, issue #16).

`ensure(tls_dir, identities)` makes, once, under `tls_dir`:

- `ca.pem` / `ca.key`: the cluster CA (ECDSA P-256, ten years). Only this tool reads `ca.key`;
  processes get `ca.pem` to check their peers.
- `<name>.pem` / `<name>.key` per process: a certificate from that CA whose SANs name the process's
  role and name as a URI (`spiffe://ringcast/<role>/<name>`, what servers check callers by) and every
  host it serves on (DNS names and IP addresses, so clients verify it without overrides). It is
  good for a year and both a server and a client certificate (every service also dials others).

A certificate is made again when its SANs no longer cover the identity's hosts or it expires within
`renew_before`. Keys are written 0600. Everything here uses `cryptography`; nothing is hand-rolled.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringcast_tools.cluster import tokens
from ringcast_tools.cluster.topology import Topology, redis_acl_file, redis_password_file
from services.common.tls import ROLE_URI_PREFIX

ca_lifetime = datetime.timedelta(days=3650)
cert_lifetime = datetime.timedelta(days=365)
renew_before = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate speaks for: a process name, its role, and the hosts it serves on."""

    name: str
    role: str
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost")

    @property
    def uri(self) -> str:
        return f"{ROLE_URI_PREFIX}{self.role}/{self.name}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ensure_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = tls_dir / "ca.pem", tls_dir / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc - _now() > renew_before:
            return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringcast"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ringcast cluster CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + ca_lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    tokens.write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _general_names(identity: Identity) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    for host in identity.hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _current(path: Path, identity: Identity, ca: x509.Certificate) -> bool:
    """Does the certificate at `path` still do for `identity` (same CA, same names, not expiring)?"""
    if not path.exists() or not path.with_suffix(".key").exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.issuer != ca.subject or cert.not_valid_after_utc - _now() < renew_before:
        return False
    try:
        held = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(held) == set(_general_names(identity))


def _issue(tls_dir: Path, identity: Identity, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringcast"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + cert_lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_general_names(identity)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tokens.write_private(tls_dir / f"{identity.name}.key", _key_pem(key))
    (tls_dir / f"{identity.name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure(tls_dir: Path, identities: Iterable[Identity]) -> list[str]:
    """Make whatever of the CA and the identities' certificates is missing or stale; the names made."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    ca, ca_key = _ensure_ca(tls_dir)
    made = []
    for identity in identities:
        if not _current(tls_dir / f"{identity.name}.pem", identity, ca):
            _issue(tls_dir, identity, ca, ca_key)
            made.append(identity.name)
    return made


ADMIN_NAME = "admin"
"""The certificate operators' tools use (health checks, GetNode, the ring)."""

SECURED_ROLES = ("etcd", "placement", "store", "channel", "gateway")


def identities(topology: Topology) -> list[Identity]:
    """A certificate per process that serves (naming the host it serves on), and the admin one."""
    made = [Identity(ADMIN_NAME, ADMIN_NAME)]
    for spec in topology.processes:
        if spec.role in SECURED_ROLES:
            host = spec.address.rsplit(":", 1)[0]
            made.append(Identity(spec.name, spec.role, tuple(dict.fromkeys((host, "127.0.0.1", "localhost")))))
    return made


def secure(topology: Topology) -> list[str]:
    """Make what the secured `topology` needs under its `tls_dir`: the CA, every certificate, and each
    store's Redis password and ACL file (`redis_acl`: one user, its store). The names made."""
    tls_dir = Path(topology.tls_dir)
    made = ensure(tls_dir, identities(topology)) + tokens.ensure_keys(tls_dir)
    stores = {spec.zone: spec.name for spec in topology.by_role("store")}
    for redis in topology.by_role("redis"):
        store = stores[redis.zone]
        password_file = redis_password_file(tls_dir, store)
        if not password_file.exists():
            tokens.write_private(password_file, secrets.token_urlsafe(24).encode())
            made.append(password_file.name)
        password = password_file.read_text().strip()
        tokens.write_private(redis_acl_file(tls_dir, redis.zone), redis_acl(store, password).encode())
    return made


def redis_acl(store: str, password: str) -> str:
    """A zone's Redis ACL: its store's user, and the default user off — but allowed everything.

    Off, nobody can log in as the default user. Its permissions still matter: Redis 7.0 replays the
    append-only file's MULTI/EXEC blocks under the default user's rules when it starts, and with
    none it refuses every block ("NOPERM ACLs rules changed between the moment the transaction was
    accumulated and the EXEC call") and starts empty — every acknowledged entry of the zone gone
    after a restart (found by the compose tier, issue #18; tests/integration/test_store_process.py)."""
    return f"user default off ~* &* +@all\nuser {store} on >{password} ~* &* +@all\n"


__all__ = ["ADMIN_NAME", "Identity", "ensure", "identities", "redis_acl", "secure"]
