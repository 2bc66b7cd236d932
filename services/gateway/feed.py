"""Fan-out at the gateway: one stream from a channel's owner, shared by every local subscriber.

Rules:

1. `follow_owner` is how a gateway follows a channel: a Subscribe stream to whoever owns it under
   the newest ring, from the serial after the last one it passed on, resumed across any failure.
   The owner is watched, not trusted to fail loudly: an owner that sends nothing — no message, and
   no heartbeat, which owners send every second on a quiet stream — for `upstream_silence_s_max`,
   or that the ring no longer names, is left at once and followed again where it now is. A stream
   the owner ends (even CANCELLED: its server stopping) is resumed; only an answer that can never
   change (INVALID_ARGUMENT, ...) or no owner at all for `subscribe_outage_s_max` ends it. Serials
   are checked to follow each other: a skip is never passed on.
2. A channel with subscribers at this gateway has one `ChannelFeed`, which follows the owner once
   and keeps the newest responses in a bounded buffer (`feed_entries_max`, `feed_bytes_max`), built
   once and handed to every subscriber as they are. So the owner delivers each message once per
   gateway, not once per subscriber, and its lease keep-alives never starve behind fan-out.
3. A subscriber is served from the feed from the serial it needs next. One that needs older
   messages than the buffer holds (it starts far back, or it was too slow and the buffer moved on
   past it) follows the owner on a stream of its own from there, and joins the feed once the feed
   covers its next serial: nothing is skipped, nothing repeated, and slow readers cost only
   themselves.
4. Feeds are bounded in number (`feeds_max`; beyond it, subscribers follow the owner alone) and
   close once no subscriber has used them for `feed_idle_s`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import grpc

from ringcast.reasons import Reason
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from services.common.errors import ServiceError, passthrough, reason_of, refused, unavailable
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc

if TYPE_CHECKING:
    from services.gateway.router import OwnerRouter

log = logging.getLogger("ringcast.gateway")

upstream_silence_s_max = 4.0
"""An owner stream with nothing on it (owners send a heartbeat each second) this long is left."""

subscribe_outage_s_max = 60.0
"""A channel with no reachable owner this long ends its subscriptions (UNAVAILABLE; resumable)."""

retry_backoff_s_min = 0.02
retry_backoff_s_max = 0.5

feed_entries_max = 10_000
"""Responses (messages and gaps) one feed keeps for its subscribers."""

feed_bytes_max = 32 * 1024 * 1024
"""Message bytes one feed keeps for its subscribers."""

feed_bytes_total_max = 256 * 1024 * 1024
"""Message bytes all the feeds of one gateway keep together; over it, a feed that grows drops its oldest."""

feeds_max = 10_000
"""Channels with a shared feed at one gateway; subscribers beyond follow their owners alone."""

feed_idle_s = 30.0
"""A feed nobody has subscribed to for this long closes (a new subscriber starts it again)."""

RESUMABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
}
"""Codes that end an owner stream but not a subscription: it is followed again, at the current owner."""


class _OwnerSilent(Exception):
    pass


async def owner_responses(
    router: OwnerRouter,
    channel: str,
    open_call: Callable[[channel_grpc.ChannelServiceStub], grpc.aio.UnaryStreamCall],
    *,
    resume_on_eof: bool = True,
) -> AsyncGenerator[Any, None]:
    """Every response of the streams `open_call` opens at whoever owns `channel`, opened again at
    the current owner after any failure (rule 1); `open_call` is called for each stream, so it can
    start where the last one left off. An owner ending a stream OK opens another one too, unless
    not `resume_on_eof` (then that is the end). Raises ServiceError when it cannot go on."""
    loop = asyncio.get_running_loop()
    backoff = retry_backoff_s_min
    outage_since: float | None = None
    while True:
        owner = address = ""
        try:
            router.recent.touch(channel, loop.time())
            owner, address = router.owner(channel)
            upstream = open_call(router.stub(address))
            moved, unsubscribe = router.watch_move(channel, owner)
            try:
                while True:
                    response = await _next(upstream, moved)
                    if response is grpc.aio.EOF:
                        if not resume_on_eof:
                            return
                        break
                    outage_since, backoff = None, retry_backoff_s_min
                    yield response
            finally:
                unsubscribe()
                upstream.cancel()
        except _OwnerSilent as silent:
            log.info("left %s's stream of %s: %s", owner, channel, silent)
        except grpc.RpcError as error:
            if error.code() not in RESUMABLE or reason_of(error) in PASSED_THROUGH:
                raise passthrough(error) from error
            if refused(error):
                router.report_refused(owner, address)
        except LookupError:  # no owner under the ring (NoOwner)
            pass
        outage_since = outage_since or loop.time()
        if loop.time() - outage_since > subscribe_outage_s_max:
            raise unavailable(Reason.OWNER_UNREACHABLE, f"no owner for {channel!r}; resume later")
        await router.watcher.refresh()
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        backoff = min(backoff * 2, retry_backoff_s_max)


PASSED_THROUGH = {
    Reason.CURSOR_BEYOND_END,
    Reason.PRESENCE_DISABLED,
    Reason.NOT_PRESENT,
    Reason.RETENTION_EXPIRED,
}
"""Reasons an owner ends a stream with that no other owner would answer differently."""


async def follow_owner(
    router: OwnerRouter, channel: str, after: int
) -> AsyncGenerator[list[realtime_pb2.SubscribeResponse], None]:
    """The channel's committed messages after serial `after` (and explicit retention gaps), in
    order, as public responses in the batches the owner sent them, from whoever owns the channel;
    forever, across owner changes and failures (rule 1). Raises ServiceError when it cannot go on."""
    loop = asyncio.get_running_loop()

    def open_call(stub: channel_grpc.ChannelServiceStub) -> grpc.aio.UnaryStreamCall:
        return stub.Subscribe(channel_pb2.SubscribeRequest(channel=channel, after_serial=after))

    responses = owner_responses(router, channel, open_call)
    async with contextlib.aclosing(responses):
        async for response in responses:
            batch: list[realtime_pb2.SubscribeResponse] = []
            if response.HasField("gap") and response.gap.next_serial > after + 1:
                # Retention dropped what comes next: say so, never skip silently (G4).
                after = response.gap.next_serial - 1
                batch.append(realtime_pb2.SubscribeResponse(gap=response.gap))
            for message in response.messages:
                if message.serial != after + 1:  # the owner broke G4: never pass that on
                    log.error("owner sent serial %d after %d on %s", message.serial, after, channel)
                    raise ServiceError(grpc.StatusCode.INTERNAL, Reason.OUT_OF_ORDER, "stream broken")
                after = message.serial
            if response.messages:
                batch.append(realtime_pb2.SubscribeResponse(messages=response.messages))
            if batch:
                router.recent.touch(channel, loop.time())
                yield batch


async def _next(upstream: grpc.aio.UnaryStreamCall, moved: asyncio.Event) -> channel_pb2.SubscribeResponse:
    """The next response (or EOF) of an owner stream; _OwnerSilent when the owner sends nothing for
    `upstream_silence_s_max` or the ring names another owner first."""
    reading = asyncio.ensure_future(upstream.read())
    waiting = asyncio.ensure_future(moved.wait())
    try:
        done, _ = await asyncio.wait(
            {reading, waiting}, timeout=upstream_silence_s_max, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiting.cancel()
        # A read can end with the call's error while we are being cancelled, or after we cancelled
        # it (grpc.aio raises the status from a cancelled read): retrieve it, or asyncio logs it.
        reading.add_done_callback(_retrieved)
        if not reading.done():
            reading.cancel()
    if reading in done:
        response: channel_pb2.SubscribeResponse = reading.result()
        return response
    raise _OwnerSilent("the ring names another owner" if moved.is_set() else "no word from it in time")


def _retrieved(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


def covered_through(response: realtime_pb2.SubscribeResponse) -> int:
    """The last serial a response accounts for: its last message's, or the one before its gap's next."""
    if response.HasField("gap"):
        return int(response.gap.next_serial) - 1
    if response.messages:
        return int(response.messages[-1].serial)
    return int(response.message.serial)


def shaped(
    response: realtime_pb2.SubscribeResponse, next_serial: int, batch_max: int
) -> list[realtime_pb2.SubscribeResponse]:
    """What a subscriber that needs `next_serial` next is sent of `response` (a gap, or consecutive
    messages): the gap as it is; the messages from `next_serial` on, one per response when it asked
    for no batches (`batch_max` 0), else in responses of at most `batch_max` (the same object when
    it can be sent whole, so a feed builds nothing per subscriber)."""
    if response.HasField("gap"):
        return [response]
    messages = response.messages
    skip = next_serial - messages[0].serial
    if batch_max <= 0:
        return [realtime_pb2.SubscribeResponse(message=message) for message in messages[skip:]]
    if skip <= 0 and len(messages) <= batch_max:
        return [response]
    rest = messages[max(skip, 0) :]
    return [
        realtime_pb2.SubscribeResponse(messages=rest[start : start + batch_max])
        for start in range(0, len(rest), batch_max)
    ]


class ChannelFeed:
    """One channel's shared stream at this gateway (rules 2 and 3)."""

    def __init__(self, registry: FeedRegistry, channel: str, after: int) -> None:
        self.registry = registry
        self.channel = channel
        self._responses: list[realtime_pb2.SubscribeResponse] = []
        self._starts: list[int] = []  # the first serial each response accounts for
        self._sizes: list[int] = []
        self.base = 0  # the absolute index of _responses[0]
        self.first_serial = after + 1  # the first serial the buffer can serve
        self.next_serial = after + 1  # the serial the owner's stream continues at
        self.bytes = 0
        self.error: ServiceError | None = None
        self.subscribers = 0
        self.idle_since: float | None = None
        self._newer = asyncio.Event()
        self._task = asyncio.create_task(self._follow(), name=f"feed-{channel}")

    @property
    def end(self) -> int:
        """The absolute index after the newest response held."""
        return self.base + len(self._responses)

    def covers(self, serial: int) -> bool:
        """Whether a subscriber that needs `serial` next can be served from here (now or next)."""
        return self.error is None and self.first_serial <= serial <= self.next_serial

    def index_of(self, serial: int) -> int:
        """The absolute index of the response that accounts for `serial` (`end` for the next one)."""
        return self.base + bisect.bisect_right(self._starts, serial) - 1 if serial < self.next_serial else self.end

    def response(self, index: int) -> realtime_pb2.SubscribeResponse | None:
        """The response at absolute `index`, or None once the buffer has moved past it."""
        if index < self.base:
            return None
        return self._responses[index - self.base]

    async def wait_beyond(self, index: int) -> None:
        """Until there is a response at `index`, or the feed failed."""
        while self.end <= index and self.error is None:
            await self._newer.wait()

    def close(self) -> None:
        self._task.cancel()

    async def _follow(self) -> None:
        try:
            async for batch in follow_owner(self.registry.router, self.channel, self.next_serial - 1):
                for response in batch:
                    self._starts.append(self.next_serial)
                    self._responses.append(response)
                    size = sum(len(message.data) for message in response.messages)
                    self._sizes.append(size)
                    self.bytes += size
                    self.registry.bytes += size
                    self.next_serial = covered_through(response) + 1
                self._trim()
                self._wake()
        except ServiceError as error:
            self.error = error
        except asyncio.CancelledError:
            self.error = unavailable(Reason.SUBSCRIPTION_MOVED, "the gateway stopped following the channel; resume")
            raise
        finally:
            if self.error is None:
                self.error = unavailable(Reason.SUBSCRIPTION_MOVED, "the gateway stopped following the channel; resume")
            self.registry.forget(self)
            self._wake()

    def _trim(self) -> None:
        """Keep the buffer within its bounds, oldest first; a quarter at a time, so that dropping from
        the front of the lists stays cheap."""
        over = (
            len(self._responses) > feed_entries_max
            or self.bytes > feed_bytes_max
            or self.registry.bytes > feed_bytes_total_max
        )
        if not over or len(self._responses) < 2:
            return
        drop = max(1, len(self._responses) // 4)
        dropped = sum(self._sizes[:drop])
        self.bytes -= dropped
        self.registry.bytes -= dropped
        del self._responses[:drop], self._starts[:drop], self._sizes[:drop]
        self.base += drop
        self.first_serial = self._starts[0]

    def _wake(self) -> None:
        self._newer.set()
        self._newer = asyncio.Event()


class FeedRegistry:
    """The feeds of one gateway (rule 4)."""

    def __init__(self, router: OwnerRouter) -> None:
        self.router = router
        self.feeds: dict[str, ChannelFeed] = {}
        self.bytes = 0
        self._sweeper: asyncio.Task[None] | None = None

    def join(self, channel: str, after: int) -> ChannelFeed | None:
        """The channel's feed (started from `after` when there is none); None when at capacity."""
        feed = self.feeds.get(channel)
        if feed is None or feed.error is not None:
            if len(self.feeds) >= feeds_max:
                return None
            feed = self.feeds[channel] = ChannelFeed(self, channel, after)
            if self._sweeper is None:
                self._sweeper = asyncio.create_task(self._sweep_forever(), name="feed-sweeper")
        feed.subscribers += 1
        feed.idle_since = None
        return feed

    def leave(self, feed: ChannelFeed | None) -> None:
        if feed is None:
            return
        feed.subscribers -= 1
        if feed.subscribers == 0:
            feed.idle_since = asyncio.get_running_loop().time()

    def forget(self, feed: ChannelFeed) -> None:
        if self.feeds.get(feed.channel) is feed:
            del self.feeds[feed.channel]
        self.bytes -= feed.bytes

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(feed_idle_s / 4)
            now = loop.time()
            for feed in list(self.feeds.values()):
                if feed.subscribers == 0 and feed.idle_since is not None and now - feed.idle_since > feed_idle_s:
                    feed.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for feed in list(self.feeds.values()):
            feed.close()
        await asyncio.sleep(0)  # let the cancelled feeds finish
