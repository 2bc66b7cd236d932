"""A channel node: the roles it holds, the ring it believes, and the lease that lets it serve.

Rules:

1. A node serves a channel only while (a) its etcd lease is valid by its own clock — the deadline is
   the send time of the last acknowledged keep-alive plus the TTL, which is never later than the
   moment etcd expires the lease — and (b) the newest ring it has seen names it as the owner and is
   no older than the node's own registration: computed at the registration's etcd revision or
   later, and newer than every ring the node had seen when it registered. So it never acts on a
   ring from a previous life, nor on one from before etcd lost its data (revisions start again
   then, ring versions do not).
2. A role is created lazily on the first request for a channel the node owns, at epoch
   `ring version × EPOCH_ATTEMPTS_PER_VERSION + attempt`. Each takeover attempt gets a fresh epoch,
   so two attempts never write different entries under the same (serial, epoch), even when one of
   them failed half-way; and every ring version orders after every attempt of an earlier one.
3. On a ring that gives a channel to another node, on lease loss, and on FENCED, the role stops at
   once and is dropped; the next request (under a newer ring) starts a new takeover.
4. Requests for channels the node does not own are answered NOT_OWNER with the node's ring version,
   so the caller refreshes its ring and goes where the channel is.
5. Channels can be prepared: taken over ahead of their first request (gateways prepare the channels
   in use that a new ring moved here). Prepared takeovers wait in a bounded queue and run at most
   `takeovers_inflight_max` at a time; a channel dropped from the queue is taken over lazily.
6. A takeover that failed (fenced, timed out, unreadable), or a role that stepped down because it was
   fenced or stalled, makes the next attempt at that channel wait: `takeover_backoff_ms_min`, doubled
   with each failure in a row up to `takeover_backoff_ms_max`. Requests meanwhile are answered
   TAKEOVER_BACKOFF (retryable). So a channel that cannot be served costs a few attempts a second,
   not a loop, and the attempts of one ring version last for days, not minutes. A prepared takeover
   that failed is prepared again once its wait is over (nobody else would ask for it).

Like the role, the node is a pure core: adapters feed it requests, store replies, rings, lease
renewals and ticks, and carry out the `Effects` it returns.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ringcast.reasons import Reason
from services.core.entries import EPOCH_ATTEMPTS_PER_VERSION, Message, make_epoch
from services.core.replica_log import AppendReply, FenceReply, ReadReply
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    ChannelRole,
    Delivery,
    Effects,
    FenceRequest,
    HistoryAnswer,
    HistoryResult,
    PublishAnswer,
    PublishResult,
    ReadRequest,
    RoleConfig,
    RoleState,
    StoreRequest,
    SubscriberDelivery,
)


def _collected(step: Callable[[Effects], object]) -> Effects:
    """The effects one step of the node comes to (its roles' effects gathered, in order)."""
    effects = Effects()
    step(effects)
    return effects


@dataclass(frozen=True, slots=True)
class NodeStatus:
    serving: bool
    channels_serving: int
    channels_taking_over: int
    channels_prepared: int
    takeovers_done: int


@dataclass(slots=True)
class _Attempts:
    """One channel's takeover attempts under one ring version, and its failures in a row."""

    ring_version: int
    made: int = 0
    failures: int = 0
    retry_ms: int = 0  # no new attempt before this
    recorded: bool = True  # the last role's end was counted (failures only count once per role)


TAKEOVER_FAILURES = frozenset(
    {Reason.FENCED, Reason.TAKEOVER_TIMEOUT, Reason.RECOVERY_READ_FAILED, Reason.COMMIT_STALLED}
)
"""Why a role may stop that makes the next attempt at its channel wait (rule 6)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    roles_max: int = 100_000
    role_idle_ms: int = 300_000
    health_window_ms: int = 30_000
    """How far back stalled roles count against the node's health."""
    stalled_roles_max: int = 2
    """Roles that may stall within the window before the node calls itself unhealthy."""
    stall_records_max: int = 1_024
    idle_sweep_ms: int = 1_000
    """How long one pass over every role held takes (idleness, dedup expiry, commit notices): each
    tick looks at its share of them, so the cost of a tick stays bounded however many channels the
    node holds (ticks otherwise see only busy roles)."""
    takeovers_inflight_max: int = 1_024
    """Takeovers (fencing or recovering) at once before prepared channels wait for a slot."""
    prepared_channels_max: int = 100_000
    """Prepared channels waiting for a takeover slot; beyond that they are left to their first request."""
    stores_unreachable_ms: int = 4_000
    """How long serving channels may have no quorum of replicas within reach before the node says so."""
    takeover_backoff_ms_min: int = 50
    takeover_backoff_ms_max: int = 2_000
    """Wait before the next takeover attempt after failures in a row (doubling from the minimum)."""
    commit_notices_per_sweep_max: int = 500
    """Roles one pass of the sweep lets send commit notices (retention), so that thousands of channels
    gone quiet at once (a relocation) spread them over several passes instead of flooding the stores."""
    role: RoleConfig = RoleConfig()


@dataclass(slots=True)
class _Sweep:
    """Where the node's pass over every role it holds has got to (`ChannelNode._sweep_share`)."""

    channels: list[str] = field(default_factory=list)  # left to look at in this pass, popped from the end
    size: int = 0  # how many the pass began with
    started_ms: int | None = None
    notices: int = 0  # roles that sent commit notices in this pass

    def begin(self, channels: list[str], now_ms: int) -> None:
        channels.reverse()  # popped from the end: in the order the roles were made
        self.channels, self.size, self.started_ms, self.notices = channels, len(channels), now_ms, 0


class ChannelNode:
    def __init__(self, node_id: str, config: NodeConfig) -> None:
        self.node_id = node_id
        self.config = config
        self.ring: Ring | None = None
        self.lease_deadline_ms = 0
        self.registered_revision = 0
        self.registered_after_version = -1  # the newest ring version seen when we last registered
        self._registering_after = -1  # ... when the registration being written began
        self.newest_version = 0  # the newest ring version ever seen (what we tell etcd: our floor)
        self.wall_offset_ms = 0  # wall-clock time minus `now_ms`, for message timestamps
        self.roles: dict[str, ChannelRole] = {}
        self._stalls: deque[int] = deque(maxlen=config.stall_records_max)  # when roles stalled
        self._attempts: dict[str, _Attempts] = {}
        # Channels whose roles may have work that waits on time; a dict, for a deterministic order.
        self._busy: dict[str, None] = {}
        self._sweep = _Sweep()
        self._quorum_lost_ms: int | None = None  # since when a serving role has had no quorum in reach
        self._taking_over: dict[str, None] = {}  # channels whose roles are fencing or recovering
        self._prepared: dict[str, None] = {}  # channels to take over when a slot frees, in order
        self._retry_prepared: list[tuple[int, str]] = []  # heap: (when, channel) of failed prepared takeovers
        self.takeovers_done = 0

    # ----------------------------------------------------------------------------- inputs
    # Each returns the Effects it comes to (its roles' effects gathered, in order).

    def on_lease_lost(self) -> Effects:
        return _collected(lambda effects: self._on_lease_lost(effects))

    def on_ring(self, ring: Ring) -> Effects:
        return _collected(lambda effects: self._on_ring(ring, effects))

    def stop_all(self, reason: str) -> Effects:
        return _collected(lambda effects: self._stop_all(reason, effects))

    def prepare(self, channels: Sequence[str], now_ms: int) -> tuple[int, Effects]:
        """How many of `channels` were queued for takeover, and the effects of starting some."""
        effects = Effects()
        queued = self._prepare(channels, now_ms, effects)
        return queued, effects

    def publish(
        self, channel: str, token: int, messages: tuple[Message, ...], now_ms: int, *, send: bool = True
    ) -> Effects:
        """`send` False: the entries wait for `send(channels)`, so that publishes that arrive
        together go to the replicas in one append round (the tick sends them in any case)."""
        return _collected(lambda effects: self._publish(channel, token, messages, now_ms, effects, send))

    def send(self, channels: Iterable[str], now_ms: int) -> Effects:
        """Send the replicas of `channels` what publishes made with `send` False left waiting."""

        def send(effects: Effects) -> None:
            for channel in channels:
                role = self.roles.get(channel)
                if role is not None:
                    effects.extend(role.send(now_ms))

        return _collected(send)

    def subscribe(self, channel: str, token: int, after_serial: int, now_ms: int) -> Effects:
        return _collected(lambda effects: self._subscribe(channel, token, after_serial, now_ms, effects))

    def read_history(self, channel: str, token: int, after_serial: int, limit: int, now_ms: int) -> Effects:
        return _collected(lambda effects: self._read_history(channel, token, after_serial, limit, now_ms, effects))

    def on_fence_reply(self, replica: str, request: FenceRequest, reply: FenceReply, now_ms: int) -> Effects:
        return _collected(lambda effects: self._on_fence_reply(replica, request, reply, now_ms, effects))

    def on_append_reply(self, replica: str, request: AppendRequest, reply: AppendReply, now_ms: int) -> Effects:
        return _collected(lambda effects: self._on_append_reply(replica, request, reply, now_ms, effects))

    def on_read_reply(self, replica: str, request: ReadRequest, reply: ReadReply, now_ms: int) -> Effects:
        return _collected(lambda effects: self._on_read_reply(replica, request, reply, now_ms, effects))

    def on_store_error(self, replica: str, request: StoreRequest, now_ms: int) -> Effects:
        return _collected(lambda effects: self._on_store_error(replica, request, now_ms, effects))

    def tick(self, now_ms: int) -> Effects:
        return _collected(lambda effects: self._tick(now_ms, effects))

    # ----------------------------------------------------------------------------- membership

    def serving(self, now_ms: int) -> bool:
        ring = self.ring
        return (
            now_ms < self.lease_deadline_ms
            and ring is not None
            and ring.revision >= self.registered_revision
            and ring.version > self.registered_after_version
            and self.node_id in ring
        )

    def begin_registration(self) -> int:
        """A registration is about to be written: the newest ring version seen so far, which the
        registration carries as its floor (placement makes the rings after it newer)."""
        self._registering_after = self.newest_version
        return self.newest_version

    def on_registered(self, revision: int) -> None:
        """Our membership key was written at etcd `revision`: serve only under rings at least that new.

        A restarted node may still hear rings from before its restart, in which its previous
        incarnation owned the same channels; taking over under such a ring could reuse an epoch
        that incarnation already wrote with. Revisions go back when etcd loses its data; ring
        versions never do, so a ring must also be newer than every ring seen before the registration
        began (not before its answer came: the ring of its own revision may come first).
        """
        self.registered_revision = revision
        self.registered_after_version = self._registering_after

    def on_lease(self, deadline_ms: int) -> None:
        """A keep-alive was acknowledged: the lease holds until `deadline_ms` by our clock."""
        self.lease_deadline_ms = max(self.lease_deadline_ms, deadline_ms)

    def _on_lease_lost(self, effects: Effects) -> None:
        """The lease is gone (etcd said so, or we re-register): drop every channel at once."""
        self.lease_deadline_ms = 0
        self._stop_all(Reason.LEASE_LOST, effects)

    def _on_ring(self, ring: Ring, effects: Effects) -> None:
        """A newer ring: stop every role whose channel now belongs to someone else."""
        if self.ring is not None and ring.version <= self.ring.version:
            return
        self.ring = ring
        self.newest_version = max(self.newest_version, ring.version)
        for channel, role in list(self.roles.items()):
            if ring.owner(channel) != self.node_id:
                effects.extend(role.stop(Reason.CHANNEL_MOVED))
                self._forget(channel)
        effects.events.append(f"ring version={ring.version} members={len(ring)}")

    def _stop_all(self, reason: str, effects: Effects) -> None:
        """Step down from every channel at once (lease lost, shutting down, an invariant failed)."""
        for role in self.roles.values():
            effects.extend(role.stop(reason))
        self.roles.clear()
        self._busy.clear()
        self._taking_over.clear()
        self._prepared.clear()
        self._retry_prepared.clear()

    # ----------------------------------------------------------------------------- requests

    def _role_for(self, channel: str, now_ms: int, effects: Effects, trigger: str = "request") -> ChannelRole | str:
        """The serving (or starting) role for `channel`, or the reason there is none."""
        if not self.serving(now_ms):
            if self.roles:
                self._stop_all(Reason.LEASE_LOST, effects)
            return Reason.NOT_OWNER if self.ring is not None and self.node_id not in self.ring else Reason.LEASE_LOST
        assert self.ring is not None
        if self.ring.owner(channel) != self.node_id:
            return Reason.NOT_OWNER
        role = self.roles.get(channel)
        if role is not None and role.state is not RoleState.STOPPED:
            self._touch(role)
            return role
        if len(self.roles) >= self.config.roles_max:
            return Reason.OWNER_OVERLOADED
        attempts = self._attempts.get(channel)
        if attempts is None:
            attempts = self._attempts[channel] = _Attempts(self.ring.version)
        if now_ms < attempts.retry_ms:
            return Reason.TAKEOVER_BACKOFF
        if attempts.ring_version != self.ring.version:
            attempts.ring_version, attempts.made = self.ring.version, 0
        if attempts.made >= EPOCH_ATTEMPTS_PER_VERSION:
            return Reason.TAKEOVER_ATTEMPTS_EXHAUSTED
        role = ChannelRole(channel, make_epoch(attempts.ring_version, attempts.made), self.config.role, now_ms)
        attempts.made += 1
        attempts.recorded = False
        self.roles[channel] = role
        self._taking_over[channel] = None
        self._touch(role)
        effects.extend(role.start(trigger))
        return role

    def _prepare(self, channels: Sequence[str], now_ms: int, effects: Effects) -> int:
        """Queue takeovers of the channels we own and do not hold; answer how many were queued."""
        if not self.serving(now_ms):
            return 0
        assert self.ring is not None
        queued = 0
        for channel in channels:
            if len(self._prepared) >= self.config.prepared_channels_max:
                break
            if channel in self.roles or channel in self._prepared or self.ring.owner(channel) != self.node_id:
                continue
            self._prepared[channel] = None
            queued += 1
        self._start_prepared(now_ms, effects)
        return queued

    def _start_prepared(self, now_ms: int, effects: Effects) -> None:
        while self._retry_prepared and self._retry_prepared[0][0] <= now_ms:
            _, channel = heapq.heappop(self._retry_prepared)
            if channel not in self.roles and len(self._prepared) < self.config.prepared_channels_max:
                self._prepared[channel] = None
        while self._prepared and len(self._taking_over) < self.config.takeovers_inflight_max:
            channel = next(iter(self._prepared))
            del self._prepared[channel]
            if channel not in self.roles:
                self._role_for(channel, now_ms, effects, "prepare")  # not ours any more, or no lease: nothing starts

    def _publish(
        self, channel: str, token: int, messages: tuple[Message, ...], now_ms: int, effects: Effects, send: bool
    ) -> None:
        role = self._role_for(channel, now_ms, effects)
        if isinstance(role, str):
            effects.results.append(PublishAnswer(token, PublishResult(False, reason=role, retryable=True)))
            return
        effects.extend(role.publish(token, messages, now_ms, send=send))

    def _subscribe(self, channel: str, token: int, after_serial: int, now_ms: int, effects: Effects) -> None:
        role = self._role_for(channel, now_ms, effects)
        if isinstance(role, str):
            effects.deliveries.append(SubscriberDelivery(token, Delivery(end_reason=role)))
            return
        effects.extend(role.subscribe(token, after_serial, now_ms))

    def unsubscribe(self, channel: str, token: int) -> None:
        role = self.roles.get(channel)
        if role is not None:
            role.unsubscribe(token)

    def _read_history(
        self, channel: str, token: int, after_serial: int, limit: int, now_ms: int, effects: Effects
    ) -> None:
        role = self._role_for(channel, now_ms, effects)
        if isinstance(role, str):
            effects.histories.append(HistoryAnswer(token, HistoryResult(reason=role)))
            return
        effects.extend(role.read_history(token, after_serial, limit, now_ms))

    # ----------------------------------------------------------------------------- store replies

    def _touch(self, role: ChannelRole) -> None:
        """An event reaches `role`: tick it until it is quiet again."""
        role.wall_offset_ms = self.wall_offset_ms
        self._busy[role.channel] = None

    def _role_of(self, request: StoreRequest) -> ChannelRole | None:
        role = self.roles.get(request.channel)
        if role is None or role.epoch != request.epoch and not isinstance(request, FenceRequest):
            return None
        self._touch(role)
        return role

    def _on_fence_reply(
        self, replica: str, request: FenceRequest, reply: FenceReply, now_ms: int, effects: Effects
    ) -> None:
        role = self.roles.get(request.channel)
        if role is not None and request.epoch in (role.epoch, 0):
            self._touch(role)
            effects.extend(role.on_fence_reply(replica, reply, now_ms))
            self._drop_if_stopped(role, now_ms)

    def _on_append_reply(
        self, replica: str, request: AppendRequest, reply: AppendReply, now_ms: int, effects: Effects
    ) -> None:
        role = self._role_of(request)
        if role is not None:
            effects.extend(role.on_append_reply(replica, request, reply, now_ms))
            self._drop_if_stopped(role, now_ms)

    def _on_read_reply(
        self, replica: str, request: ReadRequest, reply: ReadReply, now_ms: int, effects: Effects
    ) -> None:
        role = self._role_of(request)
        if role is not None:
            effects.extend(role.on_read_reply(replica, request, reply, now_ms))
            self._drop_if_stopped(role, now_ms)

    def _on_store_error(self, replica: str, request: StoreRequest, now_ms: int, effects: Effects) -> None:
        role = self._role_of(request)
        if role is not None:
            effects.extend(role.on_store_error(replica, request, now_ms))
            self._drop_if_stopped(role, now_ms)

    def _drop_if_stopped(self, role: ChannelRole, now_ms: int) -> None:
        """After an event reached `role`: drop it if it stopped; note a takeover that ended."""
        if self.roles.get(role.channel) is not role:
            return
        if role.state is RoleState.STOPPED:
            self._record_end(role, now_ms)
            self._forget(role.channel)
        elif role.state is RoleState.SERVING and role.channel in self._taking_over:
            del self._taking_over[role.channel]
            self.takeovers_done += 1
            attempts = self._attempts.get(role.channel)
            if attempts is not None:
                attempts.failures = 0

    def _record_end(self, role: ChannelRole, now_ms: int) -> None:
        """A role stopped by itself: if it failed, the next attempt at its channel waits (rule 6)."""
        attempts = self._attempts.get(role.channel)
        if attempts is None or attempts.recorded or role.stop_reason not in TAKEOVER_FAILURES:
            return
        attempts.recorded = True
        attempts.failures += 1
        shift = min(attempts.failures - 1, 16)
        delay_ms = min(self.config.takeover_backoff_ms_max, self.config.takeover_backoff_ms_min << shift)
        attempts.retry_ms = now_ms + delay_ms
        if role.trigger == "prepare" and len(self._retry_prepared) < self.config.prepared_channels_max:
            heapq.heappush(self._retry_prepared, (attempts.retry_ms, role.channel))

    def _forget(self, channel: str) -> None:
        del self.roles[channel]
        self._busy.pop(channel, None)
        self._taking_over.pop(channel, None)

    def health(self, now_ms: int) -> str:
        """ "" when healthy; otherwise why this node should give its channels to others.

        Health is not binary: a node can be alive, hold its lease and still fail its channels
        (its links to the stores are slow, lossy or cut). When more than `stalled_roles_max` of its
        roles gave up with COMMIT_STALLED within `health_window_ms`, it answers COMMIT_STALLED; when
        its serving channels have had no quorum of replicas within reach for `stores_unreachable_ms`
        (their publishes fail fast, so nothing stalls), STORES_UNREACHABLE. The adapter then leaves
        the ring for a while, so the ring moves its channels to nodes that can serve them — unless
        the stores are down for everyone (then moving helps no one; the adapter knows from the
        ring). A node never leaves when it is the ring's only member: there would be no one to move to.
        """
        while self._stalls and now_ms - self._stalls[0] > self.config.health_window_ms:
            self._stalls.popleft()
        if self.ring is None or len(self.ring) < 2:
            return ""
        if len(self._stalls) > self.config.stalled_roles_max:
            return Reason.COMMIT_STALLED
        cut_off_since = self._quorum_lost_ms
        if cut_off_since is not None and now_ms - cut_off_since >= self.config.stores_unreachable_ms:
            return Reason.STORES_UNREACHABLE
        return ""

    # ----------------------------------------------------------------------------- time

    def status(self, now_ms: int) -> NodeStatus:
        taking_over = len(self._taking_over)
        return NodeStatus(
            self.serving(now_ms), len(self.roles) - taking_over, taking_over, len(self._prepared), self.takeovers_done
        )

    @property
    def busy_channels(self) -> int:
        """Roles a tick looks at: those with work that waits on time (the rest are quiet)."""
        return len(self._busy)

    def set_wall_offset(self, wall_offset_ms: int) -> None:
        """Wall-clock time is `now_ms + wall_offset_ms` (the adapter measures it; the core reads no clock).

        A role learns the offset when an event reaches it, so this costs nothing per role held.
        """
        self.wall_offset_ms = wall_offset_ms

    def _tick(self, now_ms: int, effects: Effects) -> None:
        """Time passes: tick the busy roles; once per `idle_sweep_ms`, look at every role held."""
        if self.roles and not self.serving(now_ms):
            self._stop_all(Reason.LEASE_LOST, effects)
            return
        quorum_lost = False
        for channel in list(self._busy):
            role = self.roles.get(channel)
            if role is None:
                del self._busy[channel]
                continue
            role.wall_offset_ms = self.wall_offset_ms
            effects.extend(role.tick(now_ms))
            quorum_lost = quorum_lost or role.quorum_lost
            if role.stop_reason == Reason.COMMIT_STALLED:
                self._stalls.append(now_ms)
            self._drop_if_stopped(role, now_ms)
            if role.quiet:
                self._busy.pop(channel, None)
        if not quorum_lost:
            self._quorum_lost_ms = None
        elif self._quorum_lost_ms is None:
            self._quorum_lost_ms = now_ms
        self._start_prepared(now_ms, effects)
        self._sweep_share(now_ms, effects)

    def _sweep_share(self, now_ms: int, effects: Effects) -> None:
        """Look at this tick's share of the roles held: one pass over all of them (as they were when
        it began) takes `idle_sweep_ms`, and the next pass begins when that much time has passed."""
        sweep, period_ms = self._sweep, self.config.idle_sweep_ms
        if not sweep.channels:
            if sweep.started_ms is not None and now_ms - sweep.started_ms < period_ms:
                return
            sweep.begin(list(self.roles), now_ms)
        assert sweep.started_ms is not None
        elapsed_ms = min(period_ms, now_ms - sweep.started_ms)
        due = -(-sweep.size * elapsed_ms // period_ms)  # rounded up; the pass's last tick takes the rest
        while sweep.channels and sweep.size - len(sweep.channels) < due:
            role = self.roles.get(sweep.channels.pop())
            if role is not None:
                self._sweep_one(role, now_ms, effects)
        if not sweep.channels and now_ms - sweep.started_ms >= period_ms:
            self._sweep_share(now_ms, effects)  # a late tick: the next pass is due already

    def _sweep_one(self, role: ChannelRole, now_ms: int, effects: Effects) -> None:
        """Step down from an idle channel; forget expired message ids; tell replicas the commit point
        that no append has told them (retention)."""
        quiet_ms = now_ms - role.last_activity_ms
        idle = not role.subscribers and not role.pending and quiet_ms > self.config.role_idle_ms
        if idle and role.commit >= role.last:
            effects.extend(role.stop(Reason.IDLE))
            self._forget(role.channel)
            return
        role.dedup.expire(now_ms)
        sweep = self._sweep
        if sweep.notices < self.config.commit_notices_per_sweep_max and role.commit_notice_owed(now_ms):
            notices = role.notify_commit(now_ms)
            effects.extend(notices)
            if notices.sends:
                sweep.notices += 1
                self._touch(role)
