"""Coalescing publisher: many small concurrent publishes to a channel become few Publish RPCs.

Per channel there is a queue of *parts* (one per `publish` call, or per chunk of a `publish_many`)
and at most one batch in flight; whatever arrives while a batch is in flight rides the next one, and
publishes made in the same event-loop turn leave together. The first part of a batch may also wait
up to `linger_s` for company (Kafka's linger.ms); the default is 0, because one batch in flight
already coalesces under load and a lone publish should not wait. A batch holds at
most `batch_messages_max` messages and `batch_bytes_max` bytes (the platform's limits), so the
platform never refuses a batch for its size.

One batch in flight per channel keeps the channel's order: a part acknowledged before another was
queued has the lower serial, even across retries and failovers. The platform makes a batch atomic,
so when it refuses a coalesced batch as a whole (INVALID_ARGUMENT), the parts are sent again one at a
time and only the bad part fails: one caller's bad message never fails another caller's publish.

Everything queued is bounded: at most `pending_messages_max` messages and `pending_bytes_max` bytes
wait in the client; a publish beyond that waits for room (back-pressure), within its deadline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from ringcast._errors import ClientClosed, InvalidArgument, RingcastError, Unavailable
from ringcast._transport import Gateway, Transport, trace_metadata
from ringcast._types import ClientStats
from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2

deadline_grace_s = 0.5
"""How long past its deadline a publish waits for its batch's own verdict."""


@dataclass(slots=True)
class _Part:
    messages: list[message_pb2.Message]
    size_bytes: int
    deadline: float
    queued_at: float
    future: asyncio.Future[list[int]]


@dataclass(slots=True)
class _ChannelQueue:
    parts: deque[_Part] = field(default_factory=deque)
    sender: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class BatchLimits:
    linger_s: float = 0.0
    batch_messages_max: int = 100
    batch_bytes_max: int = 1024 * 1024
    pending_messages_max: int = 100_000
    pending_bytes_max: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.linger_s < 0 or self.batch_messages_max < 1 or self.batch_bytes_max < 1:
            raise ValueError("linger_s >= 0, batch_messages_max >= 1 and batch_bytes_max >= 1 are needed")
        if self.pending_messages_max < self.batch_messages_max or self.pending_bytes_max < self.batch_bytes_max:
            raise ValueError("the pending bounds must hold at least one full batch")


def chunks(messages: list[message_pb2.Message], limits: BatchLimits) -> list[list[message_pb2.Message]]:
    """Consecutive runs of `messages` that each fit in one batch (an oversized message goes alone)."""
    runs: list[list[message_pb2.Message]] = []
    size = 0
    for message in messages:
        message_size = message.ByteSize()
        if not runs or len(runs[-1]) >= limits.batch_messages_max or size + message_size > limits.batch_bytes_max:
            runs.append([])
            size = 0
        runs[-1].append(message)
        size += message_size
    return runs


class Publisher:
    def __init__(self, transport: Transport, stats: ClientStats, limits: BatchLimits) -> None:
        self.transport = transport
        self.stats = stats
        self.limits = limits
        self._queues: dict[str, _ChannelQueue] = {}
        self._pending_messages = 0
        self._pending_bytes = 0
        self._room = asyncio.Condition()
        self._room_waiters = 0  # publishes waiting for room (only they need the condition)
        self._idle = asyncio.Event()
        self._idle.set()

    async def publish(self, channel: str, messages: list[message_pb2.Message], deadline: float) -> list[int]:
        """Serials of `messages`, in order, once they are committed (coalesced with other publishes)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[list[int]]] = []
        for run in chunks(messages, self.limits):
            size = sum(message.ByteSize() for message in run)
            await self._reserve(len(run), size, deadline, run)
            part = _Part(run, size, deadline, loop.time(), loop.create_future())
            part.future.add_done_callback(_retrieve)  # a caller that gave up leaves no warning behind
            queue = self._queues.setdefault(channel, _ChannelQueue())
            queue.parts.append(part)
            if queue.sender is None:
                queue.sender = asyncio.create_task(self._drain(channel, queue), name=f"ringcast-publish-{channel}")
            futures.append(part.future)
        serials: list[int] = []
        for future in futures:
            # A batch of this part alone ends by `deadline` with the transport's own verdict (what was
            # tried, the last reason); the grace lets that verdict arrive. A batch shared with
            # later deadlines may go on longer: then this caller stops waiting on its own.
            remaining = deadline + deadline_grace_s - loop.time()
            try:
                # The future is this part's own: a caller that gives up cancels it, not the batch.
                async with asyncio.timeout(max(remaining, 0.0)):
                    serials.extend(await future)
            except TimeoutError:
                raise Unavailable(
                    f"publish to {channel!r}: not acknowledged before the deadline; it may still be stored",
                    reason=Reason.DEADLINE_EXCEEDED,
                    attempts=0,
                    endpoints=[],
                    ids=[message.id for message in messages],
                ) from None
        return serials

    async def flush(self) -> None:
        """Wait until nothing is queued or in flight."""
        await self._idle.wait()

    def fail_all(self, error: RingcastError) -> None:
        for queue in self._queues.values():
            if queue.sender is not None:
                queue.sender.cancel()
            for part in queue.parts:
                if not part.future.done():
                    part.future.set_exception(error)
            queue.parts.clear()

    async def _reserve(self, count: int, size: int, deadline: float, run: list[message_pb2.Message]) -> None:
        def room() -> bool:
            if self.transport.closed:
                return True
            nothing_pending = self._pending_messages == 0
            fits = (
                self._pending_messages + count <= self.limits.pending_messages_max
                and self._pending_bytes + size <= self.limits.pending_bytes_max
            )
            return nothing_pending or fits

        if room() and not self._room_waiters:  # the common case: no lock, no timer, no task
            if self.transport.closed:
                raise ClientClosed()
            self._pending_messages += count
            self._pending_bytes += size
            self._idle.clear()
            return
        async with self._room:
            remaining = deadline - asyncio.get_running_loop().time()
            self._room_waiters += 1
            try:
                await asyncio.wait_for(self._room.wait_for(room), max(remaining, 0.0))
            except TimeoutError:
                raise Unavailable(
                    "publish: the client's queue stayed full until the deadline (the platform is slower than you)",
                    reason=Reason.CLIENT_QUEUE_FULL,
                    attempts=0,
                    endpoints=[],
                    ids=[message.id for message in run],
                ) from None
            finally:
                self._room_waiters -= 1
            if self.transport.closed:
                raise ClientClosed()
            self._pending_messages += count
            self._pending_bytes += size
            self._idle.clear()

    async def _release(self, parts: list[_Part]) -> None:
        self._pending_messages -= sum(len(part.messages) for part in parts)
        self._pending_bytes -= sum(part.size_bytes for part in parts)
        if self._pending_messages == 0:
            self._idle.set()
        if self._room_waiters:
            async with self._room:
                self._room.notify_all()

    def _take(self, queue: _ChannelQueue) -> list[_Part]:
        batch = [queue.parts.popleft()]
        count, size = len(batch[0].messages), batch[0].size_bytes
        while queue.parts:
            following = queue.parts[0]
            if count + len(following.messages) > self.limits.batch_messages_max:
                break
            if size + following.size_bytes > self.limits.batch_bytes_max:
                break
            batch.append(queue.parts.popleft())
            count, size = count + len(following.messages), size + following.size_bytes
        return batch

    def _full(self, queue: _ChannelQueue) -> bool:
        return sum(len(part.messages) for part in queue.parts) >= self.limits.batch_messages_max

    async def _drain(self, channel: str, queue: _ChannelQueue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.parts:
                wait = queue.parts[0].queued_at + self.limits.linger_s - loop.time()
                if wait > 0 and not self._full(queue):
                    await asyncio.sleep(wait)
                batch = self._take(queue)
                try:
                    await self._send(channel, batch)
                finally:
                    await self._release(batch)
        finally:
            queue.sender = None
            if not queue.parts and self._queues.get(channel) is queue:
                del self._queues[channel]

    async def _send(self, channel: str, batch: list[_Part]) -> None:
        messages = [message for part in batch for message in part.messages]
        request = realtime_pb2.PublishRequest(channel=channel, messages=messages)
        trace_context = dict(trace_metadata())

        async def invoke(gateway: Gateway, timeout: float) -> realtime_pb2.PublishResponse:
            self.stats.publish_rpcs += 1
            return await gateway.pipe.publish(request, timeout, trace_context)

        try:
            response = await self.transport.call(
                invoke,
                max(part.deadline for part in batch),
                what=f"publish to {channel!r}",
                ids=[message.id for message in messages],
            )
        except InvalidArgument as error:
            if len(batch) == 1:
                _settle(batch, error)
                return
            self.stats.batches_split += 1
            for part in batch:  # in order, one at a time: only the bad part fails
                await self._send(channel, [part])
            return
        except RingcastError as error:
            _settle(batch, error)
            return
        except asyncio.CancelledError:
            _settle(batch, ClientClosed())
            raise
        if len(response.serials) != len(messages):
            _settle(batch, RingcastError(f"{len(response.serials)} serials for {len(messages)} messages"))
            return
        self.stats.messages_published += len(messages)
        offset = 0
        for part in batch:
            serials = [int(serial) for serial in response.serials[offset : offset + len(part.messages)]]
            offset += len(part.messages)
            if not part.future.done():
                part.future.set_result(serials)


def _settle(batch: list[_Part], error: RingcastError) -> None:
    for part in batch:
        if not part.future.done():
            part.future.set_exception(error)


def _retrieve(future: asyncio.Future[list[int]]) -> None:
    if not future.cancelled():
        future.exception()
