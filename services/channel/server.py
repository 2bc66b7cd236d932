"""The channel node process: the `ChannelNode` core behind `ChannelService`, talking to stores and etcd.

The adapter owns every piece of I/O the core asks for and nothing else:
- it feeds the core requests (from gateways), store replies, rings (from placement), lease news
  (from etcd) and ticks, always with `now_ms` from the monotonic clock;
- it carries out the `Effects` the core returns: store requests (appends coalesced per replica into
  one batched RPC, a bounded number in flight), publish results, deliveries, history pages.
Every internal RPC has a deadline. A core invariant failing stops every role this node holds (the
channels are re-taken, with fresh epochs, on the next request) rather than serving on from state
it cannot trust.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from ringcast.pipe import call_error
from ringcast.reasons import Reason
from ringcast.v1 import channel_service_pb2 as channel_pb2
from ringcast.v1 import channel_service_pb2_grpc as channel_grpc
from ringcast.v1 import message_pb2
from ringcast.v1 import store_service_pb2 as store_pb2
from ringcast.v1 import store_service_pb2_grpc as store_grpc
from services.common import convert, metrics, tracing
from services.common.batcher import Batcher
from services.common.clock import PeerClock, clock_skew_ms_max
from services.common.errors import ServiceError, abort, answers_errors, invalid
from services.common.pipe import serve_pipe
from services.common.ring_watch import RingView
from services.common.server import CHANNEL_OPTIONS
from services.common.validation import Limits, check_channel
from services.core.entries import Entry, Message, epoch_ring_version
from services.core.invariants import InvariantViolation
from services.core.node import ChannelNode, NodeConfig
from services.core.quorum import quorum_size
from services.core.replica_log import (
    COMMIT_ID_KEY,
    COMMIT_MS_KEY,
    COMMIT_REQUESTS_KEY,
    AppendReply,
    AppendStatus,
    FenceReply,
    ReadReply,
)
from services.core.role import (
    AppendRequest,
    Delivery,
    Effects,
    FenceRequest,
    HistoryResult,
    PublishResult,
    ReadRequest,
    RoleConfig,
    RoleState,
    StoreRequest,
)

log = logging.getLogger("ringcast.channel")

store_rpc_timeout_s = 2.0
"""Deadline of every call to a store replica."""

append_batch_appends_max = 256
"""Appends (for any channels) carried by one Append RPC to one replica."""

fence_batch_fences_max = 256
"""Fences (for any channels) carried by one Fence RPC to one replica."""

read_batch_reads_max = 64
"""Reads (for any channels) carried by one Read RPC to one replica (the store takes at most 64)."""

store_rpcs_inflight_max = 1
"""RPCs of each kind (Fence, Append, Read) in flight to one replica at a time; requests made meanwhile
wait and go together in the next one, so a burst of takeovers costs a few RPCs, not one per channel."""

subscription_heartbeat_s = 1.0
"""A subscription stream with nothing to deliver gets an empty response this often: the gateway
leaves an owner that sends nothing for longer (services/gateway/feed.py)."""

subscriber_queue_deliveries_max = 1_024
"""Deliveries queued for one subscription; a subscriber further behind is cut off (it resumes)."""

clock_check_interval_s = 5.0
"""How often the node compares its wall clock with the stores' (services/common/clock.py)."""

tick_interval_s = 0.05
"""How often the core is told that time passed (retransmissions, timeouts, lease checks)."""

request_timeout_s = 30.0
"""Longest a gateway's request may wait at this node, whatever deadline it set."""

event_loop_lag_s_max = 1.0
"""A tick this late means the process is starved (CPU, swap, GC): counted against its health."""

lagging_ticks_max = 3
"""Consecutive late ticks after which the node calls itself unhealthy (EVENT_LOOP_LAG)."""

prepare_channels_max = 1_000
"""Channels one Prepare call may name."""


entry_protos_max = 8_192
"""Entries kept in their wire form for the replicas still to be sent them (oldest dropped first)."""

traced_publishes_max = 10_000
"""Publishes whose span a delivery can still link to (with tracing on); the oldest are forgotten."""

LIMITS = Limits()

STATUS_BY_NAME = {
    "APPEND_STATUS_OK": AppendStatus.OK,
    "APPEND_STATUS_FENCED": AppendStatus.FENCED,
    "APPEND_STATUS_MISMATCH": AppendStatus.MISMATCH,
    "APPEND_STATUS_CORRUPT": AppendStatus.CORRUPT,
    "APPEND_STATUS_INVALID": AppendStatus.INVALID,
}


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def error_for(reason: str, ring_version: int) -> ServiceError:
    """The status a failed request is answered with."""
    if reason == Reason.NOT_OWNER:
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            reason,
            "this node does not own the channel under its ring; refresh the ring and retry",
            {"ring_version": str(ring_version)},
        )
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason or "UNAVAILABLE", f"channel unavailable: {reason}")


@dataclass(slots=True)
class _Subscription:
    queue: asyncio.Queue[Delivery]
    channel: str


@dataclass(slots=True)
class _PublishTrace:
    channel: str
    context: trace.SpanContext  # the publish's span at the owner
    last_serial: int | None  # None while the channel is still being taken over
    replicas: dict[str, trace.Span]


class PublishTraces:
    """With tracing on: a child span per store replica for each publish, and span links for deliveries.

    A publish's entries reach the replicas inside batched Append RPCs shared with other channels, so
    the replica spans are the owner's view: each starts with the publish and ends when that replica
    acknowledged the publish's last serial (attributes: zone, the commit's id, size and sync time as
    the store reported them), or, if the publish finished first, with the outcome "not awaited" (a
    quorum of the others sufficed) or "no answer" (the publish failed). A publish queued while its
    channel is being taken over has no serial yet: its replica spans end with the publish.
    """

    def __init__(self) -> None:
        self._open: dict[str, dict[int, _PublishTrace]] = {}
        self._tokens: dict[int, _PublishTrace] = {}
        self._published: OrderedDict[tuple[str, int], trace.SpanContext] = OrderedDict()

    def begin(self, channel: str, token: int, last_serial: int | None, zones: list[str]) -> None:
        spans = {
            zone: tracing.tracer.start_span(
                "StoreService/Append", kind=trace.SpanKind.CLIENT, attributes={"ringcast.zone": zone}
            )
            for zone in zones
        }
        traced = _PublishTrace(channel, trace.get_current_span().get_span_context(), last_serial, spans)
        self._open.setdefault(channel, {})[token] = traced
        self._tokens[token] = traced

    def on_append(self, zone: str, channel: str, reply: AppendReply, trailing: dict[str, str]) -> None:
        for traced in self._open.get(channel, {}).values():
            span = traced.replicas.get(zone)
            if span is None or traced.last_serial is None:
                continue
            if reply.status is AppendStatus.OK and reply.match_serial >= traced.last_serial:
                span.set_attribute("ringcast.replica.outcome", "acked")
                for key in (COMMIT_ID_KEY, COMMIT_REQUESTS_KEY, COMMIT_MS_KEY):
                    if key in trailing:
                        span.set_attribute(key.replace("ringcast-", "ringcast.store.").replace("-", "_"), trailing[key])
                span.end()
                del traced.replicas[zone]
            elif reply.status is not AppendStatus.OK:
                span.add_event("refused", {"ringcast.append_status": reply.status.name})

    def end(self, channel: str, token: int, outcome: str) -> None:
        self._tokens.pop(token, None)
        traced = self._open.get(channel, {}).pop(token, None)
        if not self._open.get(channel, True):
            del self._open[channel]
        if traced is None:
            return
        for span in traced.replicas.values():
            span.set_attribute("ringcast.replica.outcome", outcome)
            span.end()
        trace.get_current_span().set_attribute("ringcast.replicas_not_awaited", len(traced.replicas))

    def on_result(self, token: int, result: PublishResult) -> None:
        """A publish is answered: its serials now lead deliveries to its span (before they go out)."""
        traced = self._tokens.get(token)
        if traced is None or not result.ok or not traced.context.is_valid:
            return
        for serial in result.serials:
            self._published[(traced.channel, serial)] = traced.context
            while len(self._published) > traced_publishes_max:
                self._published.popitem(last=False)

    def links(self, channel: str, serials: Sequence[int]) -> list[trace.Link]:
        found: dict[tuple[int, int], trace.SpanContext] = {}
        for serial in serials:
            context = self._published.get((channel, serial))
            if context is not None:
                found[(context.trace_id, context.span_id)] = context
        return [trace.Link(context) for context in found.values()]


class TakeoverTraces:
    """With tracing on, each takeover is a trace of its own: a root span `takeover` (channel, epoch,
    the ring version it acts under) with one child span per step: `detect` (why: a ring change that
    gateways reported with Prepare, or the first request under this ring), `fence` (until a quorum
    answered), `recover` (reading the adopted log and rewriting its last entry at our epoch, which
    re-replicates it), `rebuild dedup` (ids the window was rebuilt with); the root ends with the
    outcome `serving` or `failed` (with the reason)."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], tuple[trace.Span, trace.Span]] = {}

    def on_step(self, channel: str, epoch: int, step: str, details: dict[str, int | str]) -> None:
        key = (channel, epoch)
        attributes = {f"ringcast.{name}": value for name, value in details.items()}
        if step == "fencing":
            root = tracing.tracer.start_span(
                "takeover",
                context=otel_context.Context(),  # a trace of its own, whatever request started it
                attributes={
                    "ringcast.channel": channel,
                    "ringcast.epoch": epoch,
                    "ringcast.ring_version": epoch_ring_version(epoch),
                    **attributes,
                },
            )
            trigger = str(details.get("trigger", "request"))
            why = "ring change (prepared by a gateway)" if trigger == "prepare" else "first request under this ring"
            detect = tracing.tracer.start_span(
                "detect", context=trace.set_span_in_context(root), attributes={"ringcast.why": why}
            )
            detect.end()
            self._open[key] = (root, tracing.tracer.start_span("fence", context=trace.set_span_in_context(root)))
            return
        opened = self._open.get(key)
        if opened is None:
            return
        root, step_span = opened
        step_span.set_attributes(attributes)
        step_span.end()
        if step == "recovering":
            self._open[key] = (root, tracing.tracer.start_span("recover", context=trace.set_span_in_context(root)))
            return
        del self._open[key]
        root.set_attributes(attributes)
        if step == "failed":
            root.set_status(trace.Status(trace.StatusCode.ERROR, str(details.get("reason", ""))))
        else:
            rebuild = tracing.tracer.start_span(
                "rebuild dedup",
                context=trace.set_span_in_context(root),
                attributes={"ringcast.dedup_ids": details.get("dedup_ids", 0)},
            )
            rebuild.end()
        root.set_attribute("ringcast.outcome", step)
        root.end()


Request = TypeVar("Request", AppendRequest, FenceRequest, ReadRequest)
Reply = TypeVar("Reply", AppendReply, FenceReply, ReadReply)
Response = TypeVar("Response")


class StoreLink:
    """One store replica: a gRPC channel, and per-replica batchers for fences, appends and reads."""

    def __init__(self, zone: str, address: str, node: ChannelNodeAdapter) -> None:
        self.zone = zone
        self.address = address
        self.node = node
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = store_grpc.StoreServiceStub(self.channel)
        self.append_stream = _AppendStream(self.stub, zone)
        self.appends = Batcher(self._append, append_batch_appends_max, store_rpcs_inflight_max)
        self.fences = Batcher(self._fence, fence_batch_fences_max, store_rpcs_inflight_max)
        self.reads = Batcher(self._read, read_batch_reads_max, store_rpcs_inflight_max)

    async def close(self) -> None:
        await self.channel.close()

    def send(self, request: StoreRequest) -> None:
        if isinstance(request, AppendRequest):
            self.appends.add(request)
        elif isinstance(request, FenceRequest):
            self.fences.add(request)
        else:
            self.reads.add(request)

    def _failed(self, batch: Sequence[StoreRequest], error: Exception) -> None:
        log.debug("%s to %s failed: %s", type(batch[0]).__name__, self.zone, error)

        def fail(fx: Effects) -> None:
            for request in batch:
                self.node.core.on_store_error(self.zone, request, now_ms(), fx)

        self.node.call(fail)

    async def _exchange(
        self,
        batch: list[Request],
        call: Callable[[], Awaitable[Response]],
        replies_of: Callable[[Response], list[Reply]],
        on_reply: Callable[[str, Request, Reply, int, Effects], None],
        observe: Callable[[Request, Reply, dict[str, str]], None] | None = None,
        commit_of: Callable[[Response], dict[str, str]] | None = None,
    ) -> None:
        """One batched exchange: its replies go to the core one by one; a failed one fails each request."""
        try:
            response = await call()
        except (grpc.RpcError, grpc.aio.UsageError) as error:  # UsageError: the link closed at shutdown
            self._failed(batch, error)
            return
        replies = replies_of(response)
        commit = commit_of(response) if commit_of is not None and tracing.enabled() else {}

        def deliver(fx: Effects) -> None:
            for request, reply in zip(batch, replies, strict=True):
                on_reply(self.zone, request, reply, now_ms(), fx)
                if observe is not None:
                    observe(request, reply, commit)

        self.node.call(deliver)

    def _observe_append(self, request: AppendRequest, reply: AppendReply, trailing: dict[str, str]) -> None:
        """Metrics and traces of one append reply (after the core has it)."""
        if reply.status is AppendStatus.OK:
            role = self.node.core.roles.get(request.channel)
            if role is not None:
                metrics.replica_behind_entries.labels(self.zone).observe(max(0, role.last - reply.match_serial))
        if trailing:
            self.node.traces.on_append(self.zone, request.channel, reply, trailing)

    async def _append(self, batch: list[AppendRequest]) -> None:
        proto = store_pb2.AppendRequest(
            appends=[
                store_pb2.ChannelAppend(
                    channel=request.channel,
                    epoch=request.epoch,
                    prev=convert.position_to_proto(request.prev),
                    entries=[self.node.entry_proto(request.channel, entry) for entry in request.entries],
                    commit=request.commit,
                    from_base=request.from_base,
                    owner_now_ms=request.owner_now_ms,
                )
                for request in batch
            ]
        )
        await self._exchange(
            batch,
            lambda: self.append_stream.exchange(proto, store_rpc_timeout_s),
            lambda response: self._append_replies(response),
            self.node.core.on_append_reply,
            self._observe_append,
            _commit_of,
        )

    def _append_replies(self, response: store_pb2.AppendResponse) -> list[AppendReply]:
        if response.results:
            self.node.store_clock.observe(response.results[0].store_now_ms)
        return [_append_reply(result) for result in response.results]

    async def _fence(self, batch: list[FenceRequest]) -> None:
        proto = store_pb2.FenceRequest(
            fences=[store_pb2.ChannelFence(channel=request.channel, epoch=request.epoch) for request in batch]
        )
        await self._exchange(
            batch,
            lambda: self.stub.Fence(proto, timeout=store_rpc_timeout_s),
            lambda response: [
                FenceReply(
                    result.fenced, result.fence_epoch, convert.position_from_proto(result.last), result.damaged_serial
                )
                for result in response.results
            ],
            self.node.core.on_fence_reply,
        )

    async def _read(self, batch: list[ReadRequest]) -> None:
        proto = store_pb2.ReadRequest(
            reads=[
                store_pb2.ChannelRead(
                    channel=request.channel,
                    after_serial=request.after_serial,
                    limit=request.limit,
                    ids_only=request.ids_only,
                )
                for request in batch
            ]
        )
        await self._exchange(
            batch,
            lambda: self.stub.Read(proto, timeout=store_rpc_timeout_s),
            lambda response: [_read_reply(result) for result in response.results],
            self.node.core.on_read_reply,
        )


def _commit_of(response: store_pb2.AppendResponse) -> dict[str, str]:
    """What the store says about the commit that made an append durable (for the publish's trace)."""
    if not response.HasField("commit"):
        return {}
    commit = response.commit
    return {COMMIT_ID_KEY: str(commit.id), COMMIT_REQUESTS_KEY: str(commit.requests), COMMIT_MS_KEY: f"{commit.ms:.3f}"}


class _AppendStream:
    """The AppendStream to one replica: one request, then its response, on a stream kept open.

    Any failure (an error, no answer in time, cancellation) leaves the stream out of step with
    its requests, so it is dropped; the next exchange opens a new one. A stream that broke while
    idle (the replica restarted) is found out by the next exchange: that one is tried again at once
    on a new stream, as a unary call on a reconnected channel would have gone through.
    """

    def __init__(self, stub: store_grpc.StoreServiceStub, zone: str) -> None:
        self.stub = stub
        self.zone = zone
        self.stream: grpc.aio.StreamStreamCall | None = None
        self._turn = asyncio.Lock()  # one exchange at a time keeps responses matched to requests

    async def exchange(self, request: store_pb2.AppendRequest, timeout_s: float) -> store_pb2.AppendResponse:
        async with self._turn:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            if self.stream is not None and self.stream.done():
                self._drop(self.stream)
            fresh = self.stream is None
            try:
                return await self._exchange(request, timeout_s)
            except grpc.RpcError as error:
                if fresh or error.code() != grpc.StatusCode.UNAVAILABLE or loop.time() >= deadline:
                    raise
            return await self._exchange(request, deadline - loop.time())  # once, on a new stream

    async def _exchange(self, request: store_pb2.AppendRequest, timeout_s: float) -> store_pb2.AppendResponse:
        stream = self.stream
        if stream is None:
            stream = self.stream = self.stub.AppendStream()
        try:
            async with asyncio.timeout(timeout_s):
                await stream.write(request)
                response = await stream.read()
        except TimeoutError:
            self._drop(stream)
            raise call_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer from store {self.zone} in time") from None
        except asyncio.InvalidStateError:  # the stream ended between our check and the write
            self._drop(stream)
            raise call_error(grpc.StatusCode.UNAVAILABLE, f"the append stream to store {self.zone} ended") from None
        except BaseException:
            self._drop(stream)
            raise
        if response is grpc.aio.EOF:
            self._drop(stream)
            raise call_error(grpc.StatusCode.UNAVAILABLE, f"store {self.zone} ended the append stream")
        answer: store_pb2.AppendResponse = response
        return answer

    def _drop(self, stream: grpc.aio.StreamStreamCall) -> None:
        if self.stream is stream:
            self.stream = None
        stream.cancel()


def _read_reply(result: store_pb2.ChannelReadResult) -> ReadReply:
    """A store's read answer as the core takes it (which checks the entries again itself)."""
    last, base = convert.position_from_proto(result.last), convert.position_from_proto(result.base)
    if result.ids:
        ids = tuple(zip(result.ids, result.timestamps_ms, strict=True))
        return ReadReply((), last, result.damaged_serial, base, ids)
    entries = tuple(convert.entry_from_proto(entry) for entry in result.entries)
    return ReadReply(entries, last, result.damaged_serial, base)


def _append_reply(result: store_pb2.ChannelAppendResult) -> AppendReply:
    return AppendReply(
        STATUS_BY_NAME.get(store_pb2.AppendStatus.Name(result.status), AppendStatus.INVALID),
        result.fence_epoch,
        convert.position_from_proto(result.last),
        result.match_serial,
        result.conflict_epoch,
        result.conflict_first_serial,
        result.detail,
        convert.position_from_proto(result.base),
        result.damaged_serial,
    )


class ChannelNodeAdapter:
    """Runs a `ChannelNode` core on the event loop."""

    def __init__(
        self,
        node_id: str,
        stores: dict[str, str],
        config: NodeConfig | None = None,
        bugs: frozenset[str] = frozenset(),
    ) -> None:
        zones = tuple(sorted(stores))
        self.config = config or NodeConfig(role=RoleConfig(replicas=zones, bugs=bugs))
        self.core = ChannelNode(node_id, self.config)
        self.node_id = node_id
        self.links = {zone: StoreLink(zone, address, self) for zone, address in stores.items()}
        self.tokens = itertools.count(1)
        self.publishes: dict[int, asyncio.Future[PublishResult]] = {}
        self.histories: dict[int, asyncio.Future[HistoryResult]] = {}
        self.subscriptions: dict[int, _Subscription] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._lagging_ticks = 0
        self.stores_registered = 0
        self.store_clock = PeerClock("stores")  # the stores' wall clocks, from their append replies
        self.closing = False
        self.traces = PublishTraces()
        self.takeover_traces = TakeoverTraces()
        self._entry_protos: dict[tuple[str, int, int], store_pb2.LogEntry] = {}
        for state in ("serving", "taking_over", "prepared"):
            metrics.channels.labels(state).set_function(functools.partial(self._channels, state))
        # Called with a reason when this node should leave the ring for a while (see health()).
        self.on_unhealthy: Callable[[str], None] = lambda reason: None

    # ----------------------------------------------------------------------------- plumbing

    def entry_proto(self, channel: str, entry: Entry) -> store_pb2.LogEntry:
        """`entry` as sent to the replicas, made once for all of them (every replica gets each entry)."""
        key = (channel, entry.serial, entry.epoch)
        proto = self._entry_protos.get(key)
        if proto is None or proto.checksum != entry.checksum:
            proto = self._entry_protos[key] = convert.entry_to_proto(entry)
            if len(self._entry_protos) > entry_protos_max:
                del self._entry_protos[next(iter(self._entry_protos))]
        return proto

    def call(self, action: Callable[[Effects], object]) -> None:
        """Run one step of the core and carry out what it asks for."""
        fx = Effects()
        try:
            action(fx)
        except InvariantViolation:
            log.exception("invariant violated: dropping every channel of this node")
            fx = Effects()
            self.core.stop_all(Reason.INTERNAL, fx)
        self.apply(fx)

    def apply(self, fx: Effects) -> None:
        for zone, request in fx.sends:
            link = self.links.get(zone)
            if link is not None:
                link.send(request)
        for token, result in fx.results:
            if tracing.enabled():
                self.traces.on_result(token, result)
            future = self.publishes.pop(token, None)
            if future is not None and not future.done():
                future.set_result(result)
        for token, history in fx.histories:
            waiting = self.histories.pop(token, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(history)
        for token, delivery in fx.deliveries:
            subscription = self.subscriptions.get(token)
            if subscription is None:
                continue
            if subscription.queue.qsize() >= subscriber_queue_deliveries_max - 1 and not delivery.end_reason:
                delivery = Delivery(end_reason=Reason.SUBSCRIBER_TOO_SLOW)
                self.core.unsubscribe(subscription.channel, token)
                metrics.subscribers_dropped.inc()
            elif delivery.entries:
                metrics.deliveries.inc(len(delivery.entries))
            subscription.queue.put_nowait(delivery)
            if delivery.end_reason:
                self.subscriptions.pop(token, None)
        for event in fx.events:
            log.info("%s", event)
        for channel, zone, kind, detail in fx.replica_faults:
            metrics.replica_faults.labels(zone, kind).inc()
            log.warning("replica %s of %s: %s (%s)", zone, channel, kind, detail)
        for channel, epoch, step, details in fx.takeovers:
            self._count_takeover(step, details)
            if tracing.enabled():
                self.takeover_traces.on_step(channel, epoch, step, details)

    def wall_now_ms(self) -> int:
        """Wall-clock time, for message timestamps: ours, unless it is further from the stores'
        (their median, from append replies) than the skew allowed — then theirs, so that one node's
        bad clock does not stamp messages that retention would misjudge (services/common/clock.py)."""
        ours = int(time.time() * 1000)
        theirs = self.store_clock.now_ms()
        return theirs if theirs is not None and abs(ours - theirs) > clock_skew_ms_max else ours

    async def start(self) -> asyncio.Task[None]:
        """Start ticking the core; the task that does it, which runs until shutdown."""
        self.core.set_wall_offset(self.wall_now_ms() - now_ms())
        self._ticker = asyncio.create_task(self._tick_forever(), name="channel-ticker")
        return self._ticker

    def begin_shutdown(self) -> None:
        """Step down from every channel and take no new work; links stay open for the grace period."""
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        self.call(lambda fx: self.core.stop_all(Reason.SHUTTING_DOWN, fx))

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()

    async def _tick_forever(self) -> None:
        clock_checked = time.monotonic()
        while True:
            if time.monotonic() - clock_checked >= clock_check_interval_s:
                clock_checked = time.monotonic()
                self.store_clock.check()
            self.core.set_wall_offset(self.wall_now_ms() - now_ms())
            before = time.monotonic()
            await asyncio.sleep(tick_interval_s)
            late_s = time.monotonic() - before - tick_interval_s
            self._lagging_ticks = self._lagging_ticks + 1 if late_s > event_loop_lag_s_max else 0
            self.call(lambda fx: self.core.tick(now_ms(), fx))
            reason = self.core.health(now_ms())
            if reason == Reason.STORES_UNREACHABLE and self.stores_registered < quorum_size(len(self.links)):
                reason = ""  # the stores are down for everyone, not only for us: moving helps no one
            if not reason and self._lagging_ticks >= lagging_ticks_max:
                reason = "EVENT_LOOP_LAG"
            if reason:
                self._lagging_ticks = 0
                self.on_unhealthy(reason)

    # ----------------------------------------------------------------------------- membership

    def on_registered(self, revision: int) -> None:
        self.core.on_registered(revision)
        log.info("registered at revision %d", revision)

    def on_lease(self, deadline_monotonic_s: float) -> None:
        self.core.on_lease(int(deadline_monotonic_s * 1000))

    def on_lost(self) -> None:
        log.warning("etcd lease lost: dropping every channel")
        self.call(self.core.on_lease_lost)

    def on_ring(self, view: RingView) -> None:
        self.stores_registered = len(view.stores)  # store replicas alive (their etcd leases) as the ring says
        self.call(lambda fx: self.core.on_ring(view.ring, fx))
        metrics.ring_version.set(self.ring_version)

    def _channels(self, state: str) -> float:
        status = self.core.status(now_ms())
        return float(
            {
                "serving": status.channels_serving,
                "taking_over": status.channels_taking_over,
                "prepared": status.channels_prepared,
            }[state]
        )

    @staticmethod
    def _count_takeover(step: str, details: dict[str, int | str]) -> None:
        if step in ("serving", "failed"):
            metrics.takeovers.labels(str(details.get("trigger", "request")), step).inc()
        if step == "serving":
            metrics.takeover_seconds.observe(int(details.get("duration_ms", 0)) / 1000)

    @property
    def ring_version(self) -> int:
        return self.core.ring.version if self.core.ring is not None else 0

    # ----------------------------------------------------------------------------- requests

    async def publish(self, channel: str, messages: tuple[Message, ...], timeout_s: float) -> PublishResult:
        if self.closing:
            return PublishResult(False, reason=Reason.SHUTTING_DOWN, retryable=True)
        token = next(self.tokens)
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self.publishes[token] = future
        self.call(lambda fx: self.core.publish(channel, token, messages, now_ms(), fx))
        if tracing.enabled():
            role = self.core.roles.get(channel)
            serving = role is not None and role.state is RoleState.SERVING and not future.done()
            self.traces.begin(channel, token, role.last if serving and role else None, sorted(self.links))
        result: PublishResult | None = None
        try:
            result = await asyncio.wait_for(future, timeout_s)
        finally:
            self.publishes.pop(token, None)
            if tracing.enabled():
                self.traces.end(channel, token, "not awaited" if result is not None and result.ok else "no answer")
        return result

    async def history(self, channel: str, after_serial: int, limit: int, timeout_s: float) -> HistoryResult:
        if self.closing:
            return HistoryResult(reason=Reason.SHUTTING_DOWN)
        token = next(self.tokens)
        future: asyncio.Future[HistoryResult] = asyncio.get_running_loop().create_future()
        self.histories[token] = future
        self.call(lambda fx: self.core.read_history(channel, token, after_serial, limit, now_ms(), fx))
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self.histories.pop(token, None)

    async def subscribe(self, channel: str, after_serial: int) -> AsyncIterator[Delivery]:
        if self.closing:
            yield Delivery(end_reason=Reason.SHUTTING_DOWN)
            return
        token = next(self.tokens)
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.subscriptions[token] = _Subscription(queue, channel)
        self.call(lambda fx: self.core.subscribe(channel, token, after_serial, now_ms(), fx))
        try:
            while True:
                try:
                    delivery = await asyncio.wait_for(queue.get(), subscription_heartbeat_s)
                except TimeoutError:
                    yield Delivery()  # a heartbeat: nothing new, and this owner is alive and serving
                    continue
                yield delivery
                if delivery.end_reason:
                    return
        finally:
            self.subscriptions.pop(token, None)
            self.core.unsubscribe(channel, token)

    def prepare(self, channels: list[str]) -> int:
        if self.closing:
            return 0
        queued = 0

        def prepare(fx: Effects) -> None:
            nonlocal queued
            queued = self.core.prepare(channels, now_ms(), fx)

        self.call(prepare)
        return queued

    def channel_state(self, channel: str) -> tuple[int, int]:
        """(epoch, last committed serial) of the channel's role here, or (0, 0)."""
        role = self.core.roles.get(channel)
        if role is None or role.state is not RoleState.SERVING:
            return 0, 0
        return role.epoch, role.commit


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


class ChannelServicer(channel_grpc.ChannelServiceServicer):  # type: ignore[misc]
    def __init__(self, node: ChannelNodeAdapter) -> None:
        self.node = node

    async def _publish(
        self, request: channel_pb2.ChannelServicePublishRequest, parent: otel_context.Context | None, timeout_s: float
    ) -> channel_pb2.ChannelServicePublishResponse:
        """One channel's publish, as one span; a failure is a ServiceError with the reason."""
        messages = tuple(convert.message_from_proto(message) for message in request.messages)
        with tracing.tracer.start_as_current_span(
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
        return channel_pb2.ChannelServicePublishResponse(serials=result.serials, duplicates=result.duplicates)

    @answers_errors
    async def Publish(  # noqa: N802 - gRPC method names
        self, request: channel_pb2.ChannelServicePublishRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.ChannelServicePublishResponse:
        return await self._publish(request, tracing.extract(context.invocation_metadata()), _deadline(context))

    async def PublishPipe(  # noqa: N802
        self,
        request_iterator: AsyncIterator[channel_pb2.ChannelServicePublishPipeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[channel_pb2.ChannelServicePublishPipeResponse]:
        async def handle(item: channel_pb2.ChannelServicePipedPublish) -> channel_pb2.ChannelServicePublishResponse:
            timeout_s = min(request_timeout_s, item.timeout_ms / 1000) if item.timeout_ms else request_timeout_s
            return await self._publish(item.publish, tracing.extract(item.trace_context.items()), timeout_s)

        async for response in serve_pipe(
            context,
            request_iterator,
            handle,
            channel_pb2.ChannelServicePublishPipeResponse,
            channel_pb2.ChannelServicePipedPublishResult,
        ):
            yield response

    async def Subscribe(  # noqa: N802
        self, request: channel_pb2.ChannelServiceSubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[channel_pb2.ChannelServiceSubscribeResponse]:
        async for delivery in self.node.subscribe(request.channel, request.after_serial):
            if delivery.end_reason:
                await abort(context, error_for(delivery.end_reason, self.node.ring_version))
                return
            if not delivery.entries and not delivery.gap_next_serial:
                yield channel_pb2.ChannelServiceSubscribeResponse()  # a heartbeat
                continue
            span = None
            if tracing.enabled():
                serials = [entry.serial for entry in delivery.entries]
                span = tracing.tracer.start_span(
                    "ChannelService/deliver",
                    links=self.node.traces.links(request.channel, serials),
                    attributes={"ringcast.channel": request.channel, "ringcast.serials": serials},
                )
            yield channel_pb2.ChannelServiceSubscribeResponse(
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
            raise error_for(result.reason, self.node.ring_version)
        return result

    @answers_errors
    async def History(  # noqa: N802
        self, request: channel_pb2.ChannelServiceHistoryRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.ChannelServiceHistoryResponse:
        result = await self._history(request.channel, request.after_serial, request.limit, context)
        _, last = self.node.channel_state(request.channel)
        return channel_pb2.ChannelServiceHistoryResponse(
            messages=[convert.message_to_proto(e.message, e.serial) for e in result.entries],
            last_serial=last,
            gap=_gap(result.gap_next_serial, "history"),
        )

    @answers_errors
    async def GetChannel(  # noqa: N802
        self, request: channel_pb2.ChannelServiceGetChannelRequest, context: grpc.aio.ServicerContext
    ) -> message_pb2.Channel:
        await self._history(request.channel, 0, 0, context)  # takes the channel over
        epoch, last = self.node.channel_state(request.channel)
        return message_pb2.Channel(
            name=request.channel,
            owner=self.node.node_id,
            epoch=epoch,
            last_serial=last,
            ring_version=self.node.ring_version,
        )

    @answers_errors
    async def Prepare(  # noqa: N802
        self, request: channel_pb2.ChannelServicePrepareRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.ChannelServicePrepareResponse:
        if len(request.channels) > prepare_channels_max:
            raise invalid(
                Reason.TOO_MANY_CHANNELS,
                f"{len(request.channels)} channels in one call; at most {prepare_channels_max}",
                limit=str(prepare_channels_max),
            )
        for channel in request.channels:
            check_channel(channel, LIMITS)
        return channel_pb2.ChannelServicePrepareResponse(queued=self.node.prepare(list(request.channels)))

    async def GetNode(  # noqa: N802
        self, request: channel_pb2.ChannelServiceGetNodeRequest, context: grpc.aio.ServicerContext
    ) -> channel_pb2.ChannelServiceGetNodeResponse:
        status = self.node.core.status(now_ms())
        return channel_pb2.ChannelServiceGetNodeResponse(
            node_id=self.node.node_id,
            ring_version=self.node.ring_version,
            serving=status.serving,
            channels_serving=status.channels_serving,
            channels_taking_over=status.channels_taking_over,
            channels_prepared=status.channels_prepared,
            takeovers_done=status.takeovers_done,
        )
