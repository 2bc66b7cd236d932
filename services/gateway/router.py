"""Routing a call to a channel's owner: the ring, a link per owner, retries, relocation ahead of use.

`OwnerRouter` keeps the newest ring (WatchRing from placement), computes a channel's owner locally,
and calls it. When the owner answers NOT_OWNER, or the channel moved, or the owner cannot be reached,
it refreshes its ring and tries again — within the caller's deadline, with jittered, bounded backoff.
It also remembers the channels it routed lately (`RecentChannels`); when a new ring moves some of
them to another node, it asks that node to take them over at once (Prepare).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ringcast.pipe import PipeClient
from ringcast.reasons import Reason
from services.common import metrics, tls
from services.common.errors import (
    reason_of,
    refused,
    unavailable,
)
from services.common.ring_watch import RingView, RingWatcher
from services.common.server import CHANNEL_OPTIONS
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc
from services.internal.v1 import placement_service_pb2 as placement_pb2

log = logging.getLogger("ringcast.gateway")

T = TypeVar("T")

owner_call_timeout_s = 5.0
"""Deadline of one call to an owner (a retry gets a fresh one, within the request's)."""

pipe_linger_s = 0.002
"""How long a publish may wait at most to join others in one message to its owner, and only while
earlier publishes to that owner are unanswered (`ringcast.pipe`): never when the pipe is idle."""

retry_backoff_s_min = 0.02
retry_backoff_s_max = 0.5
recent_channels_max = 100_000
"""Channels a gateway remembers as in use, for Prepare after a ring change."""

recent_channel_s = 300.0
"""A channel not routed for this long is no longer in use (the nodes step down from it too)."""

prepare_call_channels_max = 1_000
"""Channels one Prepare call to a node names."""

prepare_timeout_s = 5.0

report_interval_s = 0.5
"""How often a gateway may report one owner address as refusing connections."""

reported_addresses_max = 1_024
"""Owner addresses whose last report a gateway remembers."""


def outcome_name(outcome: int) -> str:
    return str(placement_pb2.UnreachableOutcome.Name(outcome)).removeprefix("UNREACHABLE_OUTCOME_")


RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION}

FAIL_FAST_REASONS = {
    Reason.QUORUM_UNAVAILABLE,
    Reason.CURSOR_BEYOND_END,
    Reason.NOT_PRESENT,
    Reason.PRESENCE_DISABLED,
}
"""Not worth retrying here: the owner knows no quorum is reachable (retryable for the client), or the
answer would be the same at any owner (a cursor beyond the channel's end, a member not present,
presence off in the namespace)."""


class NoOwner(LookupError):
    pass


class ChannelMovedAway(Exception):
    """The ring gave the channel to another node while a call to its old owner was in flight."""


@dataclass(slots=True)
class _MoveWatch:
    """A call in flight to `owner`; `moved` once a ring named another owner and the call was cancelled."""

    owner: str
    moved: bool = False


class RecentChannels:
    """Channels routed lately, least recently used first, bounded in count and in age."""

    def __init__(self, entries_max: int = recent_channels_max, horizon_s: float = recent_channel_s) -> None:
        self.entries_max = entries_max
        self.horizon_s = horizon_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def touch(self, channel: str, now: float) -> None:
        self._seen[channel] = now
        self._seen.move_to_end(channel)
        if len(self._seen) > self.entries_max:
            self._seen.popitem(last=False)

    def in_use(self, now: float) -> list[str]:
        while self._seen and now - next(iter(self._seen.values())) > self.horizon_s:
            self._seen.popitem(last=False)
        return list(self._seen)


class OwnerLink:
    """One owner address: its gRPC channel and stub, and the PublishPipe stream that carries the
    publishes for all of its channels (`ringcast.pipe`: few messages under load, none waits for
    another)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = tls.dial(address, CHANNEL_OPTIONS)
        self.stub = channel_grpc.ChannelServiceStub(self.channel)
        self.pipe: PipeClient[channel_pb2.PublishRequest, channel_pb2.PublishResponse] = PipeClient(
            self.stub.PublishPipe,
            channel_pb2.PublishPipeRequest,
            channel_pb2.PipedPublish,
            name=address,
            linger_s=pipe_linger_s,
        )

    async def close(self) -> None:
        await self.pipe.close()
        await self.channel.close()


class OwnerRouter:
    """Channel → owner address under the newest ring, and one gRPC channel per owner address."""

    def __init__(self, watcher: RingWatcher) -> None:
        self.watcher = watcher
        self._links: dict[str, OwnerLink] = {}
        self.recent = RecentChannels()
        # The ring whose moves were last prepared in full: a prepare cut short by a newer ring is
        # covered by the next one, which compares against this ring rather than the one before it.
        self._prepared_view: RingView | None = None
        self._newest_version = 0
        self._preparing: asyncio.Task[None] | None = None
        self._reported: dict[str, float] = {}
        self._reports: set[asyncio.Task[None]] = set()
        self._watching: dict[str, dict[asyncio.Task[Any], _MoveWatch]] = {}  # channel → calls to its owner
        watcher.subscribe(self._on_ring)

    def _on_ring(self, view: RingView) -> None:
        if view.ring.version <= self._newest_version:
            return
        self._newest_version = view.ring.version
        metrics.ring_version.set(view.ring.version)
        self._cancel_moved(view)
        if self._prepared_view is None:
            self._prepared_view = view
            return
        if self._preparing is not None:
            self._preparing.cancel()  # a newer ring supersedes it
        self._preparing = asyncio.create_task(self._prepare_moved(self._prepared_view, view), name="prepare-moved")

    async def _prepare_moved(self, previous: RingView, view: RingView) -> None:
        """Ask each new owner to take over the channels in use that `view` moved to it."""
        loop = asyncio.get_running_loop()
        moved: dict[str, list[str]] = {}
        for index, channel in enumerate(self.recent.in_use(loop.time())):
            if index % 1_000 == 999:
                await asyncio.sleep(0)  # a large table must not stall the calls in flight
            owner = view.ring.owner(channel)
            if owner is not None and owner in view.members and owner != previous.ring.owner(channel):
                moved.setdefault(owner, []).append(channel)
        for owner, channels in moved.items():
            stub = self.stub(view.members[owner])
            queued = 0
            try:
                for start in range(0, len(channels), prepare_call_channels_max):
                    request = channel_pb2.PrepareRequest(channels=channels[start : start + prepare_call_channels_max])
                    queued += (await stub.Prepare(request, timeout=prepare_timeout_s)).queued
            except grpc.RpcError as error:  # the first request of each channel takes it over instead
                log.info("prepare at %s failed: %s", owner, reason_of(error))
            log.info(
                "ring %d moved %d channels in use to %s; it queued %d takeovers",
                view.ring.version,
                len(channels),
                owner,
                queued,
            )
        self._prepared_view = view

    def owner(self, channel: str) -> tuple[str, str]:
        view = self.watcher.ring
        if view is None:
            raise NoOwner(Reason.RING_UNKNOWN)
        owner = view.ring.owner(channel)
        if owner is None or owner not in view.members:
            raise NoOwner(Reason.NO_CHANNEL_NODES)
        return owner, view.members[owner]

    def report_refused(self, owner: str, address: str) -> None:
        """Nothing listens at `owner`'s address any more: have placement check and, if it agrees,
        move the owner's channels now instead of when its lease expires (one report per address
        per `report_interval_s` at most; placement answers concurrent ones with one check)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._reported.get(address, float("-inf")) < report_interval_s:
            return
        self._reported[address] = loop.time()
        if len(self._reported) > reported_addresses_max:
            self._reported.pop(next(iter(self._reported)))

        async def report() -> None:
            try:
                outcome = await self.watcher.report_unreachable(owner, address)
            except grpc.RpcError as error:
                log.info("reporting %s as unreachable failed: %s", owner, reason_of(error))
                return
            log.info("reported %s at %s as refusing connections: %s", owner, address, outcome_name(outcome))

        task = asyncio.create_task(report(), name=f"report-{owner}")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def readiness(self) -> str:
        """ "" when calls can be routed: a ring with channel nodes in it (services/common/probes.py)."""
        view = self.watcher.ring
        if view is None:
            return "no ring from placement yet"
        if not view.members:
            return f"ring version {view.version} has no channel nodes"
        return ""

    def link(self, address: str) -> OwnerLink:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = OwnerLink(address)
        return link

    def stub(self, address: str) -> channel_grpc.ChannelServiceStub:
        return self.link(address).stub

    async def close(self) -> None:
        if self._preparing is not None:
            self._preparing.cancel()
        for link in self._links.values():
            await link.close()

    def watch_move(self, channel: str, owner: str) -> tuple[asyncio.Event, Callable[[], None]]:
        """An event set once a ring names another owner than `owner` for `channel`, and the function
        that stops watching."""
        moved = asyncio.Event()

        def on_ring(view: RingView) -> None:
            if view.ring.owner(channel) != owner:
                moved.set()

        return moved, self.watcher.subscribe(on_ring)

    async def _unless_moved(self, channel: str, owner: str, call: Awaitable[T]) -> T:
        """Await `call`, but give up on it as soon as the ring names another owner for `channel`.

        An owner that is alive but stuck (paused, starved) would otherwise hold the caller until
        the call's own timeout, long after its channels were re-placed. Abandoning the call is safe:
        the retry carries the same message ids. The task awaiting is cancelled by `_on_ring` (as
        asyncio.timeout does): no extra task, no waiter per call.
        """
        task = asyncio.current_task()
        assert task is not None
        watch = _MoveWatch(owner)
        watching = self._watching.setdefault(channel, {})
        watching[task] = watch
        try:
            return await call
        except asyncio.CancelledError:
            if watch.moved and task.uncancel() == 0:  # cancelled by us, and by no one else
                raise ChannelMovedAway(channel) from None
            raise
        finally:
            del watching[task]
            if not watching:
                self._watching.pop(channel, None)

    def _cancel_moved(self, view: RingView) -> None:
        """Cancel the calls waiting on an owner that `view` no longer names for their channel."""
        for channel, watching in self._watching.items():
            owner = view.ring.owner(channel)
            for task, watch in watching.items():
                if owner != watch.owner and not watch.moved:
                    watch.moved = True
                    task.cancel()

    async def call(
        self,
        channel: str,
        deadline: float,
        attempt: Callable[[OwnerLink, float], Awaitable[T]],
    ) -> T:
        """Run `attempt` against the owner until it succeeds, fails for good, or `deadline` passes."""
        loop = asyncio.get_running_loop()
        self.recent.touch(channel, loop.time())
        backoff = retry_backoff_s_min
        last_reason = "UNAVAILABLE"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise unavailable(last_reason, f"no owner answered in time for channel {channel!r}: {last_reason}")
            try:
                owner, address = self.owner(channel)
                call = attempt(self.link(address), min(remaining, owner_call_timeout_s))
                return await self._unless_moved(channel, owner, call)
            except NoOwner as error:
                last_reason = str(error)
            except ChannelMovedAway:
                last_reason = Reason.CHANNEL_MOVED
            except grpc.RpcError as error:
                code = error.code()
                last_reason = reason_of(error)
                if code not in RETRYABLE or last_reason in FAIL_FAST_REASONS:
                    raise
                if refused(error):
                    self.report_refused(owner, address)
            except grpc.aio.UsageError:  # the link to the owner was closed under us: dial again
                last_reason = "OWNER_LINK_CLOSED"
                self._links.pop(address, None)
            await self.watcher.refresh()
            await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())) * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, retry_backoff_s_max)
