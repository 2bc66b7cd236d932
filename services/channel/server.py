"""`ChannelService`: the gRPC face of a channel node (publish, subscribe, history, prepare), on
top of `ChannelNodeAdapter` (node_adapter.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from ringcast.reasons import Reason
from ringcast.v1 import message_pb2, presence_pb2
from services.channel.node_adapter import ChannelNodeAdapter
from services.channel.presence import PresenceKeeper, heartbeat_s
from services.common import convert, metrics, tracing
from services.common.clock import monotonic_ms
from services.common.errors import ServiceError, abort, answers_errors, invalid
from services.common.pipe import serve_pipe
from services.common.validation import Limits, check_channel
from services.core.presence import VISIBLE, MemberKey, PresenceError, decode, presence_log
from services.core.role import (
    HistoryResult,
)
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc

log = logging.getLogger("ringcast.channel")

request_timeout_s = 30.0
"""Longest a gateway's request may wait at this node, whatever deadline it set."""


prepare_channels_max = 1_000
"""Channels one Prepare call may name."""


LIMITS = Limits()


def error_for(reason: str, ring_version: int, last_serial: int = 0) -> ServiceError:
    """The status a failed request is answered with (`last_serial`: the channel's, where known)."""
    if reason == Reason.CURSOR_BEYOND_END:
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reason,
            f"the cursor is beyond the channel's last serial ({last_serial}): start at most there",
            {"last_serial": str(last_serial)},
        )
    if reason == Reason.NOT_OWNER:
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reason,
            "this node does not own the channel under its ring; refresh the ring and retry",
            {"ring_version": str(ring_version)},
        )
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason or "UNAVAILABLE", f"channel unavailable: {reason}")


def _gap(next_serial: int, reader: str) -> message_pb2.ContinuityLost | None:
    """The explicit gap a reader (`subscription` or `history`) gets when what it asked for is no
    longer retained."""
    if not next_serial:
        return None
    metrics.continuity_lost.labels(reader=reader).inc()
    return message_pb2.ContinuityLost(next_serial=next_serial, reason=Reason.RETENTION_EXPIRED)


def _deadline(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return min(request_timeout_s, remaining) if remaining is not None else request_timeout_s


sync_members_per_response_max = 1_000
"""Members one part of a presence sync carries."""

hold_results_per_response_max = 256
"""Enter results one HoldPresence response carries."""


class _Hold:
    """One HoldPresence stream: the members it holds, and what it has to tell its gateway."""

    def __init__(self) -> None:
        self.held: set[MemberKey] = set()
        self.results: list[channel_pb2.HeldResult] = []
        self.gone: list[MemberKey] = []
        self.wake = asyncio.Event()

    def left(self, key: MemberKey) -> None:
        self.held.discard(key)
        self.gone.append(key)
        self.wake.set()


def presence_disabled(channel: str, namespace: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.PRESENCE_DISABLED,
        f"presence is off in namespace {namespace!r}",
        {"namespace": namespace},
    )


class ChannelServicer(channel_grpc.ChannelServiceServicer):  # type: ignore[misc]
    def __init__(self, node: ChannelNodeAdapter, presence: PresenceKeeper | None = None) -> None:
        self.node = node
        self.presence = presence or PresenceKeeper(node)

    async def _publish(
        self, request: channel_pb2.PublishRequest, parent: otel_context.Context | None, timeout_s: float
    ) -> channel_pb2.PublishResponse:
        """One channel's publish, as one span; a failure is a ServiceError with the reason."""
        messages = tuple(convert.message_from_proto(message) for message in request.messages)
        with tracing.span(
            "ChannelService/Publish",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"ringcast.channel": request.channel, "ringcast.node": self.node.node_id},
        ) as span:
            try:
                result = await self.node.publish(request.channel, messages, timeout_s)
            except TimeoutError:
                span.set_attribute("ringcast.reason", Reason.COMMIT_TIMEOUT)
                raise error_for(Reason.COMMIT_TIMEOUT, self.node.ring_version) from None
            epoch, _ = self.node.channel_state(request.channel)
            span.set_attributes({"ringcast.epoch": epoch, "ringcast.serials": list(result.serials)})
            if not result.ok:
                span.set_status(trace.Status(trace.StatusCode.ERROR, result.reason))
                span.set_attribute("ringcast.reason", result.reason)
                raise error_for(result.reason, self.node.ring_version)
            span.set_attribute("ringcast.quorum", "acked")
        return channel_pb2.PublishResponse(serials=result.serials, duplicates=result.duplicates)

    @answers_errors
    async def Publish(  # noqa: N802 - gRPC method names
        self, request: channel_pb2.PublishRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.PublishResponse:
        return await self._publish(request, tracing.extract(context.invocation_metadata()), _deadline(context))

    async def PublishPipe(  # noqa: N802
        self,
        request_iterator: AsyncIterator[channel_pb2.PublishPipeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[channel_pb2.PublishPipeResponse]:
        async def handle(item: channel_pb2.PipedPublish) -> channel_pb2.PublishResponse:
            timeout_s = min(request_timeout_s, item.timeout_ms / 1000) if item.timeout_ms else request_timeout_s
            return await self._publish(item.publish, tracing.extract(item.trace_context.items()), timeout_s)

        async for response in serve_pipe(
            context,
            request_iterator,
            handle,
            channel_pb2.PublishPipeResponse,
            channel_pb2.PipedPublishResult,
        ):
            yield response

    async def Subscribe(  # noqa: N802
        self, request: channel_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[channel_pb2.SubscribeResponse]:
        async for delivery in self.node.subscribe(request.channel, request.after_serial):
            if delivery.end_reason:
                last = self.node.channel_state(request.channel)[1]
                await abort(context, error_for(delivery.end_reason, self.node.ring_version, last))
                return
            if not delivery.entries and not delivery.gap_next_serial:
                yield channel_pb2.SubscribeResponse()  # a heartbeat
                continue
            span = None
            if tracing.enabled():
                serials = [entry.serial for entry in delivery.entries]
                span = tracing.tracer.start_span(
                    "ChannelService/deliver",
                    links=self.node.traces.links(request.channel, serials),
                    attributes={"ringcast.channel": request.channel, "ringcast.serials": serials},
                )
            yield channel_pb2.SubscribeResponse(
                messages=[convert.message_to_proto(e.message, e.serial) for e in delivery.entries],
                gap=_gap(delivery.gap_next_serial, "subscription"),
            )
            if span is not None:
                span.end()

    async def _history(self, channel: str, after: int, limit: int, context: grpc.aio.ServicerContext) -> HistoryResult:
        """A page of committed entries (taking the channel over if need be); ServiceError if none."""
        try:
            result = await self.node.history(channel, after, limit, _deadline(context))
        except TimeoutError:
            raise error_for(Reason.COMMIT_TIMEOUT, self.node.ring_version) from None
        if result.reason:
            raise error_for(result.reason, self.node.ring_version, self.node.channel_state(channel)[1])
        return result

    @answers_errors
    async def History(  # noqa: N802
        self, request: channel_pb2.HistoryRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.HistoryResponse:
        result = await self._history(request.channel, request.after_serial, request.limit, context)
        _, last = self.node.channel_state(request.channel)
        return channel_pb2.HistoryResponse(
            messages=[convert.message_to_proto(e.message, e.serial) for e in result.entries],
            last_serial=last,
            gap=_gap(result.gap_next_serial, "history"),
        )

    @answers_errors
    async def GetChannel(  # noqa: N802
        self, request: channel_pb2.GetChannelRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.GetChannelResponse:
        await self._history(request.channel, 0, 0, context)  # takes the channel over
        epoch, last = self.node.channel_state(request.channel)
        return channel_pb2.GetChannelResponse(
            name=request.channel,
            owner=self.node.node_id,
            epoch=epoch,
            last_serial=last,
            ring_version=self.node.ring_version,
            members=self.presence.members(request.channel),
        )

    @answers_errors
    async def Prepare(  # noqa: N802
        self, request: channel_pb2.PrepareRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.PrepareResponse:
        if len(request.channels) > prepare_channels_max:
            raise invalid(
                Reason.TOO_MANY_CHANNELS,
                f"{len(request.channels)} channels in one call; at most {prepare_channels_max}",
                limit=str(prepare_channels_max),
            )
        for channel in request.channels:
            check_channel(channel, LIMITS)
        return channel_pb2.PrepareResponse(queued=self.node.prepare(list(request.channels)))

    async def GetNode(  # noqa: N802
        self, request: channel_pb2.GetNodeRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.GetNodeResponse:
        status = self.node.core.status(monotonic_ms())
        return channel_pb2.GetNodeResponse(
            node_id=self.node.node_id,
            ring_version=self.node.ring_version,
            serving=status.serving,
            channels_serving=status.channels_serving,
            channels_taking_over=status.channels_taking_over,
            channels_prepared=status.channels_prepared,
            takeovers_done=status.takeovers_done,
        )

    # ------------------------------------------------------------------------------ presence

    def _presence_on(self, channel: str) -> None:
        check_channel(channel, LIMITS)
        if not self.presence.options(channel).presence:
            raise presence_disabled(channel, self.presence.namespaces.label(channel))

    async def HoldPresence(  # noqa: N802
        self,
        request_iterator: AsyncIterator[channel_pb2.HoldPresenceRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[channel_pb2.HoldPresenceResponse]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        channel = first.channel
        try:
            self._presence_on(channel)
            presence = await self.presence.get(channel)
        except ServiceError as error:
            await abort(context, error)
            return
        hold = _Hold()
        entering: set[asyncio.Task[None]] = set()

        async def enter(member: channel_pb2.HeldMember, key: MemberKey) -> None:
            try:
                serial = await presence.enter(key, bytes(member.data), member.rejoin)
                hold.results.append(channel_pb2.HeldResult(tag=member.tag, serial=serial))
            except ServiceError as error:
                hold.held.discard(key)
                presence.release(hold, key)
                hold.results.append(channel_pb2.HeldResult(tag=member.tag, error=error.to_status()))
            hold.wake.set()

        def handle(request: channel_pb2.HoldPresenceRequest) -> None:
            if request.channel != channel:
                raise invalid(Reason.CHANNEL_NAME_INVALID, "every request of a HoldPresence stream names its channel")
            for member in request.enter:
                key = (member.client_id, member.connection_id)
                hold.held.add(key)
                presence.attach(hold, key)  # now, in stream order: a release read next undoes it
                task = asyncio.create_task(enter(member, key))
                entering.add(task)
                task.add_done_callback(entering.discard)
            for member in request.release:
                key = (member.client_id, member.connection_id)
                hold.held.discard(key)
                presence.release(hold, key)

        async def read() -> None:
            handle(first)
            async for request in request_iterator:
                handle(request)

        reader = asyncio.create_task(read())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(hold.wake.wait(), heartbeat_s)
                hold.wake.clear()
                if presence.ended:
                    await abort(context, error_for(Reason.CHANNEL_MOVED, self.node.ring_version))
                    return
                if reader.done():
                    failure = reader.exception()
                    if isinstance(failure, ServiceError):
                        await abort(context, failure)
                    if not entering:
                        return  # the gateway closed its side: it holds nobody here any more
                results, hold.results = (
                    hold.results[:hold_results_per_response_max],
                    hold.results[hold_results_per_response_max:],
                )
                left, hold.gone = hold.gone, []
                if hold.results:
                    hold.wake.set()
                yield channel_pb2.HoldPresenceResponse(
                    results=results,
                    left=[
                        channel_pb2.PresenceMemberId(client_id=client, connection_id=connection)
                        for client, connection in left
                    ],
                )
        finally:
            reader.cancel()
            for task in list(entering):
                task.cancel()
            for key in list(hold.held):
                presence.release(hold, key)

    @answers_errors
    async def ChangePresence(  # noqa: N802
        self, request: channel_pb2.ChangePresenceRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.ChangePresenceResponse:
        self._presence_on(request.channel)
        presence = await self.presence.get(request.channel)
        key = (request.client_id, request.connection_id)
        return channel_pb2.ChangePresenceResponse(serial=await presence.change(key, bytes(request.data), request.leave))

    @answers_errors
    async def GetPresence(  # noqa: N802
        self, request: channel_pb2.GetPresenceRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.GetPresenceResponse:
        self._presence_on(request.channel)
        committed = (await self.presence.get(request.channel)).state.committed
        return channel_pb2.GetPresenceResponse(
            members=[convert.member_to_proto(member) for member in committed.sorted()], serial=committed.serial
        )

    async def SubscribePresence(  # noqa: N802
        self, request: channel_pb2.SubscribePresenceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[channel_pb2.SubscribePresenceResponse]:
        after = request.after_serial
        try:
            self._presence_on(request.channel)
            # Folded and served here (so its members' grace runs here) even for a reader that
            # only wants the changes after a serial.
            committed = (await self.presence.get(request.channel)).state.committed
            if request.sync:
                members, after = committed.sorted(), committed.serial  # one moment: no await between
                step = sync_members_per_response_max
                for start in range(0, max(len(members), 1), step):
                    part = members[start : start + step]
                    yield channel_pb2.SubscribePresenceResponse(
                        sync=presence_pb2.PresenceSync(
                            members=[convert.member_to_proto(member) for member in part],
                            serial=after,
                            complete=start + step >= len(members),
                        )
                    )
        except ServiceError as error:
            await abort(context, error)
            return
        log_name = presence_log(request.channel)
        async for delivery in self.node.subscribe(log_name, after):
            if delivery.end_reason:
                last = self.node.channel_state(log_name)[1]
                await abort(context, error_for(delivery.end_reason, self.node.ring_version, last))
                return
            if delivery.gap_next_serial:  # presence logs are not trimmed (services/store/server.py)
                await abort(
                    context,
                    ServiceError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        Reason.RETENTION_EXPIRED,
                        "presence changes after that serial are no longer kept: subscribe with sync",
                    ),
                )
                return
            changes = []
            for entry in delivery.entries:
                try:
                    change = decode(entry.message)
                except PresenceError:
                    continue  # not a change (logged where the owner folds the log)
                if change.action not in VISIBLE:
                    continue  # a member's connection coming and going: not a change of the set
                changes.append(convert.change_to_proto(change, entry.serial, entry.message.timestamp_ms))
            if changes or not delivery.entries:
                yield channel_pb2.SubscribePresenceResponse(changes=changes)
