"""The SDK against scripted gateways: real gRPC servers on loopback that implement RealtimeService
with behaviour a real cluster shows only rarely (a slow gateway, a stream that replays a message,
a gap the platform cannot fill, an outage that outlasts the deadline)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

import ringcast
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common.errors import ServiceError, abort, invalid, unavailable
from services.common.pipe import serve_pipe


class ScriptedGateway(realtime_grpc.RealtimeServiceServicer):  # type: ignore[misc]
    """Answers publishes after `delay_s` (or with `refuse`), and serves subscriptions from `streams`:
    one script per Subscribe call, each a list of items (a Message, a ContinuityLost, or an error to
    end the stream with)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.refuse: ServiceError | None = None
        self.publishes: list[realtime_pb2.PublishRequest] = []
        self.streams: list[list[Any]] = []
        self.subscribe_requests: list[realtime_pb2.SubscribeRequest] = []
        self.serial = 0

    async def _publish(self, request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        self.publishes.append(request)
        await asyncio.sleep(self.delay_s)
        if self.refuse is not None:
            raise self.refuse
        serials = list(range(self.serial + 1, self.serial + 1 + len(request.messages)))
        self.serial += len(request.messages)
        return realtime_pb2.PublishResponse(channel=request.channel, serials=serials, duplicates=[False] * len(serials))

    async def Publish(  # noqa: N802
        self, request: realtime_pb2.PublishRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.PublishResponse:
        try:
            return await self._publish(request)
        except ServiceError as error:
            await abort(context, error)
            raise

    async def PublishPipe(  # noqa: N802 - what the SDK publishes through
        self, requests: AsyncIterator[realtime_pb2.PublishPipeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.PublishPipeResponse]:
        async def handle(item: realtime_pb2.PipedPublish) -> realtime_pb2.PublishResponse:
            return await self._publish(item.publish)

        async for response in serve_pipe(
            context, requests, handle, realtime_pb2.PublishPipeResponse, realtime_pb2.PipedPublishResult
        ):
            yield response

    async def GetChannel(  # noqa: N802
        self, request: realtime_pb2.GetChannelRequest, context: grpc.aio.ServicerContext
    ) -> realtime_pb2.GetChannelResponse:
        return realtime_pb2.GetChannelResponse(name=request.channel, owner="scripted", last_serial=self.serial)

    async def Subscribe(  # noqa: N802
        self, request: realtime_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.SubscribeResponse]:
        self.subscribe_requests.append(request)
        await context.send_initial_metadata(())
        script = self.streams.pop(0) if self.streams else []
        for item in script:
            if isinstance(item, ServiceError):
                await abort(context, item)
                return
            if isinstance(item, message_pb2.ContinuityLost):
                yield realtime_pb2.SubscribeResponse(gap=item)
            else:
                yield realtime_pb2.SubscribeResponse(message=item)
        await asyncio.Event().wait()  # then a quiet, open stream


def message(serial: int) -> message_pb2.Message:
    return message_pb2.Message(id=f"m{serial}", serial=serial, data=b"x")


async def serve(*gateways: ScriptedGateway) -> tuple[list[grpc.aio.Server], list[str]]:
    servers, addresses = [], []
    for gateway in gateways:
        server = grpc.aio.server()
        realtime_grpc.add_RealtimeServiceServicer_to_server(gateway, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    return servers, addresses


def run(scenario: Callable[[list[ScriptedGateway], list[str]], Awaitable[None]], count: int = 2) -> None:
    async def main() -> None:
        gateways = [ScriptedGateway() for _ in range(count)]
        servers, addresses = await serve(*gateways)
        try:
            await scenario(gateways, addresses)
        finally:
            for server in servers:
                await server.stop(0)

    asyncio.run(main())


def test_a_resumed_stream_that_replays_a_message_is_handed_on_once() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        first, second = gateways
        first.streams = [[message(1), message(2), unavailable("CHANNEL_MOVED", "moved")]]
        second.streams = [[message(2), message(3)]]  # replays serial 2
        async with ringcast.Client(addresses, backoff_s_min=0.01) as client:
            received = []
            async for item in client.subscribe("c", after=0):
                received.append(item.serial)
                if len(received) == 3:
                    break
            assert received == [1, 2, 3]
            assert client.stats.duplicates_dropped == 1 and client.stats.subscribe_resumes == 1
            # The soft failure (UNAVAILABLE with a reason) sent the resume to the other gateway,
            # from the last serial handed on.
            assert [request.after_serial for request in second.subscribe_requests] == [2]

    run(scenario)


def test_a_gap_the_platform_reports_raises_continuity_lost() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        gateways[0].streams = [[message(1), message_pb2.ContinuityLost(next_serial=40, reason="RETENTION_EXPIRED")]]
        async with ringcast.Client(addresses[:1]) as client:
            received = []
            with pytest.raises(ringcast.ContinuityLost) as lost:
                async for item in client.subscribe("c", after=0):
                    received.append(item.serial)
            assert received == [1]
            assert (lost.value.after_serial, lost.value.next_serial, lost.value.reason) == (1, 40, "RETENTION_EXPIRED")

    run(scenario, count=1)


def test_a_serial_that_skips_ahead_raises_rather_than_passing_a_gap_on() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        gateways[0].streams = [[message(1), message(3)]]
        async with ringcast.Client(addresses[:1]) as client:
            with pytest.raises(ringcast.ContinuityLost) as lost:
                async for _ in client.subscribe("c", after=0):
                    pass
            assert lost.value.reason == "SERIAL_GAP" and lost.value.next_serial == 3

    run(scenario, count=1)


def test_rewind_accepts_a_gap_at_its_start() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        gateways[0].serial = 50
        gateways[0].streams = [[message_pb2.ContinuityLost(next_serial=48, reason="RETENTION_EXPIRED"), message(48)]]
        async with ringcast.Client(addresses[:1]) as client:
            async for item in client.subscribe("c", rewind=10):
                assert item.serial == 48
                break
            assert gateways[0].subscribe_requests[0].after_serial == 40  # rewind pinned through GetChannel

    run(scenario, count=1)


def test_a_slow_gateway_is_demoted_and_the_other_takes_the_traffic() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        slow, fast = gateways
        slow.delay_s = 0.3
        health = ringcast.HealthPolicy(slow_latency_s=0.1)
        async with ringcast.Client(addresses, health=health) as client:
            for index in range(6):
                await client.publish("c", f"m{index}")
            assert len(slow.publishes) == 1 and len(fast.publishes) == 5
            status = client.endpoints()
            assert status[0].state is ringcast.EndpointState.DEMOTED and "slow" in status[0].last_reason

    run(scenario)


def test_invalid_argument_is_never_retried_and_unavailable_is_retried_until_the_deadline() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        for gateway in gateways:
            gateway.refuse = invalid("MESSAGE_TOO_LARGE", "too large")
        async with ringcast.Client(addresses) as client:
            with pytest.raises(ringcast.InvalidArgument):
                await client.publish("c", "x")
            assert sum(len(gateway.publishes) for gateway in gateways) == 1

        for gateway in gateways:
            gateway.refuse = unavailable("QUORUM_UNAVAILABLE", "no quorum")
        loop = asyncio.get_running_loop()
        async with ringcast.Client(addresses, timeout_s=1.0, backoff_s_max=0.2) as client:
            started = loop.time()
            with pytest.raises(ringcast.Unavailable) as failed:
                await client.publish("c", "x", id="kept")
            elapsed = loop.time() - started
            assert failed.value.reason == "QUORUM_UNAVAILABLE" and failed.value.ids == ["kept"]
            assert failed.value.attempts >= 3 and set(failed.value.endpoints) == set(addresses)
            assert elapsed < 1.5
            retried = [request.messages[0].id for gateway in gateways for request in gateway.publishes[1:]]
            assert set(retried) == {"kept"}  # every attempt carried the same id

    run(scenario)


def test_closing_the_client_ends_a_subscription_iterated_in_another_task() -> None:
    async def scenario(gateways: list[ScriptedGateway], addresses: list[str]) -> None:
        gateways[0].streams = [[message(1)]]
        client = ringcast.Client(addresses[:1])
        received: list[int] = []
        first = asyncio.Event()

        async def consume() -> None:
            async for item in client.subscribe("c", after=0):
                received.append(item.serial)
                first.set()

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 10)
        await client.close()  # while the consumer waits inside the subscription
        await asyncio.wait_for(consumer, 10)  # it ends, without an error
        assert received == [1]

    run(scenario, count=1)
