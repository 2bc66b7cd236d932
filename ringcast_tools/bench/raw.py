"""ringcast as a client in any language sees it: the generated stubs and nothing else.

`RawTarget` publishes one message per call, the way `buf curl`, grpcurl, the Node example and most
polyglot clients do: no client-side coalescing, no pipe, no retries (an error is counted, not
hidden). `mode` "unary" calls `RealtimeService.Publish`; "stream" keeps one `PublishStream` per
gateway open and pipelines every publish on it (answers come in request order). Publishers are
spread over the gateways by index, as a load balancer would.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import grpc

from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc

call_timeout_s = 30.0

Mode = Literal["unary", "stream"]


class PublishFailed(Exception):
    """A publish answered with an error (its gRPC status code name and reason)."""


class _Stream:
    """One PublishStream: a writer task sends requests in turn, a reader matches answers in order."""

    def __init__(self, stub: realtime_grpc.RealtimeServiceStub) -> None:
        self.call = stub.PublishStream()
        self.outbox: asyncio.Queue[tuple[realtime_pb2.PublishStreamRequest, asyncio.Future[None]]] = asyncio.Queue()
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.tasks = [asyncio.create_task(self._write()), asyncio.create_task(self._read())]

    async def publish(self, request: realtime_pb2.PublishStreamRequest) -> None:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.outbox.put_nowait((request, answer))
        await answer

    @property
    def broken(self) -> bool:
        return any(task.done() for task in self.tasks)

    async def _write(self) -> None:
        while True:
            request, answer = await self.outbox.get()
            self.waiting.append(answer)
            try:
                await self.call.write(request)
            except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
                self.call.cancel()  # the reader fails what waits; queued ones fail here
                while not self.outbox.empty():
                    self.outbox.get_nowait()[1].set_exception(PublishFailed(f"the stream broke: {error}"))
                return

    async def _read(self) -> None:
        try:
            async for response in self.call:
                answer = self.waiting.popleft()
                if response.HasField("error"):
                    answer.set_exception(PublishFailed(f"{response.error.code} {response.error.message}"))
                else:
                    answer.set_result(None)
        finally:
            for answer in self.waiting:
                if not answer.done():
                    answer.set_exception(PublishFailed("the stream ended"))

    async def close(self) -> None:
        self.call.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class RawTarget:
    """Plain generated stubs, one message per publish (see the module docstring)."""

    def __init__(self, gateways: list[str], mode: Mode, *, ca: bytes | None = None, token: str | None = None) -> None:
        self.mode = mode
        self.name = f"ringcast-raw-{mode}"
        self.channels = [
            grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca))
            if ca is not None
            else grpc.aio.insecure_channel(address)
            for address in gateways
        ]
        self.stubs = [realtime_grpc.RealtimeServiceStub(channel) for channel in self.channels]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._streams: dict[int, _Stream] = {}
        self._next = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]

    def _stub_index(self) -> int:
        return next(self._next) % len(self.stubs)

    def _message(self, data: bytes) -> message_pb2.Message:
        return message_pb2.Message(id=f"{self._prefix}-{next(self._next)}", data=data)

    async def publish(self, channel: str, data: bytes) -> None:
        index = self._stub_index()
        if self.mode == "unary":
            request = realtime_pb2.PublishRequest(channel=channel, messages=[self._message(data)])
            await self.stubs[index].Publish(request, timeout=call_timeout_s, metadata=self.metadata)
            return
        stream = self._streams.get(index)
        if stream is None or stream.broken:
            stream = self._streams[index] = _Stream(self.stubs[index])
        await stream.publish(realtime_pb2.PublishStreamRequest(channel=channel, messages=[self._message(data)]))

    async def publish_batch(self, channel: str, datas: list[bytes]) -> None:
        request = realtime_pb2.PublishRequest(channel=channel, messages=[self._message(data) for data in datas])
        await self.stubs[self._stub_index()].Publish(request, timeout=call_timeout_s, metadata=self.metadata)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        call = self.stubs[0].Subscribe(realtime_pb2.SubscribeRequest(channel=channel), metadata=self.metadata)
        try:
            async for response in call:  # one message per response (no batch_max), as a plain client asks
                if response.HasField("message"):
                    yield response.message.data
        finally:
            call.cancel()

    async def kill_busiest(self, channels: list[str]) -> str:
        raise NotImplementedError("the raw client is measured without faults")

    async def restore(self) -> None:
        return None

    async def close(self) -> None:
        for stream in self._streams.values():
            await stream.close()
        for channel in self.channels:
            await channel.close()
