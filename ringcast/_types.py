"""The values the SDK hands to and takes from applications."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ringcast.v1 import message_pb2


@dataclass(frozen=True, slots=True)
class Message:
    """A committed message of a channel: `serial` is its position (1, 2, 3, ... with no gaps)."""

    channel: str
    serial: int
    id: str
    data: bytes
    name: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0
    client_id: str = ""
    """Who published it: the `sub` of their token, stamped by the platform ("" without tokens)."""

    def text(self, encoding: str = "utf-8") -> str:
        """The data decoded as text."""
        return self.data.decode(encoding)

    @classmethod
    def from_proto(cls, channel: str, message: message_pb2.Message) -> Message:
        return cls(
            channel=channel,
            serial=int(message.serial),
            id=str(message.id),
            data=bytes(message.data),
            name=str(message.name),
            headers=dict(message.headers),
            timestamp_ms=int(message.timestamp_ms),
            client_id=str(message.client_id),
        )


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish. Without an `id` the client makes one, so every retry stays idempotent."""

    data: bytes | str
    name: str = ""
    id: str | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """A channel as the platform sees it: its owner node, epoch, last committed serial, members."""

    name: str
    owner: str
    epoch: int
    last_serial: int
    ring_version: int
    members: int = 0
    """Members of its presence set (occupancy)."""


class ConnectionState(enum.Enum):
    """How the client's link to the platform is doing (after Ably's connection states).

    INITIALIZED: nothing tried yet. CONNECTED: the last request was answered. DISCONNECTED: a gateway
    failed and the client is failing over. SUSPENDED: every gateway has been failing for
    `suspended_after_s`; requests still retry within their deadlines. CLOSED: `close()` was called.
    """

    INITIALIZED = "initialized"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    SUSPENDED = "suspended"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChange:
    previous: ConnectionState
    current: ConnectionState
    reason: str
    endpoint: str | None


@dataclass(slots=True)
class ClientStats:
    """Counters of what the client did, for tests, benchmarks and dashboards."""

    publish_calls: int = 0
    """`publish` / `publish_many` calls."""
    messages_published: int = 0
    """Messages acknowledged (duplicates included)."""
    publish_rpcs: int = 0
    """Publish requests sent, each a coalesced batch for one channel (every attempt counts): much
    lower than publish_calls. They travel on each gateway's PublishPipe stream, many per message."""
    retries: int = 0
    """Attempts after the first, for every kind of request."""
    failovers: int = 0
    """Retries that went to another gateway than the attempt before."""
    batches_split: int = 0
    """Coalesced batches refused as a whole and sent again one caller at a time."""
    subscribe_resumes: int = 0
    """Subscriptions resumed after a failure."""
    duplicates_dropped: int = 0
    """Messages a resumed subscription received again and did not hand to the application."""
    token_renewals: int = 0
    """New tokens fetched from the token provider (ahead of expiry, or after a refusal)."""
    rate_limited: int = 0
    """Calls a gateway refused as RATE_LIMITED; each was retried after the delay it named."""
