"""PublishPipe streams (ringcast.pipe / services.common.pipe) between a real client and server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from ringcast.pipe import PipeClient
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common.errors import invalid, reason_of
from services.common.pipe import serve_pipe

Handler = Callable[[realtime_pb2.PublishRequest], Awaitable[realtime_pb2.PublishResponse]]


class PipeServer(realtime_grpc.RealtimeServiceServicer):  # type: ignore[misc]
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.messages = 0

    async def PublishPipe(  # noqa: N802
        self, requests: AsyncIterator[realtime_pb2.PublishPipeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[realtime_pb2.PublishPipeResponse]:
        async def counted() -> AsyncIterator[realtime_pb2.PublishPipeRequest]:
            async for request in requests:
                self.messages += 1
                yield request

        async def handle(item: realtime_pb2.PipedPublish) -> realtime_pb2.PublishResponse:
            return await self.handler(item.publish)

        async for response in serve_pipe(
            context, counted(), handle, realtime_pb2.PublishPipeResponse, realtime_pb2.PipedPublishResult
        ):
            yield response


async def echo(request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
    serial = int(request.messages[0].id)
    return realtime_pb2.PublishResponse(channel=request.channel, serials=[serial], duplicates=[False])


def publish_request(channel: str, serial: int) -> realtime_pb2.PublishRequest:
    return realtime_pb2.PublishRequest(channel=channel, messages=[{"id": str(serial), "data": b"x"}])


def run(handler: Handler, scenario: Callable[[PipeServer, grpc.aio.Server, str], Awaitable[None]]) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        servicer = PipeServer(handler)
        realtime_grpc.add_RealtimeServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await scenario(servicer, server, f"127.0.0.1:{port}")
        finally:
            await server.stop(0)

    asyncio.run(main())


def client(
    address: str, linger_s: float = 0.0
) -> tuple[grpc.aio.Channel, PipeClient[realtime_pb2.PublishRequest, realtime_pb2.PublishResponse]]:
    channel = grpc.aio.insecure_channel(address)
    stub = realtime_grpc.RealtimeServiceStub(channel)
    pipe: PipeClient[realtime_pb2.PublishRequest, realtime_pb2.PublishResponse] = PipeClient(
        stub.PublishPipe, realtime_pb2.PublishPipeRequest, realtime_pb2.PipedPublish, name=address, linger_s=linger_s
    )
    return channel, pipe


def test_concurrent_publishes_share_few_messages_and_each_gets_its_own_answer() -> None:
    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        channel, pipe = client(address)
        responses = await asyncio.gather(*(pipe.publish(publish_request(f"c{n % 7}", n), 5.0) for n in range(1, 1_001)))
        assert [list(response.serials) for response in responses] == [[n] for n in range(1, 1_001)]
        assert [response.channel for response in responses] == [f"c{n % 7}" for n in range(1, 1_001)]
        print(f"1,000 publishes in {pipe.messages_sent} request messages")
        assert pipe.messages_sent <= 20  # 256 per message at most: 4 when all are queued at once
        assert servicer.messages == pipe.messages_sent
        assert pipe.streams_opened == 1
        await pipe.close()
        await channel.close()

    run(echo, scenario)


def test_with_a_linger_publishes_arriving_one_by_one_while_others_are_unanswered_share_messages() -> None:
    """A server's concurrent unary calls reach its pipe one per turn of the event loop. With
    `linger_s`, those made while earlier ones are unanswered wait for an answer and go together;
    without it each is a message of its own. On an idle pipe nothing waits, however long the linger."""
    answer = asyncio.Event()

    async def handler(request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        await answer.wait()
        return await echo(request)

    async def one_by_one(linger_s: float, address: str) -> int:
        answer.clear()
        channel, pipe = client(address, linger_s)
        calls = []
        for n in range(1, 101):
            calls.append(asyncio.ensure_future(pipe.publish(publish_request("c", n), 5.0)))
            await asyncio.sleep(0.005)  # arrivals spaced out: the writer has written the last one
        answer.set()
        assert [(await call).serials[0] for call in calls] == list(range(1, 101))
        sent = pipe.messages_sent
        await pipe.close()
        await channel.close()
        return sent

    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        assert await one_by_one(0.0, address) >= 30
        assert await one_by_one(30.0, address) <= 3
        channel, pipe = client(address, linger_s=30.0)
        for n in range(1, 4):  # sequential publishes on an idle pipe: written at once, well within 5 s
            assert list((await pipe.publish(publish_request("c", n), 5.0)).serials) == [n]
        await pipe.close()
        await channel.close()

    run(handler, scenario)


def test_a_slow_publish_delays_no_other() -> None:
    release = asyncio.Event()

    async def handler(request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        if request.channel == "slow":
            await release.wait()
        return await echo(request)

    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        channel, pipe = client(address)
        slow = asyncio.ensure_future(pipe.publish(publish_request("slow", 1), 5.0))
        fast = await asyncio.wait_for(
            asyncio.gather(*(pipe.publish(publish_request("fast", n), 5.0) for n in range(2, 50))), 2.0
        )
        assert [response.serials[0] for response in fast] == list(range(2, 50))
        assert not slow.done()
        release.set()
        assert list((await slow).serials) == [1]
        await pipe.close()
        await channel.close()

    run(handler, scenario)


def test_a_failed_publish_carries_its_reason_and_the_others_succeed() -> None:
    async def handler(request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        if request.channel == "bad":
            raise invalid("CHANNEL_INVALID", "no such channel here", channel=request.channel)
        return await echo(request)

    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        channel, pipe = client(address)
        outcomes = await asyncio.gather(
            pipe.publish(publish_request("good", 1), 5.0),
            pipe.publish(publish_request("bad", 2), 5.0),
            pipe.publish(publish_request("good", 3), 5.0),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], realtime_pb2.PublishResponse) and list(outcomes[0].serials) == [1]
        assert isinstance(outcomes[2], realtime_pb2.PublishResponse) and list(outcomes[2].serials) == [3]
        error = outcomes[1]
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(error) == "CHANNEL_INVALID"
        assert error.details() == "no such channel here"
        await pipe.close()
        await channel.close()

    run(handler, scenario)


def test_no_answer_in_time_is_deadline_exceeded_and_a_late_answer_is_dropped() -> None:
    release = asyncio.Event()

    async def handler(request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        if request.channel == "late":
            await release.wait()
        return await echo(request)

    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        channel, pipe = client(address)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await pipe.publish(publish_request("late", 1), 0.2)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        assert list((await pipe.publish(publish_request("on-time", 2), 5.0)).serials) == [2]
        assert pipe.streams_opened == 1  # the stream outlived the timeout
        await pipe.close()
        await channel.close()

    run(handler, scenario)


def test_a_broken_stream_fails_what_waits_on_it_and_the_next_publish_opens_another() -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def handler(request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        if request.channel == "stuck":
            started.set()
            await never.wait()
        return await echo(request)

    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        channel, pipe = client(address)
        stuck = asyncio.ensure_future(pipe.publish(publish_request("stuck", 1), 10.0))
        await started.wait()
        await server.stop(0)  # every open stream ends
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(stuck, 5.0)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

        again = grpc.aio.server()
        realtime_grpc.add_RealtimeServiceServicer_to_server(PipeServer(echo), again)
        again.add_insecure_port(address)
        await again.start()
        try:
            assert list((await pipe.publish(publish_request("next", 2), 5.0)).serials) == [2]
            assert pipe.streams_opened == 2
        finally:
            await pipe.close()
            await channel.close()
            await again.stop(0)

    run(handler, scenario)


def test_a_request_with_too_many_publishes_ends_the_stream_with_the_reason() -> None:
    async def scenario(servicer: PipeServer, server: grpc.aio.Server, address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stream = realtime_grpc.RealtimeServiceStub(channel).PublishPipe()
            items = [
                realtime_pb2.PipedPublish(tag=n, publish=publish_request("c", n), timeout_ms=1_000) for n in range(257)
            ]
            await stream.write(realtime_pb2.PublishPipeRequest(publishes=items))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in stream:
                    pass
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(raised.value) == "TOO_MANY_PUBLISHES"

    run(echo, scenario)
