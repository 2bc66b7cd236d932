"""Following the ring: `RingWatcher` keeps the newest ring from placement, for gateways and channel nodes.

Rules:

1. Versions only grow. A ring no newer than the one held is ignored, whether it came from the
   WatchRing stream or from `refresh()`, so every subscriber sees versions in increasing order.
2. One WatchRing stream at a time, to one placement address, asking only for rings newer than the
   one held. When the stream fails or ends, the watcher moves to the next address after a jittered
   delay that doubles up to a bound, and falls back to the first delay once a ring arrives.
3. `refresh()` (after a NOT_OWNER answer) asks GetRing of the current address, then of the others;
   concurrent refreshes share one round of calls, so a burst of NOT_OWNER answers costs one.
4. Subscribers are called on the event loop, synchronously, with each newer `RingView`; they must
   not block. A subscriber that raises is logged and keeps its subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from services.common import metrics, tls
from services.common.server import CHANNEL_OPTIONS
from services.core.ring import Ring
from services.internal.v1 import placement_service_pb2 as placement_pb2
from services.internal.v1 import placement_service_pb2_grpc as placement_grpc

log = logging.getLogger("ringcast.placement.client")

watch_retry_delay_s_min = 0.05
watch_retry_delay_s_max = 1.0
"""Delays between WatchRing attempts while placement is unreachable (before jitter)."""

get_ring_timeout_s = 2.0
"""Deadline of one GetRing call made by `refresh()`."""

report_timeout_s = 2.0
"""How long a ReportUnreachable call may take (placement dials the member itself)."""


@dataclass(frozen=True, slots=True)
class RingView:
    """One ring version as a client holds it: the hashing ring and where its members are."""

    version: int
    ring: Ring
    members: dict[str, str]
    """Channel node id → address."""
    stores: dict[str, str]
    """Zone → store address (the store with the smallest id, should a zone have two)."""

    @classmethod
    def from_message(cls, message: placement_pb2.Ring) -> RingView:
        members = {member.id: member.address for member in message.members}
        stores: dict[str, str] = {}
        for store in sorted(message.stores, key=lambda store: (store.zone, store.id)):
            stores.setdefault(store.zone, store.address)
        revision = int(message.revision) or None  # 0: from a placement that did not say (the version)
        return cls(int(message.version), Ring(int(message.version), list(members), revision=revision), members, stores)

    def owner(self, channel: str) -> tuple[str, str] | None:
        """(owner id, owner address) of `channel`, or None when the ring has no channel nodes."""
        owner = self.ring.owner(channel)
        if owner is None:
            return None
        return owner, self.members[owner]


class RingWatcher:
    """Keeps `.ring`, the newest `RingView` heard from any of `placement_addresses` (None before the first)."""

    def __init__(self, placement_addresses: Sequence[str]) -> None:
        addresses = [address.strip() for address in placement_addresses if address.strip()]
        if not addresses:
            raise ValueError("RingWatcher needs at least one placement address")
        self._addresses = addresses
        self._address_index = 0
        self._links: dict[str, tuple[grpc.aio.Channel, placement_grpc.PlacementServiceStub]] = {}
        self._view: RingView | None = None
        self._ready = asyncio.Event()
        self._subscribers: list[Callable[[RingView], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[RingView | None] | None = None

    @property
    def ring(self) -> RingView | None:
        return self._view

    @property
    def version(self) -> int:
        return self._view.version if self._view is not None else 0

    @property
    def address(self) -> str:
        """The placement address the watcher is (or will next be) watching."""
        return self._addresses[self._address_index]

    def start(self) -> asyncio.Task[None]:
        """Begin watching (once); the task that does it, which runs until `stop()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch_forever(), name="ring-watcher")
        return self._task

    async def stop(self) -> None:
        for task in (self._task, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        self._refreshing = None
        links, self._links = self._links, {}
        for link, _ in links.values():
            await link.close()

    async def wait_ready(self, timeout_s: float) -> RingView:
        """The first ring; TimeoutError if none arrives within `timeout_s`."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)
        assert self._view is not None  # _ready is set only together with _view.
        return self._view

    def subscribe(self, callback: Callable[[RingView], None]) -> Callable[[], None]:
        """Call `callback` with every newer ring (and now, with the current one, if there is one).
        Returns a function that unsubscribes."""
        self._subscribers.append(callback)
        if self._view is not None:
            self._notify(callback, self._view)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def refresh(self) -> RingView | None:
        """Ask placement for its newest ring now; the ring held afterwards (never an older one)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_once(), name="ring-refresh")
        # Shielded: one caller giving up must not cancel the refresh the others are waiting for.
        return await asyncio.shield(self._refreshing)

    async def report_unreachable(self, member_id: str, address: str) -> int:
        """Tell placement that connecting to channel node `member_id` at `address` was refused; its
        outcome (an UnreachableOutcome). Placement checks for itself before it removes anything."""
        request = placement_pb2.ReportUnreachableRequest(member_id=member_id, address=address)
        response = await self._stub(self.address).ReportUnreachable(request, timeout=report_timeout_s)
        return int(response.outcome)

    # ----------------------------------------------------------------------------- internals

    def _stub(self, address: str) -> placement_grpc.PlacementServiceStub:
        link = self._links.get(address)
        if link is None:
            channel = tls.dial(address, CHANNEL_OPTIONS)
            link = self._links[address] = (channel, placement_grpc.PlacementServiceStub(channel))
        return link[1]

    def _apply(self, message: placement_pb2.Ring) -> bool:
        """Hold `message` if it is newer than the ring held; True when it was."""
        if message.version <= self.version:
            return False
        view = RingView.from_message(message)
        self._view = view
        self._ready.set()
        log.info("ring version=%d members=%d stores=%d", view.version, len(view.members), len(view.stores))
        metrics.ring_members.labels("channel").set(len(view.members))
        metrics.ring_members.labels("store").set(len(view.stores))
        for callback in list(self._subscribers):
            self._notify(callback, view)
        return True

    @staticmethod
    def _notify(callback: Callable[[RingView], None], view: RingView) -> None:
        try:
            callback(view)
        except Exception:
            log.exception("ring subscriber %r failed on version %d", callback, view.version)

    async def _watch_forever(self) -> None:
        delay_s = watch_retry_delay_s_min
        while True:
            address = self.address
            try:
                stream = self._stub(address).WatchRing(placement_pb2.WatchRingRequest(known_version=self.version))
                async for message in stream:
                    self._apply(message)
                    delay_s = watch_retry_delay_s_min
                log.info("ring stream from %s ended", address)
            except grpc.aio.AioRpcError as error:
                log.info("ring stream from %s failed: %s %s", address, error.code().name, error.details())
            self._address_index = (self._address_index + 1) % len(self._addresses)
            await asyncio.sleep(delay_s * random.uniform(0.5, 1.0))
            delay_s = min(delay_s * 2, watch_retry_delay_s_max)

    async def _refresh_once(self) -> RingView | None:
        # The address being watched first: it is the one most likely up.
        start = self._address_index
        for offset in range(len(self._addresses)):
            address = self._addresses[(start + offset) % len(self._addresses)]
            try:
                message = await self._stub(address).GetRing(placement_pb2.GetRingRequest(), timeout=get_ring_timeout_s)
            except grpc.aio.AioRpcError as error:
                log.info("GetRing from %s failed: %s %s", address, error.code().name, error.details())
                continue
            self._apply(message)
            break
        return self._view
