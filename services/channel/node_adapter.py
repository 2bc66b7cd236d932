"""The channel node process: the `ChannelNode` core behind `ChannelService`, talking to stores and etcd.

The adapter owns every piece of I/O the core asks for and nothing else:
- it feeds the core requests (from gateways), store replies, rings (from placement), lease news
  (from etcd) and ticks, always with `now_ms` from the monotonic clock;
- it carries out the `Effects` the core returns: store requests (appends coalesced per replica into
  one batched RPC, a bounded number in flight), publish results, deliveries, history pages.
Every internal RPC has a deadline. A core invariant failing stops every role this node holds (the
channels are re-taken, with fresh epochs, on the next request) rather than serving on from state
it cannot trust.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ringcast.reasons import Reason
from services.channel.store_links import StoreLink
from services.channel.tracing import PublishTraces, TakeoverTraces
from services.common import convert, metrics, tracing
from services.common.clock import PeerClock, clock_skew_ms_max, monotonic_ms
from services.common.ring_watch import RingView
from services.core.entries import Entry, Message
from services.core.invariants import InvariantViolation
from services.core.node import ChannelNode, NodeConfig
from services.core.quorum import quorum_size
from services.core.role import (
    Delivery,
    Effects,
    HistoryResult,
    PublishResult,
    RoleConfig,
    RoleState,
)
from services.internal.v1 import store_service_pb2 as store_pb2

log = logging.getLogger("ringcast.channel")


subscription_heartbeat_s = 1.0
"""A subscription stream with nothing to deliver gets an empty response this often: the gateway
leaves an owner that sends nothing for longer (services/gateway/feed.py)."""


subscriber_queue_deliveries_max = 1_024
"""Deliveries queued for one subscription; a subscriber further behind is cut off (it resumes)."""


clock_check_interval_s = 5.0
"""How often the node compares its wall clock with the stores' (services/common/clock.py)."""


tick_interval_s = 0.05
"""How often the core is told that time passed (retransmissions, timeouts, lease checks)."""


event_loop_lag_s_max = 1.0
"""A tick this late means the process is starved (CPU, swap, GC): counted against its health."""


lagging_ticks_max = 3
"""Consecutive late ticks after which the node calls itself unhealthy (EVENT_LOOP_LAG)."""


event_loop_lag_s_warn = 0.25
"""A tick this late is logged (at most once a second): what a lease lapse or a slow takeover follows."""


entry_protos_max = 8_192
"""Entries kept in their wire form for the replicas still to be sent them (oldest dropped first)."""


def _time_out(future: asyncio.Future[PublishResult]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


@dataclass(slots=True)
class _Subscription:
    queue: asyncio.Queue[Delivery]
    channel: str


class ChannelNodeAdapter:
    """Runs a `ChannelNode` core on the event loop."""

    def __init__(
        self,
        node_id: str,
        stores: dict[str, str],
        config: NodeConfig | None = None,
        bugs: frozenset[str] = frozenset(),
    ) -> None:
        zones = tuple(sorted(stores))
        self.config = config or NodeConfig(role=RoleConfig(replicas=zones, bugs=bugs))
        self.core = ChannelNode(node_id, self.config)
        self.node_id = node_id
        self.links = {zone: StoreLink(zone, address, self) for zone, address in stores.items()}
        self.tokens = itertools.count(1)
        self.publishes: dict[int, asyncio.Future[PublishResult]] = {}
        self.histories: dict[int, asyncio.Future[HistoryResult]] = {}
        self.subscriptions: dict[int, _Subscription] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._lagging_ticks = 0
        self._lag_warned = 0.0  # when a lagging tick was last logged (at most once a second)
        self.stores_registered = 0
        self.store_clock = PeerClock("stores")  # the stores' wall clocks, from their append replies
        self.closing = False
        self.traces = PublishTraces()
        self.takeover_traces = TakeoverTraces()
        self._entry_protos: dict[tuple[str, int, int], store_pb2.LogEntry] = {}
        self._unsent: set[str] = set()  # channels with entries of this loop turn's publishes to send
        self._send_scheduled = False
        for state in ("serving", "taking_over", "prepared"):
            metrics.channels.labels(state).set_function(functools.partial(self._channels, state))
        # Called with a reason when this node should leave the ring for a while (see health()).
        self.on_unhealthy: Callable[[str], None] = lambda reason: None

    # ----------------------------------------------------------------------------- plumbing

    def entry_proto(self, channel: str, entry: Entry) -> store_pb2.LogEntry:
        """`entry` as sent to the replicas, made once for all of them (every replica gets each entry)."""
        key = (channel, entry.serial, entry.epoch)
        proto = self._entry_protos.get(key)
        if proto is None or proto.checksum != entry.checksum:
            proto = self._entry_protos[key] = convert.entry_to_proto(entry)
            if len(self._entry_protos) > entry_protos_max:
                del self._entry_protos[next(iter(self._entry_protos))]
        return proto

    def call(self, step: Callable[[], Effects]) -> None:
        """Run one step of the core and carry out the effects it returns."""
        try:
            effects = step()
        except InvariantViolation:
            log.exception("invariant violated: dropping every channel of this node")
            effects = self.core.stop_all(Reason.INTERNAL)
        self.apply(effects)

    def apply(self, effects: Effects) -> None:
        for zone, request in effects.sends:
            link = self.links.get(zone)
            if link is not None:
                link.send(request)
        for token, result in effects.results:
            if tracing.enabled():
                self.traces.on_result(token, result)
            future = self.publishes.pop(token, None)
            if future is not None and not future.done():
                future.set_result(result)
        for token, history in effects.histories:
            waiting = self.histories.pop(token, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(history)
        for token, delivery in effects.deliveries:
            subscription = self.subscriptions.get(token)
            if subscription is None:
                continue
            if subscription.queue.qsize() >= subscriber_queue_deliveries_max - 1 and not delivery.end_reason:
                delivery = Delivery(end_reason=Reason.SUBSCRIBER_TOO_SLOW)
                self.core.unsubscribe(subscription.channel, token)
                metrics.subscribers_dropped.inc()
            elif delivery.entries:
                metrics.deliveries.inc(len(delivery.entries))
            subscription.queue.put_nowait(delivery)
            if delivery.end_reason:
                self.subscriptions.pop(token, None)
        for event in effects.events:
            log.info("%s", event)
        for channel, zone, kind, detail in effects.replica_faults:
            metrics.replica_faults.labels(zone, kind).inc()
            log.warning("replica %s of %s: %s (%s)", zone, channel, kind, detail)
        for channel, epoch, step, details in effects.takeovers:
            self._count_takeover(step, details)
            if tracing.enabled():
                self.takeover_traces.on_step(channel, epoch, step, details)
        for stale in effects.stale:
            metrics.stale_inputs.labels(stale.input).inc()

    def wall_now_ms(self) -> int:
        """Wall-clock time, for message timestamps: ours, unless it is further from the stores'
        (their median, from append replies) than the skew allowed — then theirs, so that one node's
        bad clock does not stamp messages that retention would misjudge (services/common/clock.py)."""
        ours = int(time.time() * 1000)
        theirs = self.store_clock.now_ms()
        return theirs if theirs is not None and abs(ours - theirs) > clock_skew_ms_max else ours

    async def start(self) -> asyncio.Task[None]:
        """Start ticking the core; the task that does it, which runs until shutdown."""
        self.core.set_wall_offset(self.wall_now_ms() - monotonic_ms())
        self._ticker = asyncio.create_task(self._tick_forever(), name="channel-ticker")
        return self._ticker

    def readiness(self) -> str:
        """ "" when this node may serve channels: a valid lease under a ring that names it, no older
        than its registration (services/common/probes.py); otherwise which of those is missing."""
        core, now_ms = self.core, monotonic_ms()
        if core.serving(now_ms):
            return ""
        if now_ms >= core.lease_deadline_ms:
            return "no valid etcd lease (registering)"
        if core.ring is None:
            return "no ring from placement yet"
        if self.node_id not in core.ring:
            return f"not in ring version {core.ring.version} (joining, or left it while unhealthy)"
        return f"waiting for a ring newer than its registration (has version {core.ring.version})"

    def begin_shutdown(self) -> None:
        """Step down from every channel and take no new work; links stay open for the grace period."""
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        self.call(lambda: self.core.stop_all(Reason.SHUTTING_DOWN))

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()

    async def _tick_forever(self) -> None:
        clock_checked = time.monotonic()
        while True:
            if time.monotonic() - clock_checked >= clock_check_interval_s:
                clock_checked = time.monotonic()
                self.store_clock.check()
            self.core.set_wall_offset(self.wall_now_ms() - monotonic_ms())
            before = time.monotonic()
            await asyncio.sleep(tick_interval_s)
            late_s = time.monotonic() - before - tick_interval_s
            self._lagging_ticks = self._lagging_ticks + 1 if late_s > event_loop_lag_s_max else 0
            if late_s > event_loop_lag_s_warn and time.monotonic() - self._lag_warned >= 1.0:
                self._lag_warned = time.monotonic()
                log.warning("event loop lagging: a tick came %.2f s late", late_s)
            self.call(lambda: self.core.tick(monotonic_ms()))
            reason = self.core.health(monotonic_ms())
            if reason == Reason.STORES_UNREACHABLE and self.stores_registered < quorum_size(len(self.links)):
                reason = ""  # the stores are down for everyone, not only for us: moving helps no one
            if not reason and self._lagging_ticks >= lagging_ticks_max:
                reason = "EVENT_LOOP_LAG"
            if reason:
                self._lagging_ticks = 0
                self.on_unhealthy(reason)

    # ----------------------------------------------------------------------------- membership

    def on_registered(self, revision: int) -> None:
        self.core.on_registered(revision)
        log.info("registered at revision %d", revision)

    def on_lease(self, deadline_monotonic_s: float) -> None:
        self.core.on_lease(int(deadline_monotonic_s * 1000))

    def on_lost(self) -> None:
        log.warning("etcd lease lost: dropping every channel")
        self.call(self.core.on_lease_lost)

    def on_ring(self, view: RingView) -> None:
        self.stores_registered = len(view.stores)  # store replicas alive (their etcd leases) as the ring says
        self.call(lambda: self.core.on_ring(view.ring))
        metrics.ring_version.set(self.ring_version)

    def _channels(self, state: str) -> float:
        status = self.core.status(monotonic_ms())
        return float(
            {
                "serving": status.channels_serving,
                "taking_over": status.channels_taking_over,
                "prepared": status.channels_prepared,
            }[state]
        )

    @staticmethod
    def _count_takeover(step: str, details: dict[str, int | str]) -> None:
        if step in ("serving", "failed"):
            metrics.takeovers.labels(str(details.get("trigger", "request")), step).inc()
        if step == "serving":
            metrics.takeover_seconds.observe(int(details.get("duration_ms", 0)) / 1000)

    @property
    def ring_version(self) -> int:
        return self.core.ring.version if self.core.ring is not None else 0

    # ----------------------------------------------------------------------------- requests

    async def publish(self, channel: str, messages: tuple[Message, ...], timeout_s: float) -> PublishResult:
        """Publish `messages` to `channel`; TimeoutError when no answer came within `timeout_s`.

        The entries go to the replicas one event-loop turn later (`_send_soon`), together with those
        of every other publish made in the same turn: under load, one append round per replica
        carries many publishes (group commit, with no wait when nothing else is queued)."""
        return await self.submit(channel, messages, timeout_s)

    def submit(self, channel: str, messages: tuple[Message, ...], timeout_s: float) -> asyncio.Future[PublishResult]:
        """`publish`, begun now: the messages get their serials before this returns (so publishes
        submitted one after another are ordered as submitted); the future answers (TimeoutError
        after `timeout_s`; cancelling it abandons the wait, not the publish)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PublishResult] = loop.create_future()
        if self.closing:
            future.set_result(PublishResult(False, reason=Reason.SHUTTING_DOWN, retryable=True))
            return future
        token = next(self.tokens)
        self.publishes[token] = future
        self.call(lambda: self.core.publish(channel, token, messages, monotonic_ms(), send=False))
        self._send_soon(loop, channel)
        if tracing.enabled():
            role = self.core.roles.get(channel)
            serving = role is not None and role.state is RoleState.SERVING and not future.done()
            self.traces.begin(channel, token, role.last if serving and role else None, sorted(self.links))
        timer = loop.call_later(timeout_s, _time_out, future)  # lighter than wait_for: no task, no waiter

        def answered(done: asyncio.Future[PublishResult]) -> None:
            timer.cancel()
            self.publishes.pop(token, None)
            if tracing.enabled():
                ok = not done.cancelled() and done.exception() is None and done.result().ok
                self.traces.end(channel, token, "not awaited" if ok else "no answer")

        future.add_done_callback(answered)
        return future

    def _send_soon(self, loop: asyncio.AbstractEventLoop, channel: str) -> None:
        """Have the core send `channel`'s new entries at the next turn of the event loop, with those
        of every publish made before then."""
        self._unsent.add(channel)
        if not self._send_scheduled:
            self._send_scheduled = True
            loop.call_soon(self._send_unsent)

    def _send_unsent(self) -> None:
        channels, self._unsent, self._send_scheduled = self._unsent, set(), False
        self.call(lambda: self.core.send(channels, monotonic_ms()))

    async def history(self, channel: str, after_serial: int, limit: int, timeout_s: float) -> HistoryResult:
        if self.closing:
            return HistoryResult(reason=Reason.SHUTTING_DOWN)
        token = next(self.tokens)
        future: asyncio.Future[HistoryResult] = asyncio.get_running_loop().create_future()
        self.histories[token] = future
        self.call(lambda: self.core.read_history(channel, token, after_serial, limit, monotonic_ms()))
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self.histories.pop(token, None)

    async def subscribe(self, channel: str, after_serial: int) -> AsyncIterator[Delivery]:
        if self.closing:
            yield Delivery(end_reason=Reason.SHUTTING_DOWN)
            return
        token = next(self.tokens)
        queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.subscriptions[token] = _Subscription(queue, channel)
        self.call(lambda: self.core.subscribe(channel, token, after_serial, monotonic_ms()))
        try:
            while True:
                try:
                    delivery = await asyncio.wait_for(queue.get(), subscription_heartbeat_s)
                except TimeoutError:
                    yield Delivery()  # a heartbeat: nothing new, and this owner is alive and serving
                    continue
                yield delivery
                if delivery.end_reason:
                    return
        finally:
            self.subscriptions.pop(token, None)
            self.core.unsubscribe(channel, token)

    def prepare(self, channels: list[str]) -> int:
        if self.closing:
            return 0
        queued = 0

        def prepare() -> Effects:
            nonlocal queued
            queued, effects = self.core.prepare(channels, monotonic_ms())
            return effects

        self.call(prepare)
        return queued

    def channel_state(self, channel: str) -> tuple[int, int]:
        """(epoch, last committed serial) of the channel's role here, or (0, 0)."""
        role = self.core.roles.get(channel)
        if role is None or role.state is not RoleState.SERVING:
            return 0, 0
        return role.epoch, role.commit
