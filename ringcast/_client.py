"""`ringcast.Client`: the platform from an asyncio program."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from ringcast._endpoints import EndpointStatus, HealthPolicy
from ringcast._errors import ClientClosed, InvalidArgument
from ringcast._presence import Presence
from ringcast._publisher import BatchLimits, Publisher
from ringcast._subscription import Subscription
from ringcast._transport import Gateway, StateListener, TokenProvider, Transport, channel_credentials
from ringcast._types import ChannelInfo, ClientStats, ConnectionState, Message, OutgoingMessage
from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2

history_page_max = 1_000
"""The largest page the platform serves."""


class Client:
    """A client of a ringcast cluster, talking to any of its gateways.

        async with ringcast.Client(["10.0.0.1:7409", "10.0.0.2:7409"]) as client:
            serial = await client.publish("chat:lobby", "hello")
            async for message in client.subscribe("chat:lobby", after=serial - 1):
                print(message.serial, message.text())

    The first endpoint is preferred; a gateway that fails, stops answering, errs too often or grows
    slow is demoted and another is used, and the preferred one is tried again later (see
    `endpoints()`). Only UNAVAILABLE and unanswered attempts are retried, with jittered backoff,
    until the request's deadline (`timeout_s`); every publish carries message ids, so a retry never
    stores a message twice. All times are in seconds.

    Security: `ca` (PEM bytes or a file) turns on TLS checked against it (`tls=True` alone uses the
    system's roots). `token` is sent as `authorization: Bearer` on every call; with `token_provider`
    (an async callable returning a token) the client fetches a new one before the one held expires,
    and when a gateway refuses it as expired or revoked, retries the call and resumes subscriptions
    after their last serial with the new one: nothing lost, nothing twice.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("127.0.0.1:7409",),
        *,
        timeout_s: float = 15.0,
        attempt_timeout_s: float = 5.0,
        linger_s: float = 0.0,
        batch_messages_max: int = 100,
        batch_bytes_max: int = 1024 * 1024,
        pending_messages_max: int = 100_000,
        pending_bytes_max: int = 64 * 1024 * 1024,
        health: HealthPolicy | None = None,
        keepalive_s: float = 1.0,
        backoff_s_min: float = 0.05,
        backoff_s_max: float = 1.0,
        suspended_after_s: float = 30.0,
        resume_timeout_s: float = 300.0,
        client_id: str | None = None,
        tls: bool | None = None,
        ca: bytes | str | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
    ) -> None:
        addresses = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if timeout_s <= 0 or attempt_timeout_s <= 0:
            raise ValueError("timeout_s and attempt_timeout_s must be positive")
        if not 0 < backoff_s_min <= backoff_s_max:
            raise ValueError("need 0 < backoff_s_min <= backoff_s_max")
        self.timeout_s = timeout_s
        self.resume_timeout_s = resume_timeout_s
        self.client_id = client_id or secrets.token_urlsafe(9)
        self.connection_id = secrets.token_urlsafe(12)
        """This client object's connection: a presence member is (client id, connection id)."""
        self._ids = itertools.count(1)
        self._stats = ClientStats()
        secure = ca is not None if tls is None else tls
        self._transport = Transport(
            addresses,
            credentials=channel_credentials(ca) if secure else None,
            token=token,
            token_provider=token_provider,
            stats=self._stats,
            health=health,
            attempt_timeout_s=attempt_timeout_s,
            backoff_s_min=backoff_s_min,
            backoff_s_max=backoff_s_max,
            keepalive_s=keepalive_s,
            suspended_after_s=suspended_after_s,
        )
        self._publisher = Publisher(
            self._transport,
            self._stats,
            BatchLimits(linger_s, batch_messages_max, batch_bytes_max, pending_messages_max, pending_bytes_max),
        )
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._presences: dict[str, Presence] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def flush(self) -> None:
        """Wait until every publish queued so far is acknowledged or has failed."""
        await self._publisher.flush()

    async def close(self, *, flush: bool = True) -> None:
        """Finish queued publishes (unless `flush=False`), end subscriptions, close the connections."""
        if self._transport.closed:
            return
        if flush:
            await self.flush()
        self._publisher.fail_all(ClientClosed())
        for subscription in list(self._subscriptions):
            await subscription.close()
        for presence in list(self._presences.values()):
            await presence.close()
        await self._transport.close()

    # -- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._transport.state

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(StateChange)` on every state change; returns a function that stops it."""
        return self._transport.on_state_change(listener)

    def endpoints(self) -> list[EndpointStatus]:
        """What the client thinks of each gateway now, in preference order."""
        return self._transport.pool.status(asyncio.get_running_loop().time())

    @property
    def stats(self) -> ClientStats:
        return self._stats

    # -- publishing -------------------------------------------------------------------------------

    def new_id(self) -> str:
        """A message id unique to this client: `<client id>:<counter>`."""
        return f"{self.client_id}:{next(self._ids)}"

    def _message(self, message: OutgoingMessage | bytes | str) -> message_pb2.Message:
        if not isinstance(message, OutgoingMessage):
            message = OutgoingMessage(message)
        data = message.data.encode() if isinstance(message.data, str) else bytes(message.data)
        return message_pb2.Message(
            id=message.id if message.id is not None else self.new_id(),
            name=message.name,
            data=data,
            headers=dict(message.headers or {}),
        )

    def _deadline(self, timeout_s: float | None) -> float:
        if self._transport.closed:
            raise ClientClosed()
        return asyncio.get_running_loop().time() + (self.timeout_s if timeout_s is None else timeout_s)

    async def publish(
        self,
        channel: str,
        data: bytes | str,
        *,
        name: str = "",
        id: str | None = None,  # noqa: A002 - the API's word for it
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """Publish one message; returns its serial once it is stored in a quorum of zones.

        Concurrent publishes to a channel are coalesced into batches. Publishing an id again within
        the dedup window returns the original serial and stores nothing.
        """
        deadline = self._deadline(timeout_s)
        self._stats.publish_calls += 1
        message = self._message(OutgoingMessage(data, name, id, headers))
        (serial,) = await self._publisher.publish(channel, [message], deadline)
        return serial

    async def publish_many(
        self, channel: str, messages: Iterable[OutgoingMessage | bytes | str], *, timeout_s: float | None = None
    ) -> list[int]:
        """Publish messages in this order; returns their serials. Each batch of up to the platform's
        batch limit (100 messages, 1 MiB) is atomic; a longer list is sent as consecutive batches."""
        deadline = self._deadline(timeout_s)
        outgoing = [self._message(message) for message in messages]
        if not outgoing:
            raise InvalidArgument("publish_many needs at least one message", reason=Reason.BATCH_EMPTY)
        self._stats.publish_calls += 1
        return await self._publisher.publish(channel, outgoing, deadline)

    # -- reading ----------------------------------------------------------------------------------

    def subscribe(self, channel: str, *, after: int | None = None, rewind: int | None = None) -> Subscription:
        """Follow a channel: every message after serial `after`, or the last `rewind` still retained,
        or (neither given) those committed from now on; then new ones, resuming across failures."""
        if after is not None and rewind is not None:
            raise ValueError("give `after` or `rewind`, not both")
        if (after is not None and after < 0) or (rewind is not None and rewind < 0):
            raise ValueError("`after` and `rewind` must not be negative")
        if self._transport.closed:
            raise ClientClosed()
        subscription = Subscription(
            self._transport,
            self._stats,
            channel,
            after=after,
            rewind=rewind,
            resume_timeout_s=self.resume_timeout_s,
            start_timeout_s=self.timeout_s,
        )
        self._subscriptions.add(subscription)
        return subscription

    async def history(
        self,
        channel: str,
        *,
        after: int = 0,
        limit: int = 100,
        reverse: bool = False,
        timeout_s: float | None = None,
    ) -> HistoryPage:
        """One page of committed messages: forward, those after serial `after`; with `reverse`, the
        newest first, below serial `after` (0: from the end). `await page.next()` gets the next page.
        When retention dropped messages the page would have held, `page.gap_next_serial` says where
        what is retained begins (a forward page starts there; a reverse page ends above it)."""
        if not 1 <= limit <= history_page_max:
            raise ValueError(f"limit must be 1..{history_page_max}")
        request = realtime_pb2.HistoryRequest(channel=channel, after_serial=after, limit=limit, reverse=reverse)

        async def invoke(gateway: Gateway, timeout: float) -> realtime_pb2.HistoryResponse:
            response: realtime_pb2.HistoryResponse = await gateway.stub.History(
                request, timeout=timeout, metadata=self._transport.metadata()
            )
            return response

        response = await self._transport.call(invoke, self._deadline(timeout_s), what=f"history of {channel!r}")
        messages = [Message.from_proto(channel, message) for message in response.messages]
        gap = int(response.gap.next_serial) if response.HasField("gap") else 0
        return HistoryPage(self, channel, messages, limit, reverse, timeout_s, gap)

    async def history_all(
        self, channel: str, *, after: int = 0, reverse: bool = False, page_size: int = history_page_max
    ) -> AsyncIterator[Message]:
        """Every message `history` would give, page after page (what retention dropped is not there:
        use `history` and its `gap_next_serial` to tell)."""
        page: HistoryPage | None = await self.history(channel, after=after, limit=page_size, reverse=reverse)
        while page is not None:
            for message in page.messages:
                yield message
            page = await page.next()

    def presence(self, channel: str) -> Presence:
        """The channel's presence, for this client: `enter`, `update`, `leave`, `members`,
        `subscribe` (one object per channel and client)."""
        if self._transport.closed:
            raise ClientClosed()
        presence = self._presences.get(channel)
        if presence is None:
            presence = self._presences[channel] = Presence(self, channel)
        return presence

    async def get_channel(self, channel: str, *, timeout_s: float | None = None) -> ChannelInfo:
        """The channel's owner, epoch, last committed serial and members present."""

        async def invoke(gateway: Gateway, timeout: float) -> realtime_pb2.GetChannelResponse:
            request = realtime_pb2.GetChannelRequest(channel=channel)
            answer: realtime_pb2.GetChannelResponse = await gateway.stub.GetChannel(
                request, timeout=timeout, metadata=self._transport.metadata()
            )
            return answer

        answer = await self._transport.call(invoke, self._deadline(timeout_s), what=f"channel {channel!r}")
        return ChannelInfo(
            name=answer.name,
            owner=answer.owner,
            epoch=int(answer.epoch),
            last_serial=int(answer.last_serial),
            ring_version=int(answer.ring_version),
            members=int(answer.occupancy.members),
        )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of history. `has_next` is false once a page comes back short (or reaches serial 1)."""

    client: Client
    channel: str
    messages: list[Message]
    limit: int
    reverse: bool
    timeout_s: float | None
    gap_next_serial: int = 0
    """Non-zero when messages asked for are no longer retained (RETENTION_EXPIRED): retained history
    begins at this serial."""

    @property
    def has_next(self) -> bool:
        if len(self.messages) < self.limit:
            return False
        return not (self.reverse and (self.messages[-1].serial <= 1 or self.gap_next_serial))

    async def next(self) -> HistoryPage | None:
        """The page after this one, or None when this is the last."""
        if not self.has_next:
            return None
        return await self.client.history(
            self.channel,
            after=self.messages[-1].serial,
            limit=self.limit,
            reverse=self.reverse,
            timeout_s=self.timeout_s,
        )
