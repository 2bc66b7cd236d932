"""mTLS between the services, and TLS from clients to gateways (DESIGN §10, issue #16).

Rules:

1. A process has one identity: `configure(tls_dir, name)` at start-up loads `<tls_dir>/ca.pem` and the
   process's own `<tls_dir>/<name>.pem` / `.key` (made by `ringcast up` or the compose init step;
   `ringcast_tools/cluster/pki.py`). Without a directory the process runs plaintext (`--insecure`).
2. Every server of an internal service requires a client certificate from the cluster CA (the TLS
   handshake refuses any other), and `Admission` checks the caller's role for every method before
   the method looks at the request: PERMISSION_DENIED / ROLE_DENIED otherwise. The role is the
   certificate's URI SAN `spiffe://ringcast/<role>/<name>` (gRPC gives it as `peer_spiffe_id`).
3. A gateway serves TLS to clients without asking for a certificate: clients authenticate with
   tokens (services/gateway/auth.py).
4. Every outgoing call of a service (`dial`) presents the process's certificate and checks the
   server's against the CA and the address dialled: certificates name the hosts they serve on, so
   no name override is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ringcast.reasons import Reason
from services.common.errors import ServiceError

log = logging.getLogger("ringcast.tls")

ROLE_URI_PREFIX = "spiffe://ringcast/"
"""Certificates name their process as `spiffe://ringcast/<role>/<name>`."""

ADMIN = "admin"
"""Operators' tools (the CLI's admin commands, health checks): may ask health and reflection."""


@dataclass(frozen=True, slots=True)
class ServiceTLS:
    """The cluster CA and one process's certificate chain and key (PEM)."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, tls_dir: str | Path, name: str) -> ServiceTLS:
        directory = Path(tls_dir)
        try:
            return cls(
                ca=(directory / "ca.pem").read_bytes(),
                cert=(directory / f"{name}.pem").read_bytes(),
                key=(directory / f"{name}.key").read_bytes(),
            )
        except OSError as error:
            raise SystemExit(f"TLS: cannot read {name}'s certificate in {directory}: {error}") from error

    def server_credentials(self, *, client_certificates: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=client_certificates
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


_identity: ServiceTLS | None = None


def configure(tls_dir: str, name: str) -> ServiceTLS | None:
    """Load this process's identity (rule 1); plaintext when `tls_dir` is empty."""
    global _identity
    _identity = ServiceTLS.load(tls_dir, name) if tls_dir else None
    if _identity is None:
        log.warning("INSECURE: no --tls-dir, this process serves and dials in plaintext")
    return _identity


def identity() -> ServiceTLS | None:
    return _identity


def dial(address: str, options: Sequence[tuple[str, int | str]]) -> grpc.aio.Channel:
    """An outgoing channel to another service: mTLS with this process's certificate, or plaintext."""
    if _identity is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, _identity.channel_credentials(), options=options)


@dataclass(frozen=True, slots=True)
class Peer:
    role: str
    name: str


def peer_of(context: grpc.aio.ServicerContext) -> Peer | None:
    """The caller as its certificate names it; None for a plaintext caller or a certificate without
    a ringcast identity."""
    for uri in context.auth_context().get("peer_spiffe_id", ()):
        text = uri.decode(errors="replace")
        if text.startswith(ROLE_URI_PREFIX):
            role, _, name = text.removeprefix(ROLE_URI_PREFIX).partition("/")
            if role and name:
                return Peer(role, name)
    return None


class Admission:
    """Which roles may call which methods of one server (rule 2).

    `rules` maps a full service name (`ringcast.internal.v1.StoreService`) or a full method name
    (`/ringcast.internal.v1.PlacementService/ReportUnreachable`, checked first) to the roles allowed.
    A method no rule names is open to any certificate from the CA (health, reflection: services and
    admin tools only, since the handshake keeps everyone else out).
    """

    def __init__(self, rules: Mapping[str, frozenset[str]]) -> None:
        self.rules = dict(rules)

    def allowed(self, method: str) -> frozenset[str] | None:
        rule = self.rules.get(method)
        if rule is None:
            rule = self.rules.get(method.lstrip("/").split("/", 1)[0])
        return rule

    def admit(self, method: str, context: grpc.aio.ServicerContext) -> ServiceError | None:
        """None if the caller may call `method`, else the error to answer with."""
        if _identity is None or not self.rules:
            return None
        peer = peer_of(context)
        if peer is None:
            return ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.PEER_UNIDENTIFIED,
                f"{method}: the caller's certificate names no ringcast role",
            )
        allowed = self.allowed(method)
        if allowed is None or peer.role in allowed:
            return None
        return ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.ROLE_DENIED,
            f"{method} is not served to a {peer.role} ({peer.name}); it is for {', '.join(sorted(allowed))}",
            {"role": peer.role},
        )


OPEN = Admission({})
"""No rules: any caller the handshake let in (the gateway's public port)."""

_INTERNAL = "ringcast.internal.v1."

STORE = Admission({f"{_INTERNAL}StoreService": frozenset({"channel"})})
"""Fence, Append, AppendStream and Read: only channel nodes (owners) write and read replica logs."""

CHANNEL = Admission(
    {
        f"{_INTERNAL}ChannelService": frozenset({"gateway"}),
        f"/{_INTERNAL}ChannelService/GetNode": frozenset({"gateway", ADMIN}),
    }
)
"""A channel node serves gateways; its GetNode (which channels it holds) also operators' tools."""

PLACEMENT = Admission(
    {
        f"{_INTERNAL}PlacementService": frozenset({"gateway", "channel", ADMIN}),
        f"/{_INTERNAL}PlacementService/ReportUnreachable": frozenset({"gateway"}),
    }
)
"""Reading the ring: the services that route by it, and operators; ReportUnreachable: gateways."""

__all__ = [
    "ADMIN",
    "CHANNEL",
    "OPEN",
    "PLACEMENT",
    "STORE",
    "ROLE_URI_PREFIX",
    "Admission",
    "Peer",
    "ServiceTLS",
    "configure",
    "dial",
    "identity",
    "peer_of",
]
