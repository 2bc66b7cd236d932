"""Who is calling, and what they may do: bearer tokens at the gateway (DESIGN §10, issue #16).

Rules:

1. Every call and stream carries `authorization: Bearer <JWT>` metadata. The token names its key in
   the header (`kid`); the key fixes the algorithm (HS256 with a secret, EdDSA or ES256 with a public
   key), so a token cannot choose it: `alg: none`, or HS256 signed with a public key as the secret,
   fail like a bad signature. Claims `sub`, `exp`, `iat`, `jti` are required, `nbf` honoured,
   `clock_skew_s` allowed either way, and a lifetime (`exp - iat`) above `token_lifetime_s_max`
   refused, so a revocation need only be kept that long.
2. `capability` ({pattern: [operations]}, services/core/capability.py) is checked on every call, per
   channel: publish for Publish/PublishStream/PublishPipe items, subscribe for Subscribe, history for
   History, any operation on the channel for GetChannel. `limits` (optional, NATS style):
   `publish_rate` messages per second, `subscriptions` at once, `message_bytes` per message.
3. Refusals: UNAUTHENTICATED TOKEN_MISSING / TOKEN_INVALID / TOKEN_EXPIRED / TOKEN_REVOKED, and
   PERMISSION_DENIED CAPABILITY_DENIED, each with a reason a client can act on.
4. Streams outlive tokens only until `exp` or a revocation that covers them: `streaming(grant)` wraps a
   stream's responses and ends it with TOKEN_EXPIRED / TOKEN_REVOKED — at the next await inside the
   stream, never in the middle of a write — within a second of the revocation reaching the gateway.
5. Verified tokens are cached (bounded, by the token string) until their expiry, so a client that
   sends the same token on every call pays for one signature check.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt

from ringcast.reasons import Reason
from services.common.errors import ServiceError
from services.common.revocations import Revocations, clock_skew_s, token_lifetime_s_max
from services.core.capability import Capability, CapabilityError

log = logging.getLogger("ringcast.gateway.auth")

T = TypeVar("T")

token_chars_max = 8 * 1024
"""Longest token read (larger metadata is refused before any parsing)."""

verified_cache_max = 10_000
"""Verified tokens remembered (least recently used forgotten first)."""

ALGORITHMS = ("HS256", "EdDSA", "ES256")


@dataclass(frozen=True, slots=True)
class TokenKey:
    """One verification key: its id, its one algorithm, and the key (secret bytes or a public key)."""

    kid: str
    algorithm: str
    key: Any


def load_keys(path: str | Path) -> dict[str, TokenKey]:
    """The keyset file: {"keys": [{"kid", "alg": "HS256", "secret": base64url} |
    {"kid", "alg": "EdDSA"|"ES256", "public_key": PEM}]}. Refuses anything else, loudly."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    document = json.loads(Path(path).read_text())
    keys: dict[str, TokenKey] = {}
    for entry in document.get("keys", []):
        kid, algorithm = str(entry.get("kid", "")), str(entry.get("alg", ""))
        if not kid or algorithm not in ALGORITHMS:
            raise SystemExit(f"token keys {path}: key {kid!r} needs a kid and an alg among {', '.join(ALGORITHMS)}")
        if algorithm == "HS256":
            secret = base64.urlsafe_b64decode(str(entry["secret"]) + "==")
            if len(secret) < 32:
                raise SystemExit(f"token keys {path}: HS256 key {kid!r} is shorter than 32 bytes")
            keys[kid] = TokenKey(kid, algorithm, secret)
        else:
            keys[kid] = TokenKey(kid, algorithm, load_pem_public_key(str(entry["public_key"]).encode()))
    if not keys:
        raise SystemExit(f"token keys {path}: no keys")
    return keys


@dataclass(frozen=True, slots=True)
class TokenLimits:
    publish_rate: float = 0.0
    """Messages per second (0: the gateway's default)."""
    subscriptions: int = 0
    """Subscriptions open at once (0: the gateway's default)."""
    message_bytes: int = 0
    """Largest message (0: the platform's limit)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token says."""

    sub: str
    jti: str
    issued_at: float
    expires_at: float
    capability: Capability
    limits: TokenLimits = field(default_factory=TokenLimits)

    def require(self, channel: str, operation: str) -> None:
        allowed = self.capability.allows_any(channel) if operation == "" else self.capability.allows(channel, operation)
        if not allowed:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                Reason.CAPABILITY_DENIED,
                f"the token of {self.sub!r} does not allow {operation or 'any operation'} on {channel!r}",
                {"operation": operation or "any", "channel": channel[:256]},
            )


def unauthenticated(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


class _Live:
    """One open stream: its grant, the task serving it, and whether it may be interrupted now."""

    __slots__ = ("ended", "grant", "inside", "task")

    def __init__(self, grant: Grant, task: asyncio.Task[Any]) -> None:
        self.grant = grant
        self.task = task
        self.inside = True
        self.ended: ServiceError | None = None

    def end(self, error: ServiceError) -> None:
        if self.ended is None:
            self.ended = error
            if self.inside:
                self.task.cancel()


class Authenticator:
    def __init__(self, keys: Mapping[str, TokenKey], *, now: Callable[[], float] = time.time) -> None:
        self.keys = dict(keys)
        self.now = now
        self.revocations = Revocations()
        self._verified: OrderedDict[str, Grant] = OrderedDict()
        self._live: set[_Live] = set()

    # -- tokens -----------------------------------------------------------------------------------

    def grant(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Grant:
        """The grant of the call's bearer token, or the refusal (rule 3)."""
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if header is None:
            raise unauthenticated(Reason.TOKEN_MISSING, "no token: send `authorization: Bearer <token>` metadata")
        text = header.decode(errors="replace") if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated(Reason.TOKEN_MISSING, "authorization metadata must be `Bearer <token>`")
        token = token.strip()
        if len(token) > token_chars_max:
            raise unauthenticated(Reason.TOKEN_INVALID, f"token longer than {token_chars_max} characters")
        grant = self._verified.get(token)
        if grant is None:
            grant = self._verify(token)
            self._verified[token] = grant
            while len(self._verified) > verified_cache_max:
                self._verified.popitem(last=False)
        else:
            self._verified.move_to_end(token)
        if self.now() >= grant.expires_at + clock_skew_s:
            raise unauthenticated(Reason.TOKEN_EXPIRED, f"the token of {grant.sub!r} has expired")
        if self.revocations.covers(grant.sub, grant.jti, grant.issued_at):
            raise unauthenticated(Reason.TOKEN_REVOKED, f"the token of {grant.sub!r} has been revoked")
        return grant

    def _verify(self, token: str) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise unauthenticated(Reason.TOKEN_INVALID, f"the token does not parse: {error}") from None
        key = self.keys.get(str(header.get("kid", "")))
        if key is None:
            raise unauthenticated(Reason.TOKEN_INVALID, f"the token names an unknown key id {header.get('kid')!r}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],  # the key's algorithm, whatever the header says
                leeway=clock_skew_s,
                options={"require": ["sub", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated(Reason.TOKEN_EXPIRED, "the token has expired") from None
        except jwt.PyJWTError as error:
            raise unauthenticated(Reason.TOKEN_INVALID, f"the token is not valid: {error}") from None
        try:
            return _grant_from(claims)
        except (CapabilityError, TypeError, ValueError) as error:
            raise unauthenticated(Reason.TOKEN_INVALID, f"the token's claims are not valid: {error}") from None

    # -- streams ----------------------------------------------------------------------------------

    async def streaming(self, grant: Grant | None, responses: AsyncIterator[T]) -> AsyncIterator[T]:
        """`responses`, ended with TOKEN_EXPIRED at the grant's expiry or TOKEN_REVOKED on a revocation
        that covers it (rule 4). None: no tokens on this gateway, nothing to end."""
        if grant is None:
            async for response in responses:
                yield response
            return
        task = asyncio.current_task()
        assert task is not None
        live = _Live(grant, task)
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(
            max(0.0, grant.expires_at + clock_skew_s - self.now()),
            live.end,
            unauthenticated(Reason.TOKEN_EXPIRED, f"the token of {grant.sub!r} expired: get a new one and resume"),
        )
        self._live.add(live)
        try:
            while True:
                try:
                    response = await anext(responses)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if live.ended is not None and task.uncancel() == 0:
                        raise live.ended from None
                    raise
                if live.ended is not None:
                    raise live.ended
                live.inside = False
                yield response  # not interrupted while the response is being written
                live.inside = True
                if live.ended is not None:
                    raise live.ended
        finally:
            expiry.cancel()
            self._live.discard(live)
            close = getattr(responses, "aclose", None)
            if close is not None:
                await close()

    def revoked(self, revocations: Revocations) -> None:
        """New revocations from etcd: later calls see them, and the streams they cover end now."""
        self.revocations = revocations
        for token, grant in list(self._verified.items()):
            if revocations.covers(grant.sub, grant.jti, grant.issued_at):
                del self._verified[token]
        for live in list(self._live):
            if revocations.covers(live.grant.sub, live.grant.jti, live.grant.issued_at):
                live.end(unauthenticated(Reason.TOKEN_REVOKED, f"the token of {live.grant.sub!r} was revoked"))


def stamp(messages: Iterable[Any], grant: Grant) -> None:
    """Each message as published by the grant's subject (`client_id`), within its largest message."""
    for message in messages:
        if grant.limits.message_bytes and len(message.data) > grant.limits.message_bytes:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.MESSAGE_TOO_LARGE,
                f"message {message.id[:64]!r} has {len(message.data)} bytes of data; the token allows "
                f"{grant.limits.message_bytes}",
                {"limit": str(grant.limits.message_bytes)},
            )
        message.client_id = grant.sub


def _grant_from(claims: Mapping[str, Any]) -> Grant:
    sub, jti = claims["sub"], claims["jti"]
    if not isinstance(sub, str) or not sub or len(sub) > 128 or not sub.isprintable():
        raise ValueError("sub must be 1-128 printable characters")
    if not isinstance(jti, str) or not jti or len(jti) > 128:
        raise ValueError("jti must be 1-128 characters")
    issued_at, expires_at = float(claims["iat"]), float(claims["exp"])
    if expires_at - issued_at > token_lifetime_s_max:
        raise ValueError(f"lifetime {expires_at - issued_at:.0f} s is above {token_lifetime_s_max} s")
    raw_capability = claims.get("capability", {})
    if isinstance(raw_capability, str):  # Ably sends it as a JSON string
        raw_capability = json.loads(raw_capability)
    raw_limits = claims.get("limits") or {}
    if not isinstance(raw_limits, Mapping):
        raise ValueError("limits must be an object")
    limits = TokenLimits(
        publish_rate=float(raw_limits.get("publish_rate", 0)),
        subscriptions=int(raw_limits.get("subscriptions", 0)),
        message_bytes=int(raw_limits.get("message_bytes", 0)),
    )
    if min(limits.publish_rate, limits.subscriptions, limits.message_bytes) < 0:
        raise ValueError("limits must not be negative")
    return Grant(sub, jti, issued_at, expires_at, Capability.parse(raw_capability), limits)


__all__ = ["Authenticator", "Grant", "TokenKey", "TokenLimits", "load_keys", "stamp"]
