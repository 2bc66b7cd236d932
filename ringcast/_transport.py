"""Requests to the gateways: one gRPC channel per gateway, failover between them, bounded retries.

A request is retried only when it failed with UNAVAILABLE, or when the gateway did not answer
within the attempt timeout (a paused or partitioned gateway). Every retry goes to the healthiest
gateway other than the one that just failed, after a jittered backoff, until the request's overall
deadline. Everything else (INVALID_ARGUMENT first of all) is raised at once as a `RingcastError`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from opentelemetry import propagate

from ringcast._endpoints import EndpointPool, HealthPolicy, Outcome
from ringcast._errors import ClientClosed, Unavailable, error_info, from_rpc_error, retry_delay
from ringcast._types import ClientStats, ConnectionState, StateChange
from ringcast.pipe import PipeClient
from ringcast.reasons import Reason
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc

log = logging.getLogger("ringcast.client")

T = TypeVar("T")

Stub: TypeAlias = Any
"""A RealtimeService stub (the generated code is untyped)."""

PublishPipe: TypeAlias = PipeClient[realtime_pb2.PublishRequest, realtime_pb2.PublishResponse]


@dataclass(frozen=True, slots=True)
class Gateway:
    """What one attempt talks to: a gateway's address, its stub, and its PublishPipe stream."""

    address: str
    stub: Stub
    pipe: PublishPipe


StateListener = Callable[[StateChange], None]

response_bytes_max = 128 * 1024 * 1024
"""Largest answer the client accepts: a history page of 1,000 messages of 64 KiB, with room."""


def channel_options(keepalive_s: float) -> tuple[tuple[str, int], ...]:
    """gRPC channel settings. HTTP/2 pings every `keepalive_s` while a call is open notice a gateway
    that stopped answering (paused, partitioned) within about twice that, even on a quiet
    subscription; the gateways accept pings that often. gRPC's own retries are off: we retry."""
    keepalive_ms = max(100, int(keepalive_s * 1000))
    return (
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", keepalive_ms),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", response_bytes_max),
        ("grpc.max_send_message_length", response_bytes_max),
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        # A gateway named by DNS that comes back at another address is found within a second (gRPC's
        # default waits 30 s between lookups of a name).
        ("grpc.dns_min_time_between_resolutions_ms", 1_000),
    )


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The caller's OpenTelemetry context as W3C `traceparent` metadata (nothing when no span is active)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


TokenProvider = Callable[[], Awaitable[str]]
"""An async callable that returns a fresh token (the application's auth server, say)."""

token_renew_ahead_s_max = 30.0
"""At most this long before a token expires the client asks for the next one."""

token_renewals_max = 3
"""Renewals in a row (no call getting through in between) before a token error is raised."""


def renew_at(token: str) -> float | None:
    """When to ask for a new token: a fifth of its life (at most `token_renew_ahead_s_max`) before
    its `exp`, read without checking it (the gateway checks). None: it says no expiry."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        expires = float(claims["exp"])
        lifetime = expires - float(claims.get("iat", expires - 5 * token_renew_ahead_s_max))
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    return expires - min(token_renew_ahead_s_max, max(0.0, lifetime) / 5)


def channel_credentials(ca: bytes | str | None) -> grpc.ChannelCredentials:
    """TLS that checks the gateway against `ca` (PEM bytes or a file path), or the system's roots."""
    if isinstance(ca, str):
        with open(ca, "rb") as file:
            ca = file.read()
    return grpc.ssl_channel_credentials(root_certificates=ca)


class Transport:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        stats: ClientStats,
        health: HealthPolicy | None,
        attempt_timeout_s: float,
        backoff_s_min: float,
        backoff_s_max: float,
        keepalive_s: float,
        suspended_after_s: float,
    ) -> None:
        self.pool = EndpointPool(endpoints, health)
        self.stats = stats
        self.attempt_timeout_s = attempt_timeout_s
        self.backoff_s_min = backoff_s_min
        self.backoff_s_max = backoff_s_max
        self.suspended_after_s = suspended_after_s
        self._options = channel_options(keepalive_s)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._gateways: dict[str, Gateway] = {}
        self.state = ConnectionState.INITIALIZED
        self._listeners: list[StateListener] = []
        self._failing_since: float | None = None
        self.closed = False
        self.credentials = credentials
        self.token = token
        self.token_provider = token_provider
        self._renew_at: tuple[str, float | None] | None = None
        """(token, when to renew it): `renew_at` read once per token, not once per call."""
        self._renewing: asyncio.Task[str] | None = None

    # -- channels ---------------------------------------------------------------------------------

    def gateway(self, address: str) -> Gateway:
        if self.closed:
            raise ClientClosed()
        gateway = self._gateways.get(address)
        if gateway is None:
            if self.credentials is None:
                channel = grpc.aio.insecure_channel(address, options=self._options)
            else:
                channel = grpc.aio.secure_channel(address, self.credentials, options=self._options)
            self._channels[address] = channel
            stub = realtime_grpc.RealtimeServiceStub(channel)
            pipe: PublishPipe = PipeClient(
                lambda: stub.PublishPipe(metadata=self.auth_metadata()),
                realtime_pb2.PublishPipeRequest,
                realtime_pb2.PipedPublish,
                name=address,
            )
            gateway = self._gateways[address] = Gateway(address, stub, pipe)
        return gateway

    # -- tokens -----------------------------------------------------------------------------------

    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call carries: the caller's trace context and the token."""
        return trace_metadata() + self.auth_metadata()

    async def ensure_token(self) -> None:
        """Ask the provider for a token when there is none or the one held is about to expire
        (`renew_at`), so calls rarely meet an expired one."""
        if self.token_provider is None:
            return
        if self.token:
            if self._renew_at is None or self._renew_at[0] != self.token:
                self._renew_at = (self.token, renew_at(self.token))
            renew = self._renew_at[1]
            if renew is None or time.time() < renew:
                return
        await self.renew_token(self.token)

    def rate_limited_for(self, error: grpc.aio.AioRpcError) -> float | None:
        """How long a RATE_LIMITED refusal says to wait (its google.rpc.RetryInfo), else None."""
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        delay = retry_delay(error)
        if delay is not None:
            self.stats.rate_limited += 1
        return delay

    def renewable(self, error: grpc.aio.AioRpcError) -> bool:
        """A token refusal a new token from the provider may cure."""
        if self.token_provider is None or error.code() != grpc.StatusCode.UNAUTHENTICATED:
            return False
        info = error_info(error)
        return info is not None and info.reason in (Reason.TOKEN_EXPIRED, Reason.TOKEN_REVOKED)

    async def renew_token(self, stale: str | None) -> None:
        """A new token from the provider, unless another caller has already replaced `stale`; one
        provider call at a time, whoever is waiting on it."""
        if self.token_provider is None or (self.token is not None and self.token != stale):
            return
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.ensure_future(self._fetch_token(self.token_provider))
        await asyncio.shield(self._renewing)

    async def _fetch_token(self, provider: TokenProvider) -> str:
        token = await provider()
        if not token:
            raise ValueError("the token provider returned no token")
        self.token = token
        self.stats.token_renewals += 1
        return token

    def stub(self, address: str) -> Stub:
        return self.gateway(address).stub

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._set_state(ConnectionState.CLOSED, "closed by the application", None)
        channels, self._channels = list(self._channels.values()), {}
        gateways, self._gateways = list(self._gateways.values()), {}
        for gateway in gateways:
            await gateway.pipe.close()
        for channel in channels:
            await channel.close()

    # -- health and state -------------------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _set_state(self, state: ConnectionState, reason: str, endpoint: str | None) -> None:
        if state is self.state or self.state is ConnectionState.CLOSED:
            return
        change = StateChange(self.state, state, reason, endpoint)
        self.state = state
        log.info("connection %s -> %s (%s)", change.previous.value, state.value, reason)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a listener's bug must not break the client
                log.exception("state listener failed")

    def succeeded(self, address: str, latency_s: float) -> None:
        now = asyncio.get_running_loop().time()
        self.pool.record(address, Outcome.SUCCESS, now, latency_s=latency_s)
        self._failing_since = None
        self._set_state(ConnectionState.CONNECTED, "answered", address)

    def failed(self, address: str, outcome: Outcome, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        if self.pool.record(address, outcome, now, reason=reason):
            log.warning("gateway %s demoted: %s", address, reason)
        if outcome is not Outcome.HARD_FAILURE:
            return
        self._failing_since = self._failing_since if self._failing_since is not None else now
        if self.pool.healthy_count(now) == 0 and now - self._failing_since >= self.suspended_after_s:
            self._set_state(ConnectionState.SUSPENDED, reason, address)
        elif self.state is not ConnectionState.SUSPENDED:
            self._set_state(ConnectionState.DISCONNECTED, reason, address)

    @staticmethod
    def classify(error: grpc.aio.AioRpcError) -> tuple[Outcome, str] | None:
        """How a failed attempt reflects on its gateway, or None when the request must not be retried."""
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            info = error_info(error)
            if info is not None:  # the gateway answered: something behind it is down
                return Outcome.SOFT_FAILURE, str(info.reason)
            return Outcome.HARD_FAILURE, f"UNAVAILABLE: {error.details() or 'no connection'}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:  # no answer within the attempt timeout
            return Outcome.HARD_FAILURE, Reason.NO_ANSWER
        if code == grpc.StatusCode.INTERNAL and error_info(error) is None:
            # Not the platform's INTERNAL (it always says why): the transport's, e.g. a stream reset
            # ("Internal error from Core", RST_STREAM): retried like a lost connection.
            return Outcome.HARD_FAILURE, f"INTERNAL: {error.details() or 'transport error'}"
        return None

    def backoff(self, attempt: int) -> float:
        """Jittered exponential backoff before retry number `attempt` (1, 2, ...)."""
        ceiling = min(self.backoff_s_max, self.backoff_s_min * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    # -- unary requests ---------------------------------------------------------------------------

    async def call(
        self,
        invoke: Callable[[Gateway, float], Awaitable[T]],
        deadline: float,
        *,
        what: str,
        ids: Sequence[str] = (),
    ) -> T:
        """`invoke(gateway, attempt_timeout)` on the healthiest gateway, failing over until `deadline`."""
        loop = asyncio.get_running_loop()
        attempts = 0
        previous: str | None = None
        reason = "UNAVAILABLE"
        tried: list[str] = []
        renewals = 0
        while True:
            now = loop.time()
            if now >= deadline and attempts:
                raise Unavailable(
                    f"{what}: no gateway answered before the deadline ({attempts} attempts; last: {reason})",
                    reason=reason,
                    attempts=attempts,
                    endpoints=tried,
                    ids=ids,
                )
            address = self.pool.pick(now, avoid=previous)
            if attempts:
                self.stats.retries += 1
                self.stats.failovers += address != previous
            attempts += 1
            tried.append(address)
            timeout = max(0.001, min(deadline - now, self.attempt_timeout_s))
            cut_short = timeout < self.attempt_timeout_s  # by the request's own deadline
            await self.ensure_token()
            token = self.token
            try:
                result = await invoke(self.gateway(address), timeout)
            except grpc.aio.AioRpcError as error:
                verdict = self.classify(error)
                if verdict is None and self.renewable(error) and renewals < token_renewals_max:
                    renewals += 1
                    await self.renew_token(token)
                    previous = None
                    continue
                delay = self.rate_limited_for(error)
                if verdict is None and delay is not None and loop.time() + delay < deadline:
                    await asyncio.sleep(delay)  # the gateway said when: honour it, on any gateway
                    previous = None
                    continue
                if verdict is None:
                    self.succeeded(address, loop.time() - now)  # it answered, with a refusal
                    raise from_rpc_error(error) from None
                if cut_short and attempts > 1 and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # The request ran out of time, not the gateway out of answers: neither a verdict
                    # on the gateway nor news — the last real answer stays the reason reported.
                    continue
                outcome, reason = verdict
                self.failed(address, outcome, reason)
            except grpc.aio.UsageError as error:  # the channel was closed under us
                if self.closed:
                    raise ClientClosed() from error
                raise
            else:
                self.succeeded(address, loop.time() - now)
                return result
            previous = address
            pause = min(self.backoff(attempts), max(0.0, deadline - loop.time()))
            if pause > 0:
                await asyncio.sleep(pause)
