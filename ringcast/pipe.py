"""Many concurrent publishes over one bidirectional gRPC stream (the PublishPipe RPCs).

A public module of the SDK: any client of `RealtimeService.PublishPipe` may use it, and gateways
do (for `ChannelService.PublishPipe`), which is why it is not private to the SDK.

In Python gRPC one call costs far more than one message in a call, so a busy caller should make few
calls. A `PipeClient` keeps one stream to one peer open and multiplexes every publish onto it: each
publish gets a tag; publishes made in the same turn of the event loop, or while the previous write
was on its way, go together in the next request message (the writer yields once before it takes
them, so calls that arrived together make one message); and the peer answers each tag as soon as
that publish finishes, grouping whatever finished meanwhile into one response message. No publish
waits for another (a slow channel delays nobody), and under light load a publish is written at once.

`linger_s` (a gateway's pipe to an owner sets it): while publishes written earlier are unanswered,
the writer waits for one of their answers, or `linger_s` at most, before it writes again, so that
the publishes arriving meanwhile go in one message. A server's concurrent unary calls arrive one per
turn of its event loop; without this they would each be a message of their own, and in Python
gRPC a message costs about as much CPU as the publish it carries. When nothing is unanswered (an
idle pipe, sequential calls) a publish never waits.

Failure is per stream: when the stream breaks (the peer died, a connection was refused, the
channel closed) every publish still waiting on it fails with that error, a `grpc.aio.AioRpcError`
just like a failed unary call, so callers keep their retry logic; the next publish opens a new
stream. Bounds: at most `window_max` publishes waiting per pipe (callers beyond wait for room), at
most `per_message_max` publishes and about `bytes_max` bytes per request message.

Used by the SDK (client → gateway) and by gateways (gateway → channel owner). The messages of both
RPCs have the same shape: a request with `publishes` (each `tag`, `publish`, `timeout_ms`,
`trace_context`), a response with `results` (each `tag`, and `response` or `error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import message
from google.rpc import status_pb2

Payload = TypeVar("Payload", bound=message.Message)
Answer = TypeVar("Answer")

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


def call_error(code: grpc.StatusCode, details: str, status: status_pb2.Status | None = None) -> grpc.aio.AioRpcError:
    """A failed publish as a failed unary call would look: code, details, and the rich status in
    the trailers, so `error_info` / `reason_of` read its reason the usual way."""
    trailing = grpc.aio.Metadata()
    if status is not None:
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def status_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    return call_error(_STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, status)


@dataclass(slots=True, eq=False)
class _Waiting:
    tag: int
    payload: Any
    timeout_ms: int
    trace_context: Mapping[str, str]
    size: int
    written: bool = False


class PipeClient(Generic[Payload, Answer]):
    """Publishes to one peer over one PublishPipe stream at a time (see the module docstring)."""

    def __init__(
        self,
        open_stream: Callable[[], Any],
        request_type: Any,
        item_type: Any,
        *,
        name: str,
        window_max: int = 4_096,
        per_message_max: int = 256,
        bytes_max: int = 4 * 1024 * 1024,
        linger_s: float = 0.0,
    ) -> None:
        self.open_stream = open_stream
        self.request_type = request_type
        self.item_type = item_type
        self.name = name
        self.per_message_max = per_message_max
        self.bytes_max = bytes_max
        self.linger_s = linger_s
        self._unanswered = 0  # publishes written on the current stream and not yet answered
        self._answered = asyncio.Event()
        self._room = asyncio.Semaphore(window_max)
        self._tags = itertools.count(1)
        self._stream: Any = None
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._outbox: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.streams_opened = 0
        self.messages_sent = 0

    async def publish(self, payload: Payload, timeout: float, trace_context: Mapping[str, str] | None = None) -> Answer:
        """The peer's answer to `payload`, or its error raised as a grpc.aio.AioRpcError
        (DEADLINE_EXCEEDED when nothing came within `timeout`)."""
        if self.closed:
            raise grpc.aio.UsageError(f"the pipe to {self.name} is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if self._room.locked():
                await asyncio.wait_for(self._room.acquire(), timeout)
            else:
                await self._room.acquire()  # immediate: no task, no timer
        except TimeoutError:
            raise call_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no room on the pipe to {self.name}") from None
        try:
            tag = next(self._tags)
            answer: asyncio.Future[Any] = loop.create_future()
            self._answers[tag] = answer
            remaining = max(0.001, deadline - loop.time())
            waiting = _Waiting(tag, payload, max(1, int(remaining * 1000)), trace_context or {}, payload.ByteSize())
            self._outbox.append(waiting)
            timer = loop.call_at(deadline, self._time_out, answer)  # lighter than asyncio.timeout
            try:
                self._ensure_stream()
                self._wake.set()
                result = await answer
            finally:
                timer.cancel()
                self._answers.pop(tag, None)
                if not waiting.written and waiting in self._outbox:  # given up before it was written
                    self._outbox.remove(waiting)
        finally:
            self._room.release()
        if isinstance(result, grpc.RpcError):
            raise result
        return result  # type: ignore[no-any-return]

    def _time_out(self, answer: asyncio.Future[Any]) -> None:
        if not answer.done():
            answer.set_result(call_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer from {self.name} in time"))

    def _ensure_stream(self) -> None:
        if self._stream is not None:
            return
        stream = self._stream = self.open_stream()
        self.streams_opened += 1
        for work in (self._write(stream), self._read(stream)):
            task = asyncio.create_task(work, name=f"pipe-{self.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        count, total = 0, 0
        for waiting in self._outbox[: self.per_message_max]:
            total += waiting.size
            if total > self.bytes_max and count:
                break
            count += 1
        taken = self._outbox[:count]
        del self._outbox[:count]
        for waiting in taken:
            waiting.written = True
        return taken

    async def _write(self, stream: Any) -> None:
        try:
            while self._stream is stream:
                if not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await asyncio.sleep(0)  # one turn: the publishes already on their way here join this message
                if self.linger_s and self._unanswered:
                    # Others are on their way to the peer: wait for one of their answers (or linger_s)
                    # before writing, so that what arrives meanwhile goes in the same message.
                    self._answered.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.linger_s):
                            await self._answered.wait()
                if self._stream is not stream or not self._outbox:
                    continue
                items = [
                    self.item_type(
                        tag=waiting.tag,
                        publish=waiting.payload,
                        timeout_ms=waiting.timeout_ms,
                        trace_context=waiting.trace_context,
                    )
                    for waiting in self._take()
                ]
                self.messages_sent += 1
                self._unanswered += len(items)
                await stream.write(self.request_type(publishes=items))
        except grpc.RpcError as error:
            self._broken(stream, error)
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            # The stream has already finished: the reader gets its real status (TOKEN_EXPIRED, say)
            # and fails every waiting publish with it, rather than with "RPC already finished".
            pass

    async def _read(self, stream: Any) -> None:
        try:
            while True:
                response = await stream.read()
                if response is grpc.aio.EOF:
                    raise call_error(grpc.StatusCode.UNAVAILABLE, f"{self.name} ended the pipe")
                self._unanswered = max(0, self._unanswered - len(response.results))
                self._answered.set()
                for result in response.results:
                    answer = self._answers.get(result.tag)
                    if answer is None or answer.done():
                        continue  # given up on meanwhile
                    answer.set_result(status_error(result.error) if result.HasField("error") else result.response)
        except (grpc.RpcError, grpc.aio.UsageError) as error:
            self._broken(stream, error)

    def _broken(self, stream: Any, error: Exception) -> None:
        """Fail every publish waiting on `stream`; the next publish opens a new one."""
        if self._stream is not stream:
            return
        self._stream = None
        self._unanswered = 0
        stream.cancel()
        self._wake.set()  # let the writer see it is done
        failure = (
            error
            if isinstance(error, grpc.RpcError)
            else call_error(grpc.StatusCode.UNAVAILABLE, f"pipe to {self.name}: {error}")
        )
        self._outbox.clear()
        for answer in self._answers.values():
            if not answer.done():
                answer.set_result(failure)

    async def close(self) -> None:
        self.closed = True
        if self._stream is not None:
            self._broken(self._stream, call_error(grpc.StatusCode.CANCELLED, "pipe closed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
