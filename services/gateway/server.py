"""The gateway: the public `RealtimeService`, routing every call to the channel's owner.

A gateway holds no durable state. It keeps the newest ring (WatchRing from placement), computes a
channel's owner locally, and calls it. When the owner answers NOT_OWNER, or the channel moved, or the
owner cannot be reached, the gateway refreshes its ring and tries again — within the caller's
deadline, with jittered, bounded backoff. Retrying a publish is safe because message ids make it
idempotent. Subscriptions share one stream from the owner per channel (services/gateway/feed.py):
it resumes after the last serial it got, at whoever owns the channel then, as soon as the owner
fails, goes silent or is no longer named by the ring; so clients see no gap and no duplicate across
owner changes, and an owner sends each message once per gateway, not once per subscriber.

A gateway also remembers the channels it routed lately (bounded, least recently used forgotten
first). When a new ring moves some of them to another node, it asks that node to take them over at
once (Prepare), so a relocation does not wait for each channel's next request; the work is
proportional to the channels in use that moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode

from ringcast.pipe import PipeClient
from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common import metrics, tracing
from services.common.errors import (
    ServiceError,
    abort,
    answers_errors,
    passthrough,
    reason_of,
    refused,
    status_of,
    unavailable,
)
from services.common.pipe import serve_pipe
from services.common.ring_watch import RingView, RingWatcher
from services.common.server import CHANNEL_OPTIONS
from services.common.validation import Limits, check_batch, check_channel, history_limit
from services.gateway.feed import FeedRegistry, covered_through, follow_owner, shaped
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc
from services.internal.v1 import placement_service_pb2 as placement_pb2

log = logging.getLogger("ringcast.gateway")

T = TypeVar("T")

request_deadline_s = 10.0
"""Longest a call may take at the gateway when the client set no deadline."""

owner_call_timeout_s = 5.0
"""Deadline of one call to an owner (a retry gets a fresh one, within the request's)."""

subscribe_batch_messages_max = 256
"""Messages one subscription response carries at most, whatever batch the subscriber asked for."""

retry_backoff_s_min = 0.02
retry_backoff_s_max = 0.5
publish_stream_inflight_max = 64
"""Requests of one PublishStream being worked on at once (responses still go out in order)."""

recent_channels_max = 100_000
"""Channels a gateway remembers as in use, for Prepare after a ring change."""

recent_channel_s = 300.0
"""A channel not routed for this long is no longer in use (the nodes step down from it too)."""

prepare_call_channels_max = 1_000
"""Channels one Prepare call to a node names."""

prepare_timeout_s = 5.0

report_interval_s = 0.5
"""How often a gateway may report one owner address as refusing connections."""

reported_addresses_max = 1_024
"""Owner addresses whose last report a gateway remembers."""


def outcome_name(outcome: int) -> str:
    return str(placement_pb2.UnreachableOutcome.Name(outcome)).removeprefix("UNREACHABLE_OUTCOME_")


RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION}

FAIL_FAST_REASONS = {Reason.QUORUM_UNAVAILABLE, Reason.CURSOR_BEYOND_END}
"""Not worth retrying here: the owner knows no quorum is reachable (retryable for the client), or the
cursor is beyond the channel's end (not retryable at all)."""


class NoOwner(LookupError):
    pass


class ChannelMovedAway(Exception):
    """The ring gave the channel to another node while a call to its old owner was in flight."""


class RecentChannels:
    """Channels routed lately, least recently used first, bounded in count and in age."""

    def __init__(self, entries_max: int = recent_channels_max, horizon_s: float = recent_channel_s) -> None:
        self.entries_max = entries_max
        self.horizon_s = horizon_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def touch(self, channel: str, now: float) -> None:
        self._seen[channel] = now
        self._seen.move_to_end(channel)
        if len(self._seen) > self.entries_max:
            self._seen.popitem(last=False)

    def in_use(self, now: float) -> list[str]:
        while self._seen and now - next(iter(self._seen.values())) > self.horizon_s:
            self._seen.popitem(last=False)
        return list(self._seen)


class OwnerLink:
    """One owner address: its gRPC channel and stub, and the PublishPipe stream that carries the
    publishes for all of its channels (`ringcast.pipe`: few messages under load, none waits for
    another)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = channel_grpc.ChannelServiceStub(self.channel)
        self.pipe: PipeClient[channel_pb2.PublishRequest, channel_pb2.PublishResponse] = PipeClient(
            self.stub.PublishPipe,
            channel_pb2.PublishPipeRequest,
            channel_pb2.PipedPublish,
            name=address,
        )

    async def close(self) -> None:
        await self.pipe.close()
        await self.channel.close()


class OwnerRouter:
    """Channel → owner address under the newest ring, and one gRPC channel per owner address."""

    def __init__(self, watcher: RingWatcher) -> None:
        self.watcher = watcher
        self._links: dict[str, OwnerLink] = {}
        self.recent = RecentChannels()
        # The ring whose moves were last prepared in full: a prepare cut short by a newer ring is
        # covered by the next one, which compares against this ring rather than the one before it.
        self._prepared_view: RingView | None = None
        self._newest_version = 0
        self._preparing: asyncio.Task[None] | None = None
        self._reported: dict[str, float] = {}
        self._reports: set[asyncio.Task[None]] = set()
        watcher.subscribe(self._on_ring)

    def _on_ring(self, view: RingView) -> None:
        if view.ring.version <= self._newest_version:
            return
        self._newest_version = view.ring.version
        metrics.ring_version.set(view.ring.version)
        if self._prepared_view is None:
            self._prepared_view = view
            return
        if self._preparing is not None:
            self._preparing.cancel()  # a newer ring supersedes it
        self._preparing = asyncio.create_task(self._prepare_moved(self._prepared_view, view), name="prepare-moved")

    async def _prepare_moved(self, previous: RingView, view: RingView) -> None:
        """Ask each new owner to take over the channels in use that `view` moved to it."""
        loop = asyncio.get_running_loop()
        moved: dict[str, list[str]] = {}
        for index, channel in enumerate(self.recent.in_use(loop.time())):
            if index % 1_000 == 999:
                await asyncio.sleep(0)  # a large table must not stall the calls in flight
            owner = view.ring.owner(channel)
            if owner is not None and owner in view.members and owner != previous.ring.owner(channel):
                moved.setdefault(owner, []).append(channel)
        for owner, channels in moved.items():
            stub = self.stub(view.members[owner])
            queued = 0
            try:
                for start in range(0, len(channels), prepare_call_channels_max):
                    request = channel_pb2.PrepareRequest(channels=channels[start : start + prepare_call_channels_max])
                    queued += (await stub.Prepare(request, timeout=prepare_timeout_s)).queued
            except grpc.RpcError as error:  # the first request of each channel takes it over instead
                log.info("prepare at %s failed: %s", owner, reason_of(error))
            log.info(
                "ring %d moved %d channels in use to %s; it queued %d takeovers",
                view.ring.version,
                len(channels),
                owner,
                queued,
            )
        self._prepared_view = view

    def owner(self, channel: str) -> tuple[str, str]:
        view = self.watcher.ring
        if view is None:
            raise NoOwner(Reason.RING_UNKNOWN)
        owner = view.ring.owner(channel)
        if owner is None or owner not in view.members:
            raise NoOwner(Reason.NO_CHANNEL_NODES)
        return owner, view.members[owner]

    def report_refused(self, owner: str, address: str) -> None:
        """Nothing listens at `owner`'s address any more: have placement check and, if it agrees,
        move the owner's channels now instead of when its lease expires (one report per address
        per `report_interval_s` at most; placement answers concurrent ones with one check)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._reported.get(address, float("-inf")) < report_interval_s:
            return
        self._reported[address] = loop.time()
        if len(self._reported) > reported_addresses_max:
            self._reported.pop(next(iter(self._reported)))

        async def report() -> None:
            try:
                outcome = await self.watcher.report_unreachable(owner, address)
            except grpc.RpcError as error:
                log.info("reporting %s as unreachable failed: %s", owner, reason_of(error))
                return
            log.info("reported %s at %s as refusing connections: %s", owner, address, outcome_name(outcome))

        task = asyncio.create_task(report(), name=f"report-{owner}")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def link(self, address: str) -> OwnerLink:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = OwnerLink(address)
        return link

    def stub(self, address: str) -> channel_grpc.ChannelServiceStub:
        return self.link(address).stub

    async def close(self) -> None:
        if self._preparing is not None:
            self._preparing.cancel()
        for link in self._links.values():
            await link.close()

    def watch_move(self, channel: str, owner: str) -> tuple[asyncio.Event, Callable[[], None]]:
        """An event set once a ring names another owner than `owner` for `channel`, and the function
        that stops watching."""
        moved = asyncio.Event()

        def on_ring(view: RingView) -> None:
            if view.ring.owner(channel) != owner:
                moved.set()

        return moved, self.watcher.subscribe(on_ring)

    async def _unless_moved(self, channel: str, owner: str, call: Awaitable[T]) -> T:
        """Await `call`, but give up on it as soon as the ring names another owner for `channel`.

        An owner that is alive but stuck (paused, starved) would otherwise hold the caller until
        the call's own timeout, long after its channels were re-placed. Abandoning the call is safe:
        the retry carries the same message ids.
        """
        moved, unsubscribe = self.watch_move(channel, owner)
        work = asyncio.ensure_future(call)
        watch = asyncio.ensure_future(moved.wait())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when our caller is cancelled: never leave the call running behind us
            unsubscribe()
            watch.cancel()
            abandoned = not work.done()
            if abandoned:
                work.cancel()
        if abandoned:
            raise ChannelMovedAway(channel)
        return work.result()

    async def call(
        self,
        channel: str,
        deadline: float,
        attempt: Callable[[OwnerLink, float], Awaitable[T]],
    ) -> T:
        """Run `attempt` against the owner until it succeeds, fails for good, or `deadline` passes."""
        loop = asyncio.get_running_loop()
        self.recent.touch(channel, loop.time())
        backoff = retry_backoff_s_min
        last_reason = "UNAVAILABLE"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise unavailable(last_reason, f"no owner answered in time for channel {channel!r}: {last_reason}")
            try:
                owner, address = self.owner(channel)
                call = attempt(self.link(address), min(remaining, owner_call_timeout_s))
                return await self._unless_moved(channel, owner, call)
            except NoOwner as error:
                last_reason = str(error)
            except ChannelMovedAway:
                last_reason = Reason.CHANNEL_MOVED
            except grpc.RpcError as error:
                code = error.code()
                last_reason = reason_of(error)
                if code not in RETRYABLE or last_reason in FAIL_FAST_REASONS:
                    raise
                if refused(error):
                    self.report_refused(owner, address)
            except grpc.aio.UsageError:  # the link to the owner was closed under us: dial again
                last_reason = "OWNER_LINK_CLOSED"
                self._links.pop(address, None)
            await self.watcher.refresh()
            await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())) * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, retry_backoff_s_max)


def _deadline(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    budget = request_deadline_s if remaining is None else min(remaining, request_deadline_s * 6)
    return asyncio.get_running_loop().time() + budget


class RealtimeServicer(realtime_grpc.RealtimeServiceServicer):  # type: ignore[misc]
    def __init__(self, router: OwnerRouter, limits: Limits | None = None) -> None:
        self.router = router
        self.limits = limits or Limits()
        self.feeds = FeedRegistry(router)

    async def _publish(
        self, request: realtime_pb2.PublishRequest, deadline: float, parent: otel_context.Context | None = None
    ) -> realtime_pb2.PublishResponse:
        """One publish, as one span (a child of the client's, when its metadata carried one)."""
        attributes: dict[str, str | int] = {
            "ringcast.channel": request.channel,
            "ringcast.messages": len(request.messages),
        }
        started = time.perf_counter()
        with tracing.tracer.start_as_current_span(
            "RealtimeService/Publish", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            try:
                response = await self._route_publish(request, deadline)
            except ServiceError as error:
                span.set_status(Status(StatusCode.ERROR, error.reason))
                span.set_attribute("ringcast.reason", error.reason)
                metrics.publish_seconds.labels(error.reason).observe(time.perf_counter() - started)
                raise
            span.set_attribute("ringcast.serials", list(response.serials))
            metrics.publish_seconds.labels("ok").observe(time.perf_counter() - started)
            return response

    async def _route_publish(
        self, request: realtime_pb2.PublishRequest, deadline: float
    ) -> realtime_pb2.PublishResponse:
        check_channel(request.channel, self.limits)
        check_batch(request.messages, self.limits)
        forward = channel_pb2.PublishRequest(channel=request.channel, messages=request.messages)

        async def attempt(link: OwnerLink, timeout: float) -> realtime_pb2.PublishResponse:
            with tracing.tracer.start_as_current_span("ChannelService/Publish", kind=SpanKind.CLIENT):
                response = await link.pipe.publish(forward, timeout, dict(tracing.inject()))
            return realtime_pb2.PublishResponse(
                channel=request.channel, serials=response.serials, duplicates=response.duplicates
            )

        try:
            return await self.router.call(request.channel, deadline, attempt)
        except grpc.RpcError as error:
            raise passthrough(error) from error

    @answers_errors
    async def Publish(  # noqa: N802 - gRPC method names
        self, request: realtime_pb2.PublishRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.PublishResponse:
        return await self._publish(request, _deadline(context), tracing.extract(context.invocation_metadata()))

    async def PublishStream(  # noqa: N802
        self, request_iterator: AsyncIterator[realtime_pb2.PublishStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.PublishStreamResponse]:
        window: asyncio.Queue[asyncio.Task[realtime_pb2.PublishStreamResponse] | None] = asyncio.Queue(
            publish_stream_inflight_max
        )

        async def one(request: realtime_pb2.PublishStreamRequest) -> realtime_pb2.PublishStreamResponse:
            publish = realtime_pb2.PublishRequest(channel=request.channel, messages=request.messages)
            try:
                done = await self._publish(publish, asyncio.get_running_loop().time() + request_deadline_s)
            except ServiceError as error:
                return realtime_pb2.PublishStreamResponse(channel=request.channel, error=status_of(error))
            return realtime_pb2.PublishStreamResponse(
                channel=done.channel, serials=done.serials, duplicates=done.duplicates
            )

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await window.put(asyncio.create_task(one(request)))
            finally:
                await window.put(None)

        reader = asyncio.create_task(read_requests())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # done: a request that could not be read (undecodable) ends the stream with its error
        finally:
            reader.cancel()

    async def PublishPipe(  # noqa: N802
        self, request_iterator: AsyncIterator[realtime_pb2.PublishPipeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.PublishPipeResponse]:
        async def handle(item: realtime_pb2.PipedPublish) -> realtime_pb2.PublishResponse:
            loop = asyncio.get_running_loop()
            budget = min(item.timeout_ms / 1000, request_deadline_s * 6) if item.timeout_ms else request_deadline_s
            return await self._publish(item.publish, loop.time() + budget, tracing.extract(item.trace_context.items()))

        async for response in serve_pipe(
            context, request_iterator, handle, realtime_pb2.PublishPipeResponse, realtime_pb2.PipedPublishResult
        ):
            yield response

    async def Subscribe(  # noqa: N802
        self, request: realtime_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.SubscribeResponse]:
        try:
            check_channel(request.channel, self.limits)
            after = await self._start_serial(request)
        except ServiceError as error:
            await abort(context, error)
            return
        # Headers now, before any message: they tell the client the subscription is in place (and
        # that this gateway answers) even on a quiet channel.
        await context.send_initial_metadata(())
        batch_max = min(request.batch_max, subscribe_batch_messages_max)
        try:
            async for response in self._follow(request.channel, after, batch_max):
                yield response
        except ServiceError as error:
            await abort(context, error)

    async def _follow(self, channel: str, after: int, batch_max: int) -> AsyncIterator[realtime_pb2.SubscribeResponse]:
        """Every response a subscriber after serial `after` is owed, in order: from the channel's
        shared feed while it covers the next serial, else from the owner on a stream of its own
        until it does (feed.py, rule 3). Raises ServiceError when the subscription cannot go on."""
        next_serial = after + 1
        feed = self.feeds.join(channel, after)
        try:
            while True:
                if feed is not None and feed.covers(next_serial):
                    index = feed.index_of(next_serial)
                    while True:
                        if index >= feed.end:
                            await feed.wait_beyond(index)
                        if feed.error is not None and index >= feed.end:
                            raise feed.error
                        response = feed.response(index)
                        if response is None:
                            break  # too slow: the buffer moved past us; catch up on our own
                        index += 1
                        through = covered_through(response)
                        if through >= next_serial:
                            for part in shaped(response, next_serial, batch_max):
                                yield part
                            next_serial = through + 1
                    continue
                async with contextlib.aclosing(follow_owner(self.router, channel, next_serial - 1)) as alone:
                    async for batch in alone:
                        for response in batch:
                            for part in shaped(response, next_serial, batch_max):
                                yield part
                            next_serial = covered_through(response) + 1
                        if feed is None or feed.error is not None:  # at capacity, or it failed: again
                            self.feeds.leave(feed)
                            feed = self.feeds.join(channel, next_serial - 1)
                        if feed is not None and feed.covers(next_serial):
                            break
        finally:
            self.feeds.leave(feed)

    async def _last_serial(self, channel: str, deadline: float) -> int:
        async def attempt(link: OwnerLink, timeout: float) -> int:
            request = channel_pb2.GetChannelRequest(channel=channel)
            state = await link.stub.GetChannel(request, timeout=timeout)
            return int(state.last_serial)

        return await self.router.call(channel, deadline, attempt)

    async def _start_serial(self, request: realtime_pb2.SubscribeRequest) -> int:
        start = request.WhichOneof("start")
        if start == "after_serial":
            return int(request.after_serial)
        deadline = asyncio.get_running_loop().time() + request_deadline_s
        last = await self._last_serial(request.channel, deadline)
        if start == "rewind":
            return max(0, last - request.rewind)
        return last

    @answers_errors
    async def History(  # noqa: N802
        self, request: realtime_pb2.HistoryRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.HistoryResponse:
        check_channel(request.channel, self.limits)
        limit = history_limit(request.limit, self.limits)
        deadline = _deadline(context)
        if not request.reverse:
            messages, gap = await self._history(request.channel, request.after_serial, limit, deadline)
            return realtime_pb2.HistoryResponse(messages=messages, gap=gap)
        # Newest first, below `after_serial`: from the end when it is 0 or beyond the end (a client
        # that says "very large" for "from the end" gets the newest messages, not an empty page).
        end = await self._last_serial(request.channel, deadline) + 1
        below = min(request.after_serial, end) if request.after_serial else end
        first_after = max(0, below - 1 - limit)
        messages, gap = await self._history(request.channel, first_after, below - 1 - first_after, deadline)
        return realtime_pb2.HistoryResponse(messages=list(reversed(messages)), gap=gap)

    async def _history(
        self, channel: str, after: int, limit: int, deadline: float
    ) -> tuple[list[message_pb2.Message], message_pb2.ContinuityLost | None]:
        """Up to `limit` committed messages after `after`, in pages as the owner serves them, and the
        gap at their start when retention dropped the first ones asked for. A gap met on a later
        page ends the answer there: the next page asked for begins with it."""
        messages: list[message_pb2.Message] = []
        gap: message_pb2.ContinuityLost | None = None
        while len(messages) < limit:
            request = channel_pb2.HistoryRequest(channel=channel, after_serial=after, limit=limit - len(messages))

            async def attempt(
                link: OwnerLink,
                timeout: float,
                request: channel_pb2.HistoryRequest = request,
            ) -> channel_pb2.HistoryResponse:
                response: channel_pb2.HistoryResponse = await link.stub.History(request, timeout=timeout)
                return response

            page = await self.router.call(channel, deadline, attempt)
            if page.HasField("gap") and page.gap.next_serial > after + 1:
                if messages:
                    break
                gap = page.gap
            if not page.messages:
                break
            messages.extend(page.messages)
            after = page.messages[-1].serial
        return messages, gap

    @answers_errors
    async def GetChannel(  # noqa: N802
        self, request: realtime_pb2.GetChannelRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.GetChannelResponse:
        check_channel(request.channel, self.limits)

        async def attempt(link: OwnerLink, timeout: float) -> realtime_pb2.GetChannelResponse:
            forward = channel_pb2.GetChannelRequest(channel=request.channel)
            owner: channel_pb2.GetChannelResponse = await link.stub.GetChannel(forward, timeout=timeout)
            return realtime_pb2.GetChannelResponse(
                name=owner.name,
                owner=owner.owner,
                epoch=owner.epoch,
                last_serial=owner.last_serial,
                ring_version=owner.ring_version,
            )

        return await self.router.call(request.channel, _deadline(context), attempt)
