"""A subscription that survives the failure of anything between it and the channel.

It always knows the serial of the last message it handed to the application, and after any
failure (its gateway killed, paused or partitioned; the stream cut for a slow reader or cancelled by
a gateway; the channel's owner failing over behind the gateway) it subscribes again, on the
healthiest gateway, from just after that serial. It hands on each serial exactly once and in
order: a serial at or below the last one is dropped (counted in `ClientStats.duplicates_dropped`),
and a serial past the next one, or the platform's explicit ContinuityLost, raises `ContinuityLost`
rather than skipping silently.

The start is pinned before the first stream: `latest` and `rewind` become an `after` serial through
GetChannel, so a resume before the first message neither loses nor repeats anything. A `rewind`
asks for "the last N that are still retained", so a gap at its very start is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from types import TracebackType

import grpc

from ringcast._errors import ContinuityLost
from ringcast._streams import resumed
from ringcast._transport import Gateway, Stub, Transport
from ringcast._types import ClientStats, Message
from ringcast.reasons import Reason
from ringcast.v1 import realtime_service_pb2 as realtime_pb2

subscribe_batch_messages_max = 256
"""Messages the gateway may put in one response of a subscription (what it caps batches at too)."""


class Subscription:
    """`async for message in subscription` yields the channel's messages in serial order, once each.

    Also an async context manager; `await close()` ends it. `last_serial` is the serial of the last
    message handed on (the point a new subscription would resume from); `resumes` counts recoveries.
    """

    def __init__(
        self,
        transport: Transport,
        stats: ClientStats,
        channel: str,
        *,
        after: int | None,
        rewind: int | None,
        resume_timeout_s: float,
        start_timeout_s: float,
    ) -> None:
        self.channel = channel
        self.transport = transport
        self.stats = stats
        self.resume_timeout_s = resume_timeout_s
        self.start_timeout_s = start_timeout_s
        self._after = after
        self._rewind = rewind
        self.last_serial: int | None = after
        self.resumes = 0
        self._messages = self._run()
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._closed = False
        self._waiting = 0

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        self._waiting += 1
        try:
            return await self._messages.__anext__()
        finally:
            self._waiting -= 1

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """End the subscription; an `async for` over it (in this task or another) simply ends."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        if not self._waiting:  # a task waiting inside the subscription sees it end on its own
            await self._messages.aclose()

    async def _start_serial(self) -> int:
        if self._after is not None:
            return self._after

        async def last_serial(gateway: Gateway, timeout: float) -> int:
            request = realtime_pb2.GetChannelRequest(channel=self.channel)
            channel: realtime_pb2.GetChannelResponse = await gateway.stub.GetChannel(
                request, timeout=timeout, metadata=self.transport.metadata()
            )
            return int(channel.last_serial)

        loop = asyncio.get_running_loop()
        last = await self.transport.call(
            last_serial, loop.time() + self.start_timeout_s, what=f"subscribe to {self.channel!r}"
        )
        return max(0, last - self._rewind) if self._rewind is not None else last

    async def _run(self) -> AsyncGenerator[Message, None]:
        last = await self._start_serial()
        self.last_serial = last
        gap_accepted = self._rewind is not None  # until the first message: "the last N still retained"

        def open_call(stub: Stub) -> grpc.aio.UnaryStreamCall:
            request = realtime_pb2.SubscribeRequest(
                channel=self.channel, after_serial=last, batch_max=subscribe_batch_messages_max
            )
            return stub.Subscribe(request, metadata=self.transport.metadata())

        def set_call(call: grpc.aio.UnaryStreamCall | None) -> None:
            self._call = call

        def resumed_once() -> None:
            self.resumes += 1
            self.stats.subscribe_resumes += 1

        responses = resumed(
            self.transport,
            open_call,
            what=f"subscription to {self.channel!r}",
            resume_timeout_s=self.resume_timeout_s,
            closed=lambda: self._closed,
            on_call=set_call,
            on_resume=resumed_once,
            hint=lambda: f"; resume with after={self.last_serial}",
        )
        async with contextlib.aclosing(responses):
            async for response in responses:
                if response.WhichOneof("item") == "gap":
                    if not gap_accepted:
                        raise ContinuityLost(self.channel, last, response.gap.next_serial, response.gap.reason)
                    last = self.last_serial = response.gap.next_serial - 1
                    continue
                batch = response.messages if response.messages else (response.message,)
                for message in batch:
                    serial = message.serial
                    if serial <= last:
                        self.stats.duplicates_dropped += 1
                        continue
                    if serial != last + 1:
                        raise ContinuityLost(self.channel, last, serial, Reason.SERIAL_GAP)
                    last = self.last_serial = serial
                    gap_accepted = False
                    yield Message.from_proto(self.channel, message)
