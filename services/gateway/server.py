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
proportional to the channels in use that moved. Routing is services/gateway/router.py; tokens and
capabilities services/gateway/auth.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode

from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common import metrics, tracing
from services.common.errors import (
    ServiceError,
    abort,
    answers_errors,
    invalid,
    passthrough,
    status_of,
)
from services.common.pipe import serve_pipe
from services.common.validation import Limits, check_batch, check_channel, history_limit, printable_id
from services.core.namespaces import Namespaces
from services.gateway.auth import Authenticator, Grant, stamp
from services.gateway.feed import FeedRegistry, covered_through, follow_owner, owner_responses, shaped
from services.gateway.limits import GatewayLimits, Limiter
from services.gateway.presence import PresenceLinks
from services.gateway.router import OwnerLink, OwnerRouter
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc

log = logging.getLogger("ringcast.gateway")

T = TypeVar("T")

request_deadline_s = 10.0
"""Longest a call may take at the gateway when the client set no deadline."""

subscribe_batch_messages_max = 256
"""Messages one subscription response carries at most, whatever batch the subscriber asked for."""

presence_heartbeat_s = 10.0
"""An EnterPresence stream with nothing to say sends an empty response this often (a room's
members cost the gateway one response each per interval; clients notice a dead gateway by their
keepalive pings)."""

publish_stream_inflight_max = 64
"""Requests of one PublishStream being worked on at once (responses still go out in order)."""


def _deadline(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    budget = request_deadline_s if remaining is None else min(remaining, request_deadline_s * 6)
    return asyncio.get_running_loop().time() + budget


class RealtimeServicer(realtime_grpc.RealtimeServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        router: OwnerRouter,
        limits: Limits | None = None,
        auth: Authenticator | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.router = router
        self.limits = limits or Limits()
        self.feeds = FeedRegistry(router)
        self.presence = PresenceLinks(router)
        self.auth = auth
        """None: no token keys, every caller may do everything (an insecure cluster)."""
        self.limiter = limiter or Limiter(GatewayLimits())
        self.namespaces = Namespaces()
        """Every namespace's options, as last read from etcd (services/common/namespaces.py)."""

    def set_namespaces(self, current: Namespaces) -> None:
        self.namespaces = current

    def _authorize(self, context: grpc.aio.ServicerContext, channel: str, operation: str) -> Grant | None:
        """The caller's grant, checked for `operation` on `channel` ("": any operation); raises the refusal."""
        grant = self._grant(context)
        if grant is not None:
            try:
                grant.require(channel, operation)
            except ServiceError as error:
                metrics.gateway_refusals.labels(error.reason).inc()
                raise
        return grant

    def _grant(self, context: grpc.aio.ServicerContext) -> Grant | None:
        """The grant of the call's token (None on a gateway without tokens); raises the refusal, counted."""
        if self.auth is None:
            return None
        try:
            return self.auth.grant(context.invocation_metadata())
        except ServiceError as error:
            metrics.gateway_refusals.labels(error.reason).inc()
            raise

    def _streaming(self, grant: Grant | None, responses: AsyncIterator[T]) -> AsyncIterator[T]:
        return responses if self.auth is None else self.auth.streaming(grant, responses)

    async def _publish(
        self,
        request: realtime_pb2.PublishRequest,
        deadline: float,
        parent: otel_context.Context | None,
        grant: Grant | None,
    ) -> realtime_pb2.PublishResponse:
        """One publish, as one span (a child of the client's, when its metadata carried one)."""
        attributes: dict[str, str | int] = {
            "ringcast.channel": request.channel,
            "ringcast.messages": len(request.messages),
        }
        started = time.perf_counter()
        with tracing.span(
            "RealtimeService/Publish", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            try:
                response = await self._route_publish(request, deadline, grant)
            except ServiceError as error:
                span.set_status(Status(StatusCode.ERROR, error.reason))
                span.set_attribute("ringcast.reason", error.reason)
                metrics.publish_seconds.labels(error.reason).observe(time.perf_counter() - started)
                raise
            span.set_attribute("ringcast.serials", list(response.serials))
            metrics.publish_seconds.labels("ok").observe(time.perf_counter() - started)
            return response

    async def _route_publish(
        self, request: realtime_pb2.PublishRequest, deadline: float, grant: Grant | None
    ) -> realtime_pb2.PublishResponse:
        check_channel(request.channel, self.limits)
        options = self.namespaces.for_channel(request.channel)
        check_batch(request.messages, self.limits, options.message_bytes_max)
        forward = channel_pb2.PublishRequest(channel=request.channel, messages=request.messages)
        if grant is not None:
            grant.require(request.channel, "publish")
            stamp(forward.messages, grant)
        try:
            self.limiter.publish(grant, request.channel, len(request.messages), options.publish_rate)
        except ServiceError as error:
            metrics.gateway_refusals.labels(error.reason).inc()
            raise

        async def attempt(link: OwnerLink, timeout: float) -> realtime_pb2.PublishResponse:
            with tracing.span("ChannelService/Publish", kind=SpanKind.CLIENT):
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
        grant = self._authorize(context, request.channel, "publish")
        metadata = context.invocation_metadata()
        return await self._publish(request, _deadline(context), tracing.extract(metadata), grant)

    async def PublishStream(  # noqa: N802
        self, request_iterator: AsyncIterator[realtime_pb2.PublishStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.PublishStreamResponse]:
        grant = self._grant(context)
        async for response in self._streaming(grant, self._publish_stream(request_iterator, grant)):
            yield response

    async def _publish_stream(
        self, request_iterator: AsyncIterator[realtime_pb2.PublishStreamRequest], grant: Grant | None
    ) -> AsyncIterator[realtime_pb2.PublishStreamResponse]:
        window: asyncio.Queue[asyncio.Task[realtime_pb2.PublishStreamResponse] | None] = asyncio.Queue(
            publish_stream_inflight_max
        )

        async def one(request: realtime_pb2.PublishStreamRequest) -> realtime_pb2.PublishStreamResponse:
            publish = realtime_pb2.PublishRequest(channel=request.channel, messages=request.messages)
            try:
                done = await self._publish(publish, asyncio.get_running_loop().time() + request_deadline_s, None, grant)
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
        grant = self._grant(context)

        async def handle(item: realtime_pb2.PipedPublish) -> realtime_pb2.PublishResponse:
            loop = asyncio.get_running_loop()
            budget = min(item.timeout_ms / 1000, request_deadline_s * 6) if item.timeout_ms else request_deadline_s
            parent = tracing.extract(item.trace_context.items())
            return await self._publish(item.publish, loop.time() + budget, parent, grant)

        responses = serve_pipe(
            context, request_iterator, handle, realtime_pb2.PublishPipeResponse, realtime_pb2.PipedPublishResult
        )
        async for response in self._streaming(grant, responses):
            yield response

    async def Subscribe(  # noqa: N802
        self, request: realtime_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.SubscribeResponse]:
        try:
            check_channel(request.channel, self.limits)
            grant = self._authorize(context, request.channel, "subscribe")
            after = await self._start_serial(request)
        except ServiceError as error:
            await abort(context, error)
            return
        # Headers now, before any message: they tell the client the subscription is in place (and
        # that this gateway answers) even on a quiet channel.
        await context.send_initial_metadata(())
        batch_max = min(request.batch_max, subscribe_batch_messages_max)
        try:
            with self.limiter.subscription(grant):
                async for response in self._streaming(grant, self._follow(request.channel, after, batch_max)):
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
        self._authorize(context, request.channel, "history")
        if not self.namespaces.for_channel(request.channel).history:
            namespace = self.namespaces.label(request.channel)  # whose options said so
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.HISTORY_DISABLED,
                f"history is off in namespace {namespace!r}",
                {"namespace": namespace},
            )
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
        self._authorize(context, request.channel, "")

        async def attempt(link: OwnerLink, timeout: float) -> realtime_pb2.GetChannelResponse:
            forward = channel_pb2.GetChannelRequest(channel=request.channel)
            owner: channel_pb2.GetChannelResponse = await link.stub.GetChannel(forward, timeout=timeout)
            return realtime_pb2.GetChannelResponse(
                name=owner.name,
                owner=owner.owner,
                epoch=owner.epoch,
                last_serial=owner.last_serial,
                ring_version=owner.ring_version,
                occupancy=realtime_pb2.Occupancy(members=owner.members),
            )

        return await self.router.call(request.channel, _deadline(context), attempt)

    # ------------------------------------------------------------------------------ presence

    def _presence(self, context: grpc.aio.ServicerContext, request: Any) -> tuple[Grant | None, str]:
        """Checks every presence call shares; the caller's grant and the member's client id."""
        check_channel(request.channel, self.limits)
        grant = self._authorize(context, request.channel, "presence")
        if not self.namespaces.for_channel(request.channel).presence:
            namespace = self.namespaces.label(request.channel)
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.PRESENCE_DISABLED,
                f"presence is off in namespace {namespace!r}",
                {"namespace": namespace},
            )
        if not isinstance(request, realtime_pb2.GetPresenceRequest | realtime_pb2.SubscribePresenceRequest):
            check_presence_id("connection_id", request.connection_id, Reason.CONNECTION_ID_INVALID)
        return grant, self._client_id(grant, getattr(request, "client_id", ""))

    @staticmethod
    def _client_id(grant: Grant | None, given: str) -> str:
        if grant is None:
            if given:
                check_presence_id("client_id", given, Reason.CLIENT_ID_INVALID)
            return given
        if given and given != grant.sub:
            raise ServiceError(
                grpc.StatusCode.PERMISSION_DENIED,
                Reason.CLIENT_ID_MISMATCH,
                f"client_id {given[:128]!r} is not the token's sub {grant.sub!r}; leave it empty",
            )
        return grant.sub

    def _presence_data(self, channel: str, data: bytes) -> None:
        limit = self.namespaces.for_channel(channel).presence_data_bytes_max
        if len(data) > limit:
            raise invalid(
                Reason.PRESENCE_DATA_TOO_LARGE,
                f"presence data of {len(data)} bytes; at most {limit} in this namespace",
                limit=str(limit),
            )

    async def EnterPresence(  # noqa: N802
        self, request: realtime_pb2.EnterPresenceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.EnterPresenceResponse]:
        try:
            grant, client_id = self._presence(context, request)
            if not client_id:
                raise invalid(Reason.CLIENT_ID_INVALID, "a cluster without tokens needs a client_id to enter as")
            self._presence_data(request.channel, request.data)
        except ServiceError as error:
            await abort(context, error)
            return
        # Headers now: the stream is in place at this gateway (the client's sign that it answers),
        # however long the owner takes to answer the enter.
        await context.send_initial_metadata(())
        key = (client_id, request.connection_id)

        async def held() -> AsyncIterator[realtime_pb2.EnterPresenceResponse]:
            holding = self.presence.hold(request.channel, key, bytes(request.data), presence_heartbeat_s)
            async with contextlib.aclosing(holding):
                async for serial in holding:
                    yield realtime_pb2.EnterPresenceResponse(serial=serial)

        try:
            with self.limiter.subscription(grant):
                async for response in self._streaming(grant, held()):
                    yield response
        except ServiceError as error:
            await abort(context, error)

    async def _change_presence(self, request: Any, context: grpc.aio.ServicerContext, *, leave: bool) -> int:
        _, client_id = self._presence(context, request)
        if not client_id:
            raise invalid(
                Reason.CLIENT_ID_INVALID, "a cluster without tokens needs the client_id the member entered as"
            )
        data = b"" if leave else bytes(request.data)
        self._presence_data(request.channel, data)
        forward = channel_pb2.ChangePresenceRequest(
            channel=request.channel, client_id=client_id, connection_id=request.connection_id, data=data, leave=leave
        )

        async def attempt(link: OwnerLink, timeout: float) -> int:
            answer = await link.stub.ChangePresence(forward, timeout=timeout)
            return int(answer.serial)

        return await self.router.call(request.channel, _deadline(context), attempt)

    @answers_errors
    async def UpdatePresence(  # noqa: N802
        self, request: realtime_pb2.UpdatePresenceRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.UpdatePresenceResponse:
        return realtime_pb2.UpdatePresenceResponse(serial=await self._change_presence(request, context, leave=False))

    @answers_errors
    async def LeavePresence(  # noqa: N802
        self, request: realtime_pb2.LeavePresenceRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.LeavePresenceResponse:
        return realtime_pb2.LeavePresenceResponse(serial=await self._change_presence(request, context, leave=True))

    @answers_errors
    async def GetPresence(  # noqa: N802
        self, request: realtime_pb2.GetPresenceRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.GetPresenceResponse:
        self._presence(context, request)

        async def attempt(link: OwnerLink, timeout: float) -> realtime_pb2.GetPresenceResponse:
            forward = channel_pb2.GetPresenceRequest(channel=request.channel)
            answer = await link.stub.GetPresence(forward, timeout=timeout)
            return realtime_pb2.GetPresenceResponse(members=answer.members, serial=answer.serial)

        return await self.router.call(request.channel, _deadline(context), attempt)

    async def SubscribePresence(  # noqa: N802
        self, request: realtime_pb2.SubscribePresenceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.SubscribePresenceResponse]:
        try:
            grant, _ = self._presence(context, request)
        except ServiceError as error:
            await abort(context, error)
            return
        await context.send_initial_metadata(())
        try:
            with self.limiter.subscription(grant):
                changes = follow_presence(self.router, request)
                async for response in self._streaming(grant, changes):
                    yield response
        except ServiceError as error:
            await abort(context, error)


async def follow_presence(
    router: OwnerRouter, request: realtime_pb2.SubscribePresenceRequest
) -> AsyncIterator[realtime_pb2.SubscribePresenceResponse]:
    """A presence subscription, from whoever owns the channel, across any failure: the whole set
    (its parts gathered here, so a failure half-way never shows a client half a set), then each
    change after it, in order, once."""
    synced = request.WhichOneof("start") == "after_serial"
    after = int(request.after_serial)
    parts: list[realtime_pb2.SubscribePresenceResponse] = []

    def open_call(stub: channel_grpc.ChannelServiceStub) -> grpc.aio.UnaryStreamCall:
        parts.clear()
        forward = channel_pb2.SubscribePresenceRequest(channel=request.channel, sync=not synced, after_serial=after)
        return stub.SubscribePresence(forward)

    responses = owner_responses(router, request.channel, open_call)
    async with contextlib.aclosing(responses):
        async for response in responses:
            if response.HasField("sync"):
                if synced:
                    continue
                parts.append(realtime_pb2.SubscribePresenceResponse(sync=response.sync))
                if response.sync.complete:
                    for part in parts:
                        yield part
                    synced, after = True, int(response.sync.serial)
                continue
            if not response.changes:
                yield realtime_pb2.SubscribePresenceResponse()  # a heartbeat
                continue
            for change in response.changes:
                if change.member.serial <= after:
                    continue  # already passed on (an owner stream started again)
                after = int(change.member.serial)
                yield realtime_pb2.SubscribePresenceResponse(change=change)


presence_id_chars_max = 128


def check_presence_id(field: str, value: str, reason: str) -> None:
    if not value or len(value) > presence_id_chars_max or not printable_id(value):
        raise invalid(reason, f"{field} must be 1-{presence_id_chars_max} printable chars")
