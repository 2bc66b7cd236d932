"""A channel node's links to its store replicas: requests coalesced per replica into batched RPCs
(a bounded number in flight), each with a deadline, and the replies fed back to the core one by one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc

from ringcast.pipe import call_error
from services.common import convert, metrics, tls, tracing
from services.common.batcher import Batcher
from services.common.clock import monotonic_ms
from services.common.server import CHANNEL_OPTIONS
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
    Effects,
    FenceRequest,
    ReadRequest,
    StoreRequest,
)
from services.internal.v1 import store_service_pb2 as store_pb2
from services.internal.v1 import store_service_pb2_grpc as store_grpc

if TYPE_CHECKING:
    from services.channel.node_adapter import ChannelNodeAdapter

log = logging.getLogger("ringcast.channel")

Request = TypeVar("Request", AppendRequest, FenceRequest, ReadRequest)
Reply = TypeVar("Reply", AppendReply, FenceReply, ReadReply)
Response = TypeVar("Response")

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


STATUS_BY_NAME = {
    "APPEND_STATUS_OK": AppendStatus.OK,
    "APPEND_STATUS_FENCED": AppendStatus.FENCED,
    "APPEND_STATUS_MISMATCH": AppendStatus.MISMATCH,
    "APPEND_STATUS_CORRUPT": AppendStatus.CORRUPT,
    "APPEND_STATUS_INVALID": AppendStatus.INVALID,
    "APPEND_STATUS_DATA_LOSS": AppendStatus.DATA_LOSS,
}


class StoreLink:
    """One store replica: a gRPC channel, and per-replica batchers for fences, appends and reads."""

    def __init__(self, zone: str, address: str, node: ChannelNodeAdapter) -> None:
        self.zone = zone
        self.address = address
        self.node = node
        self.channel = tls.dial(address, CHANNEL_OPTIONS)
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

        def fail() -> Effects:
            effects = Effects()
            for request in batch:
                effects.extend(self.node.core.on_store_error(self.zone, request, monotonic_ms()))
            return effects

        self.node.call(fail)

    async def _exchange(
        self,
        batch: list[Request],
        call: Callable[[], Awaitable[Response]],
        replies_of: Callable[[Response], list[Reply]],
        on_reply: Callable[[str, Request, Reply, int], Effects],
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

        def deliver() -> Effects:
            effects = Effects()
            for request, reply in zip(batch, replies, strict=True):
                effects.extend(on_reply(self.zone, request, reply, monotonic_ms()))
                if observe is not None:
                    observe(request, reply, commit)
            return effects

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
        traced = tracing.enabled()
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
                    trace_context=self.node.traces.context_for(request.channel, self.zone) if traced else None,
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
            self.node.store_clock.observe(self.zone, response.results[0].store_now_ms)
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
