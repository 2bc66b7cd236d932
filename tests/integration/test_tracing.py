"""Traces across real processes: a cluster exporting OTLP to a receiver this test runs.

One publish, sent with the client's own `traceparent`, must be one trace: the gateway's span, the
owner's span (channel, epoch, serials, quorum outcome) and one span per store replica; the delivery
to a subscriber is a span of its own that links to the publish.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

import ringcast
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import free_ports, local_topology


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP trace receiver: keeps every span with its service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        with self.lock:
            return [(service, span) for service, span in self.spans if span.trace_id == trace_id]

    def linking_to(self, trace_id: bytes) -> list[tuple[str, trace_pb2.Span]]:
        with self.lock:
            return [(s, span) for s, span in self.spans if any(link.trace_id == trace_id for link in span.links)]


def attributes(span: trace_pb2.Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in span.attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        values[attribute.key] = (
            [item.int_value for item in value.array_value.values] if kind == "array_value" else getattr(value, kind)
        )
    return values


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    collected = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collected, server)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield collected, address
    finally:
        server.stop(grace=None)


@pytest.fixture
def traced_cluster(
    receiver: tuple[Receiver, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Launcher]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{receiver[1]}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export every 0.1 s, not every 5 s
    launcher = Launcher(local_topology(tmp_path / "data"), tmp_path)
    launcher.start_all()
    try:
        yield launcher
    finally:
        launcher.stop_all()


def test_one_publish_is_one_trace_and_its_delivery_links_to_it(
    traced_cluster: Launcher, receiver: tuple[Receiver, str]
) -> None:
    collected = receiver[0]
    gateway = traced_cluster.topology.gateways[0]
    trace_id = secrets.token_bytes(16)
    parent = f"00-{trace_id.hex()}-{secrets.token_hex(8)}-01"

    async def scenario() -> int:
        async with grpc.aio.insecure_channel(gateway) as link:
            api = realtime_grpc.RealtimeServiceStub(link)
            # Take the channel over first, so the traced publish is a plain one.
            await api.Publish(realtime_pb2.PublishRequest(channel="traced", messages=[message_pb2.Message(id="w")]))
            subscription = api.Subscribe(realtime_pb2.SubscribeRequest(channel="traced", after_serial=1))
            received = asyncio.ensure_future(subscription.read())
            await asyncio.sleep(0.5)  # the subscription is open at the owner
            response = await api.Publish(
                realtime_pb2.PublishRequest(channel="traced", messages=[message_pb2.Message(id="t", data=b"x")]),
                metadata=(("traceparent", parent),),
                timeout=30,
            )
            delivered = await asyncio.wait_for(received, 30)
            subscription.cancel()
            assert delivered.message.serial == response.serials[0]
        # The SDK publishes on its PublishPipe stream: each publish carries the caller's context.
        token = otel_context.attach(propagate.extract({"traceparent": sdk_parent}))
        try:
            async with ringcast.Client([gateway]) as client:
                await client.publish("traced", b"through the sdk")
        finally:
            otel_context.detach(token)
        return int(response.serials[0])

    sdk_trace_id = secrets.token_bytes(16)
    sdk_parent = f"00-{sdk_trace_id.hex()}-{secrets.token_hex(8)}-01"
    serial = asyncio.run(scenario())
    # Each process exports on its own schedule, and the gateway's spans end last: wait for every span
    # the assertions below look at, not only for some of them.
    expected = {
        ("gateway", "RealtimeService/Publish"),
        ("gateway", "ChannelService/Publish"),
        ("channel", "ChannelService/Publish"),
    }
    deadline = time.monotonic() + 30
    while True:
        spans = collected.of_trace(trace_id)
        names = sorted((service.split("-")[0], span.name) for service, span in spans)
        replicas = [
            span for service, span in spans if service.startswith("channel") and span.name == "StoreService/Append"
        ]
        stored = [(service, span) for service, span in spans if service.startswith("store")]
        deliveries = collected.linking_to(trace_id)
        enough = len(replicas) >= 3 and len([s for _, s in stored if s.name == "StoreService/Append"]) >= 2
        if expected <= set(names) and enough and deliveries or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ("gateway", "RealtimeService/Publish") in names, names
    assert ("gateway", "ChannelService/Publish") in names, names  # the call to the owner
    assert ("channel", "ChannelService/Publish") in names, names
    owner = next(
        span for service, span in spans if service.startswith("channel") and span.name == "ChannelService/Publish"
    )
    owner_attributes = attributes(owner)
    assert owner_attributes["ringcast.channel"] == "traced" and owner_attributes["ringcast.serials"] == [serial]
    assert owner_attributes["ringcast.quorum"] == "acked" and int(str(owner_attributes["ringcast.epoch"])) > 0
    zones = sorted(str(attributes(span)["ringcast.zone"]) for span in replicas)
    assert zones == ["a", "b", "c"]
    assert all(span.parent_span_id == owner.span_id for span in replicas)
    acked = [span for span in replicas if attributes(span)["ringcast.replica.outcome"] == "acked"]
    assert len(acked) >= 2, "a quorum of replicas acknowledged the publish"
    assert all("ringcast.store.commit_ms" in attributes(span) for span in acked)
    # Each store that acknowledged has its own span of the append, a child of the owner's span for
    # that replica, with its queue wait and its commit (fsync) as children: the store in the trace.
    by_id = {span.span_id: span for _, span in spans}
    appended = [(service, span) for service, span in stored if span.name == "StoreService/Append"]
    assert len({service for service, _ in appended}) >= 2, sorted(names)
    for service, span in appended:
        owner_side = by_id[span.parent_span_id]
        assert owner_side in replicas and attributes(owner_side)["ringcast.zone"] == service.split("-")[1]
        assert attributes(span)["ringcast.channel"] == "traced"
        assert attributes(span)["ringcast.append_status"] == "OK"
        children = sorted(child.name for _, child in stored if child.parent_span_id == span.span_id)
        assert children == ["commit", "queue"], children
    assert deliveries, "the delivery span links to the publish"
    service, delivery = deliveries[0]
    assert service.startswith("channel") and delivery.name == "ChannelService/deliver"
    assert attributes(delivery)["ringcast.serials"] == [serial]
    sdk_expected = {("gateway", "RealtimeService/Publish"), ("channel", "ChannelService/Publish")}
    deadline = time.monotonic() + 30
    while True:
        sdk_spans = sorted((service.split("-")[0], span.name) for service, span in collected.of_trace(sdk_trace_id))
        if sdk_expected <= set(sdk_spans) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ("gateway", "RealtimeService/Publish") in sdk_spans, sdk_spans
    assert ("channel", "ChannelService/Publish") in sdk_spans, sdk_spans


def test_no_endpoint_no_export() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT the tracer is the no-op one (nothing to flush, no thread)."""
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in os.environ or os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
    from services.common import tracing

    assert not tracing.enabled() and tracing.inject() == () and tracing.extract([("traceparent", "x")]) is None


def test_killing_an_owner_gives_a_takeover_trace_with_its_steps(
    traced_cluster: Launcher, receiver: tuple[Receiver, str]
) -> None:
    collected = receiver[0]
    gateway = traced_cluster.topology.gateways[0]

    async def publish(message_id: str) -> str:
        async with grpc.aio.insecure_channel(gateway) as link:
            api = realtime_grpc.RealtimeServiceStub(link)
            request = realtime_pb2.PublishRequest(channel="moving", messages=[message_pb2.Message(id=message_id)])
            await api.Publish(request, timeout=30)
            state = await api.GetChannel(realtime_pb2.GetChannelRequest(channel="moving"), timeout=30)
            return str(state.owner)

    first_owner = asyncio.run(publish("before"))
    traced_cluster.kill(first_owner, signal.SIGKILL)
    second_owner = asyncio.run(publish("after"))
    assert second_owner != first_owner

    def takeovers() -> list[tuple[str, trace_pb2.Span]]:
        with collected.lock:
            return [
                (service, span)
                for service, span in collected.spans
                if span.name == "takeover" and attributes(span).get("ringcast.channel") == "moving"
            ]

    deadline = time.monotonic() + 30
    while not any(service == second_owner for service, _ in takeovers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    root = next(span for service, span in takeovers() if service == second_owner)
    details = attributes(root)
    assert details["ringcast.outcome"] == "serving" and details["ringcast.trigger"] in ("prepare", "request")
    assert int(str(details["ringcast.ring_version"])) == int(str(details["ringcast.epoch"])) >> 16
    assert int(str(details["ringcast.adopted_entries"])) >= 1 and int(str(details["ringcast.dedup_ids"])) >= 1
    steps = [span for _, span in collected.of_trace(root.trace_id) if span.parent_span_id == root.span_id]
    assert [span.name for span in sorted(steps, key=lambda span: span.start_time_unix_nano)] == [
        "detect",
        "fence",
        "recover",
        "rebuild dedup",
    ]
    detect = next(span for span in steps if span.name == "detect")
    assert str(attributes(detect)["ringcast.why"]).startswith(("ring change", "first request"))
