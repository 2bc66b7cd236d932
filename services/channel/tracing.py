"""Traces of a channel node: the publish-to-ack span of each publish (linked from the deliveries it
causes) and one span per takeover, with its steps as events."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from services.common import tracing
from services.core.entries import epoch_ring_version
from services.core.replica_log import (
    COMMIT_ID_KEY,
    COMMIT_MS_KEY,
    COMMIT_REQUESTS_KEY,
    AppendReply,
    AppendStatus,
)
from services.core.role import (
    PublishResult,
)

log = logging.getLogger("ringcast.channel")

traced_publishes_max = 10_000
"""Publishes whose span a delivery can still link to (with tracing on); the oldest are forgotten."""


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

    def context_for(self, channel: str, zone: str) -> dict[str, str]:
        """The trace context an append of `channel` to `zone` carries (the store's span is its
        child): that of the oldest traced publish still waiting for this replica; {} when none is."""
        for traced in self._open.get(channel, {}).values():
            span = traced.replicas.get(zone)
            if span is not None:
                carrier: dict[str, str] = {}
                propagate.inject(carrier, context=trace.set_span_in_context(span))
                return carrier
        return {}

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
