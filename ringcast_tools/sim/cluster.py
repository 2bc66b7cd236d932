"""A seeded, deterministic simulation of a whole ringcast cluster in one process.

Everything runs on a logical clock from one `random.Random(seed)`: channel nodes (the real
`ChannelNode` core), three store replicas (the real `ReplicaLog` rules over the in-memory engine,
with a model of fsync: a replica that crashes loses whatever it had not synced, and it answers
nothing before syncing; in some seeds they also trim by a retention drawn from the seed), an etcd
stand-in (leases, membership, ring versions), publishers and subscribers. Messages between them
cross a simulated network that drops, delays, duplicates, reorders and partitions. A fault schedule
drawn from the seed crashes, pauses and restarts nodes and replicas, cuts links, changes membership,
and damages replicas at rest (an entry of one replica goes missing or corrupt, while the other two
hold it intact); then everything heals and settles, and the history is judged by `services.core.checker`.

Same seed, same run, bit for bit: the run never iterates an unordered set, never reads a clock and
never draws randomness from anywhere but its own generator. `SimResult.digest` fingerprints every
event the run processed, so two runs can be compared.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from services.core.checker import ContinuityLost, History, Outcome, PublishOp, SubscriberRecord, Violation, check
from services.core.entries import Entry, Message
from services.core.invariants import InvariantViolation
from services.core.node import ChannelNode, NodeConfig
from services.core.quorum import most_up_to_date
from services.core.replica_log import MemoryLogStorage, ReplicaLog, Retention
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    Delivery,
    Effects,
    FenceRequest,
    PublishResult,
    RoleConfig,
    StoreRequest,
)

STORES = ("store-a", "store-b", "store-c")
ETCD = "etcd"


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The shape of one run, drawn from its seed."""

    nodes: int
    channels: int
    publishers: int
    subscribers: int
    drop_probability: float
    duplicate_probability: float
    delay_max_ms: int
    spike_probability: float
    fault_gap_ms: tuple[int, int]
    watch_lag_ms: int
    load_ms: int = 2_500
    settle_ms: int = 2_500
    lease_ttl_ms: int = 300
    keepalive_ms: int = 75
    tick_ms: int = 10
    fsync_ms: int = 2
    publish_timeout_ms: int = 250
    subscriber_idle_ms: int = 400
    nodes_max: int = 6
    retention: Retention | None = None
    """None: stores keep everything. Otherwise they trim every `trim_every_ms`, and a publisher gives
    an operation up `keep_recent_ms - retry_slack_ms` after invoking it, so that its last attempt is
    handled (network delay, a takeover queue) while its first copy's id is still retained: the premise
    of exactly-once, as the SDK's retry deadline is far below the stores' keep_recent (120 s)."""
    retry_slack_ms: int = 1_000
    trim_every_ms: int = 50
    scrub_every_ms: int = 200
    steps_max: int = 1_000_000
    """Events one run may take (a run takes tens of thousands): beyond, it is a livelock — some
    exchange retrying without a pause — and the seed fails instead of running on for hours."""

    @classmethod
    def draw(cls, rng: random.Random) -> SimConfig:
        quiet = rng.random() < 0.2
        retention = rng.choice((None, None, (8, 1_500), (30, 2_000)))
        return cls(
            retention=None
            if retention is None
            else Retention(age_ms=2 * retention[1], entries_max=retention[0], keep_recent_ms=retention[1]),
            nodes=rng.randint(2, 4),
            channels=rng.randint(1, 3),
            publishers=rng.randint(3, 8),
            subscribers=rng.randint(1, 3),
            drop_probability=0.0 if quiet else rng.choice((0.0, 0.01, 0.05, 0.1)),
            duplicate_probability=0.0 if quiet else rng.choice((0.0, 0.02, 0.05)),
            delay_max_ms=rng.choice((2, 5, 10, 30)),
            spike_probability=rng.choice((0.0, 0.01, 0.05)),
            fault_gap_ms=rng.choice(((20, 80), (40, 150), (80, 250))),
            watch_lag_ms=rng.choice((0, 50, 200)),
        )


def role_config(bugs: frozenset[str]) -> RoleConfig:
    """Small bounds and short timeouts, so that every path (backfill, retransmit) is exercised."""
    return RoleConfig(
        replicas=STORES,
        dedup_window_ms=60_000,
        tail_entries_max=24,
        read_entries_max=16,
        recovery_full_entries_max=12,
        recovery_ids_per_read=10,
        append_entries_max=8,
        append_inflight_max=3,
        append_timeout_ms=120,
        takeover_timeout_ms=500,
        commit_stall_ms=2_000,
        read_timeout_ms=150,
        pending_entries_max=400,
        queued_publishes_max=200,
        delivery_entries_max=8,
        bugs=bugs,
    )


@dataclass(slots=True)
class SimResult:
    seed: int
    violations: list[Violation]
    digest: str
    stats: dict[str, int] = field(default_factory=dict)


class Network:
    """Links with delay, loss, duplication and reordering; partitions cut links both ways."""

    def __init__(self, sim: Simulation, config: SimConfig) -> None:
        self.sim = sim
        self.config = config
        self.cut: dict[tuple[str, str], int] = {}  # (a, b) sorted → number of partitions cutting it
        self.drop_probability = config.drop_probability

    def connected(self, a: str, b: str) -> bool:
        return (a, b) not in self.cut and (b, a) not in self.cut

    def send(
        self, source: str, destination: str, payload: tuple[Any, ...], *, reliable: bool = False, lag_ms: int = 0
    ) -> None:
        sim = self.sim
        if not self.connected(source, destination):
            sim.stats["dropped_partition"] += 1
            return
        rng = sim.rng
        if not reliable and rng.random() < self.drop_probability:
            sim.stats["dropped_random"] += 1
            return
        # A client's publish is never duplicated in flight: a gRPC call is delivered once or not at
        # all, and an answer (say NOT_OWNER) is final for that attempt. Everything between servers
        # may be duplicated, as if resent.
        duplicable = not reliable and payload[0] != "publish"
        copies = 2 if duplicable and rng.random() < self.config.duplicate_probability else 1
        for _ in range(copies):
            delay = 1 + rng.randrange(self.config.delay_max_ms) + (rng.randrange(lag_ms) if lag_ms else 0)
            if payload[0] == "ring" and sim.slow_watch.get(destination, 0) > sim.now:
                delay += rng.randrange(200, 600)
            if rng.random() < self.config.spike_probability:
                delay += rng.randrange(50, 250)
            sim.at(sim.now + delay, sim.deliver, (source, destination, payload, sim.incarnation_of(source)))


class SimStore:
    """A store replica: the replica log rules over memory, replying only after a simulated fsync."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.journal: list[tuple[str, str, object]] = []
        self.durable = MemoryLogStorage()
        self.volatile = MemoryLogStorage(journal=self.journal)
        self.rules = ReplicaLog(self.volatile, bugs=sim.bugs)
        self.unsynced_replies: list[tuple[str, tuple[Any, ...]]] = []
        self.sync_scheduled = False

    def receive(self, source: str, payload: tuple[Any, ...]) -> None:
        request: StoreRequest = payload[1]
        if isinstance(request, AppendRequest):
            reply: Any = request.apply_to(self.rules)
        elif isinstance(request, FenceRequest):
            reply = self.rules.fence(request.channel, request.epoch)
        elif request.ids_only:
            reply = self.rules.read_ids(request.channel, request.after_serial, request.limit)
        else:
            reply = self.rules.read(request.channel, request.after_serial, request.limit)
        if not isinstance(request, (AppendRequest, FenceRequest)) and reply.damaged:
            self.rules.mark_damaged(request.channel, reply.damaged)  # as the store process does
        self.unsynced_replies.append((source, ("store_reply", self.name, request, reply)))
        if not self.sync_scheduled:
            self.sync_scheduled = True
            self.sim.at(self.sim.now + self.sim.config.fsync_ms, self.sim.endpoint_call, (self.name, "sync"))

    def sync(self) -> None:
        """Group commit: everything written since the last sync becomes durable; then reply."""
        self.sync_scheduled = False
        self.durable.replay(self.journal)
        self.journal.clear()
        replies, self.unsynced_replies = self.unsynced_replies, []
        for destination, reply in replies:
            self.sim.network.send(self.name, destination, reply)

    def trim(self) -> None:
        """Retention: drop what the rules allow, recording each dropped entry in the simulation's
        archive of trimmed entries (which must agree across replicas: only committed ones go)."""
        sim = self.sim
        retention = sim.config.retention
        assert retention is not None
        for channel in self.volatile.channels():
            base = self.volatile.base(channel)
            held = self.volatile.read(channel, base.serial, retention.scan_max)
            dropped = self.rules.trim(channel, sim.now, retention)
            archive = sim.trimmed.setdefault(channel, {})
            for entry in held[:dropped]:
                kept = archive.setdefault(entry.serial, entry.message.id)
                if kept != entry.message.id:
                    detail = f"serial={entry.serial} {kept} and {entry.message.id}"
                    sim.trim_violations.append(Violation("TRIMMED_UNCOMMITTED", channel, detail))
            sim.stats["trimmed"] += dropped
        sim.at(sim.now + sim.config.trim_every_ms, sim.endpoint_call, (self.name, "trim"))

    def scrub(self) -> None:
        """The store's background scrub: read every channel whole and record what is damaged."""
        sim = self.sim
        for channel in self.volatile.channels():
            after = 0
            while True:
                reply = self.rules.read(channel, after, 1_000)
                if reply.damaged:
                    self.rules.mark_damaged(channel, reply.damaged)
                    sim.stats["scrub_found"] += 1
                if reply.damaged or not reply.entries:
                    break
                after = reply.entries[-1].serial
        if self.journal and not self.sync_scheduled:
            self.sync_scheduled = True
            sim.at(sim.now + sim.config.fsync_ms, sim.endpoint_call, (self.name, "sync"))
        sim.at(sim.now + sim.config.scrub_every_ms, sim.endpoint_call, (self.name, "scrub"))

    def damage(self, channel: str, serial: int, how: str) -> None:
        """Damage at rest: the entry is lost or corrupted on disk (and so in memory too)."""
        for storage in (self.durable, self.volatile):
            inside = storage.base(channel).serial < serial < storage.last(channel).serial
            if inside and storage.epoch_at(channel, serial) is not None:
                storage.damage(channel, serial, how)

    def crash(self) -> None:
        """Lose everything not yet synced."""
        self.journal = []
        self.volatile = self.durable.clone(journal=self.journal)
        self.rules = ReplicaLog(self.volatile, bugs=self.sim.bugs)
        self.unsynced_replies = []
        self.sync_scheduled = False


class SimEtcd:
    """Membership with leases: a member whose lease is not renewed within the TTL drops out."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.version = 1
        self.leases: dict[int, tuple[str, int]] = {}  # lease id → (node, expiry ms)
        self.member_lease: dict[str, int] = {}
        self.next_lease = 1

    def members(self) -> tuple[str, ...]:
        return tuple(sorted(self.member_lease))

    def receive(self, source: str, payload: tuple[Any, ...]) -> None:
        kind = payload[0]
        sim = self.sim
        if kind == "register":
            old = self.member_lease.get(source)
            if old is not None:
                self.leases.pop(old, None)
            lease = self.next_lease
            self.next_lease += 1
            self.leases[lease] = (source, sim.now + sim.config.lease_ttl_ms)
            self.member_lease[source] = lease
            self.changed()
            sim.network.send(ETCD, source, ("registered", lease, payload[1], self.version))
        elif kind == "keepalive":
            lease = payload[1]
            held = self.leases.get(lease)
            if held is None:
                sim.network.send(ETCD, source, ("lease_expired", lease))
            else:
                self.leases[lease] = (held[0], sim.now + sim.config.lease_ttl_ms)
                sim.network.send(ETCD, source, ("keepalive_ok", lease, payload[2]))
        elif kind == "get_ring":
            sim.network.send(ETCD, source, ("ring", self.version, self.members()))

    def tick(self) -> None:
        now = self.sim.now
        expired = [lease for lease, (_, expiry) in self.leases.items() if expiry <= now]
        for lease in expired:
            node, _ = self.leases.pop(lease)
            if self.member_lease.get(node) == lease:
                del self.member_lease[node]
                self.changed()

    def changed(self) -> None:
        """A new revision: tell every watcher (watch streams are reliable, but partitions cut them)."""
        self.version += 1
        members = self.members()
        for name in self.sim.watchers():
            self.sim.network.send(
                ETCD, name, ("ring", self.version, members), reliable=True, lag_ms=self.sim.config.watch_lag_ms
            )


class SimNode:
    """The adapter around one `ChannelNode` core: keep-alives, ring watch, token bookkeeping."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.core = ChannelNode(name, NodeConfig(role=sim.role_config))
        self.lease = 0
        self.tokens = 0
        self.publish_tokens: dict[int, tuple[str, int]] = {}
        self.subscription_tokens: dict[int, tuple[str, int, str]] = {}  # token → (client, stream, channel)
        self.stream_seq: dict[int, int] = {}
        self.subscription_of: dict[tuple[str, str], int] = {}  # (client, channel) → token
        sim.incarnations += 1
        self.incarnation = sim.incarnations  # a stream belongs to one process incarnation

    def start(self) -> None:
        self.core.begin_registration()
        self.sim.network.send(self.name, ETCD, ("register", self.sim.now))

    def receive(self, source: str, payload: tuple[Any, ...]) -> None:
        sim, core, effects = self.sim, self.core, Effects()
        now = sim.now
        kind = payload[0]
        if kind == "store_reply":
            _, replica, request, reply = payload
            if isinstance(request, AppendRequest):
                effects.extend(core.on_append_reply(replica, request, reply, now))
            elif isinstance(request, FenceRequest):
                effects.extend(core.on_fence_reply(replica, request, reply, now))
            else:
                effects.extend(core.on_read_reply(replica, request, reply, now))
        elif kind == "publish":
            _, request_id, channel, messages = payload
            token = self._token()
            self.publish_tokens[token] = (source, request_id)
            effects.extend(core.publish(channel, token, messages, now))
        elif kind == "subscribe":
            _, stream, channel, after = payload
            current = self.subscription_of.get((source, channel))
            if current is not None and self.subscription_tokens[current][1] >= stream:
                return  # a duplicate (or stale) copy of a subscribe we already serve
            old = self.subscription_of.pop((source, channel), None)
            if old is not None:
                core.unsubscribe(channel, old)
                self.subscription_tokens.pop(old, None)
            token = self._token()
            self.subscription_tokens[token] = (source, stream, channel)
            self.subscription_of[(source, channel)] = token
            self.stream_seq[token] = 0
            effects.extend(core.subscribe(channel, token, after, now))
        elif kind == "ring":
            _, version, members = payload
            effects.extend(core.on_ring(Ring(version, members)))
        elif kind == "registered":
            _, lease, sent, revision = payload
            self.lease = lease
            core.on_registered(revision)
            core.on_lease(sent + sim.config.lease_ttl_ms)
            sim.network.send(self.name, ETCD, ("get_ring",))
        elif kind == "keepalive_ok":
            _, lease, sent = payload
            if lease == self.lease:
                core.on_lease(sent + sim.config.lease_ttl_ms)
        elif kind == "lease_expired" and payload[1] == self.lease:
            self.lease = 0
            effects.extend(core.on_lease_lost())
            self.start()
        self.apply(effects)

    def tick(self) -> None:
        sim, effects = self.sim, Effects()
        if self.lease and sim.now % self.sim.config.keepalive_ms < self.sim.config.tick_ms:
            sim.network.send(self.name, ETCD, ("keepalive", self.lease, sim.now))
            if sim.now % (4 * self.sim.config.keepalive_ms) < self.sim.config.tick_ms:
                sim.network.send(self.name, ETCD, ("get_ring",))
        effects.extend(self.core.tick(sim.now))
        self.apply(effects)

    def _token(self) -> int:
        self.tokens += 1
        return self.tokens

    def apply(self, effects: Effects) -> None:
        send = self.sim.network.send
        for replica, request in effects.sends:
            send(self.name, replica, ("store", request))
        for token, result in effects.results:
            client, request_id = self.publish_tokens.pop(token)
            send(self.name, client, ("publish_result", request_id, result))
        for token, delivery in effects.deliveries:
            subscription = self.subscription_tokens.get(token)
            if subscription is None:
                continue
            client, stream, channel = subscription
            seq = self.stream_seq[token] = self.stream_seq[token] + 1
            send(self.name, client, ("delivery", stream, seq, delivery, self.incarnation))
            if delivery.end_reason:
                del self.subscription_tokens[token]
                if self.subscription_of.get((client, channel)) == token:
                    del self.subscription_of[(client, channel)]
        self.sim.stats["events"] += len(effects.events)
        for _, _, kind, _ in effects.replica_faults:
            self.sim.stats[f"replica_{kind}"] += 1
        self.sim.stats["stale_inputs"] += len(effects.stale)


class SimClient:
    """What publishers and subscribers share: a ring kept fresh from etcd."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.ring: Ring | None = None

    def on_ring(self, payload: tuple[Any, ...]) -> None:
        _, version, members = payload
        if self.ring is None or version > self.ring.version:
            self.ring = Ring(version, members)

    def refresh_ring(self) -> None:
        self.sim.network.send(self.name, ETCD, ("get_ring",))

    def owner(self, channel: str) -> str | None:
        return self.ring.owner(channel) if self.ring is not None else None


class SimPublisher(SimClient):
    """Publishes batches with unique ids; on a failed or unknown attempt, retries the same ids."""

    attempts_max = 12

    def __init__(self, sim: Simulation, name: str) -> None:
        super().__init__(sim, name)
        self.count = 0
        self.request_id = 0
        self.op: dict[str, Any] | None = None

    def next_op(self) -> None:
        sim = self.sim
        if sim.now >= sim.config.load_ms:
            return
        channel = sim.channels[sim.rng.randrange(len(sim.channels))]
        size = sim.rng.choice((1, 1, 1, 2, 3))
        messages = []
        for _ in range(size):
            self.count += 1
            messages.append(Message(f"{self.name}-{self.count}", data=b"x"))
        self.op = {
            "id": sim.next_op_id(),
            "channel": channel,
            "messages": tuple(messages),
            "invoke": sim.now,
            "attempts": 0,
            "maybe_stored": False,
        }
        self.attempt()

    def attempt(self) -> None:
        op, sim = self.op, self.sim
        if op is None:
            return
        retention = sim.config.retention
        deadline_ms = retention.keep_recent_ms - sim.config.retry_slack_ms if retention is not None else None
        too_late = deadline_ms is not None and sim.now - op["invoke"] >= deadline_ms
        if op["attempts"] >= self.attempts_max or sim.now >= sim.end_ms - 300 or too_late:
            self.finish(Outcome.UNKNOWN if op["maybe_stored"] else Outcome.FAIL, ())
            return
        owner = self.owner(op["channel"])
        if owner is None:
            self.refresh_ring()
            sim.at(sim.now + 20, sim.endpoint_call, (self.name, "attempt"))
            return
        op["attempts"] += 1
        self.request_id += 1
        op["request"] = self.request_id
        sim.network.send(self.name, owner, ("publish", self.request_id, op["channel"], op["messages"]))
        sim.at(sim.now + sim.config.publish_timeout_ms, sim.endpoint_call, (self.name, "timeout", self.request_id))

    def timeout(self, request_id: int) -> None:
        if self.op is not None and self.op.get("request") == request_id:
            self.op["maybe_stored"] = True
            self.op["request"] = None
            self.refresh_ring()
            self.attempt()

    def receive(self, source: str, payload: tuple[Any, ...]) -> None:
        if payload[0] == "ring":
            self.on_ring(payload)
            return
        _, request_id, result = payload
        result: PublishResult  # type: ignore[no-redef]
        op = self.op
        if op is None or op.get("request") != request_id:
            return
        op["request"] = None
        if result.ok:
            self.finish(Outcome.OK, result.serials)
            return
        op["maybe_stored"] = op["maybe_stored"] or result.maybe_stored
        self.refresh_ring()
        backoff = 5 + self.sim.rng.randrange(40)
        self.sim.at(self.sim.now + backoff, self.sim.endpoint_call, (self.name, "attempt"))

    def finish(self, outcome: Outcome, serials: tuple[int, ...]) -> None:
        op, sim = self.op, self.sim
        assert op is not None
        ids = tuple(message.id for message in op["messages"])
        sim.history.publishes.append(PublishOp(op["id"], op["channel"], ids, outcome, serials, op["invoke"], sim.now))
        sim.stats[f"publish_{outcome.value}"] += 1
        self.op = None
        sim.at(sim.now + 1 + sim.rng.randrange(15), sim.endpoint_call, (self.name, "next_op"))


class SimSubscriber(SimClient):
    """Follows one channel from serial 0; after any interruption, resumes from its last serial."""

    def __init__(self, sim: Simulation, name: str, channel: str) -> None:
        super().__init__(sim, name)
        self.channel = channel
        self.record = SubscriberRecord(name, channel, 0)
        self.last_serial = 0
        self.stream = 0
        self.expected_seq = 1
        self.owner_name: str | None = None
        self.last_heard_ms = 0
        self.resubscribe_at = -1
        self.incarnation: int | None = None

    def subscribe(self) -> None:
        sim = self.sim
        self.resubscribe_at = -1
        self.incarnation = None
        self.stream += 1
        self.expected_seq = 1
        self.last_heard_ms = sim.now
        self.owner_name = self.owner(self.channel)
        if self.owner_name is None:
            self.refresh_ring()
            self.later(20)
            return
        sim.network.send(self.name, self.owner_name, ("subscribe", self.stream, self.channel, self.last_serial))

    def later(self, delay_ms: int) -> None:
        if self.resubscribe_at < 0:
            self.resubscribe_at = self.sim.now + delay_ms
            self.sim.at(self.resubscribe_at, self.sim.endpoint_call, (self.name, "subscribe"))

    def check_idle(self) -> None:
        sim = self.sim
        if self.resubscribe_at < 0 and sim.now - self.last_heard_ms > sim.config.subscriber_idle_ms:
            self.refresh_ring()
            self.later(1)
        if self.resubscribe_at < 0 and self.owner_name != self.owner(self.channel):
            self.later(1)
        sim.at(sim.now + 50, sim.endpoint_call, (self.name, "check_idle"))

    def receive(self, source: str, payload: tuple[Any, ...]) -> None:
        if payload[0] == "ring":
            self.on_ring(payload)
            return
        _, stream, seq, delivery, incarnation = payload
        delivery: Delivery  # type: ignore[no-redef]
        if stream != self.stream or self.resubscribe_at >= 0 or seq < self.expected_seq:
            return
        if self.incarnation is None:
            self.incarnation = incarnation
        if seq > self.expected_seq or incarnation != self.incarnation:
            self.later(5)  # the stream lost a message, or its server restarted: it is broken, resume
            return
        self.expected_seq += 1
        self.last_heard_ms = self.sim.now
        if delivery.end_reason:
            self.refresh_ring()
            self.later(10 + self.sim.rng.randrange(30))
            return
        if delivery.gap_next_serial:
            self.record.received.append(ContinuityLost(delivery.gap_next_serial))
            self.last_serial = delivery.gap_next_serial - 1
            self.sim.stats["continuity_lost"] += 1
        for entry in delivery.entries:
            self.record.received.append((entry.serial, entry.message.id))
            self.last_serial = entry.serial
        self.sim.stats["delivered"] += len(delivery.entries)


class Simulation:
    def __init__(self, seed: int, bugs: frozenset[str] = frozenset()) -> None:
        self.seed = seed
        self.bugs = bugs
        self.rng = random.Random(seed)
        self.config = SimConfig.draw(self.rng)
        self.role_config = role_config(bugs)
        self.now = 0
        self.end_ms = self.config.load_ms + self.config.settle_ms
        self._queue: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._sequence = 0
        self._digest = 0
        self.stats: dict[str, int] = _Counter()
        self.network = Network(self, self.config)
        self.history = History()
        self.op_ids = 0
        self.channels = [f"ch-{index}" for index in range(self.config.channels)]
        self.stores = {name: SimStore(self, name) for name in STORES}
        self.etcd = SimEtcd(self)
        self.nodes: dict[str, SimNode] = {}
        self.down: dict[str, bool] = {}
        self.paused: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
        self.departed: list[str] = []
        self.store_fault: str | None = None
        self.clients: dict[str, SimPublisher | SimSubscriber] = {}
        self.node_count = 0
        self.incarnations = 0
        self.slow_watch: dict[str, int] = {}  # node → until when it hears of ring changes late
        self.trimmed: dict[str, dict[int, str]] = {}  # channel → serial → id of each entry a store trimmed
        self.destroyed: dict[tuple[str, str, int], Entry] = {}  # (store, channel, serial) → what damage hit
        self.trim_violations: list[Violation] = []

    # ----------------------------------------------------------------------------- scheduling

    def at(self, time_ms: int, callback: Callable[[Any], None], argument: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (time_ms, self._sequence, callback, argument))

    def next_op_id(self) -> int:
        self.op_ids += 1
        return self.op_ids

    def watchers(self) -> list[str]:
        return list(self.nodes) + list(self.clients)

    def incarnation_of(self, name: str) -> int:
        node = self.nodes.get(name)
        return node.incarnation if node is not None else 0

    def deliver(self, message: tuple[str, str, tuple[Any, ...], int]) -> None:
        source, destination, payload, incarnation = message
        if self.down.get(destination):
            return
        sender_died = incarnation and (self.down.get(source) or incarnation != self.incarnation_of(source))
        if sender_died and self.rng.random() < 0.5:  # what was still in a dead sender's buffers may be lost
            return
        if destination in self.paused:
            self.paused[destination].append((source, payload))
            return
        self._digest = zlib.crc32(f"{self.now}{source}{destination}{payload[0]}".encode(), self._digest)
        if destination == ETCD:
            self.etcd.receive(source, payload)
        elif destination in self.stores:
            self.stores[destination].receive(source, payload)
        elif destination in self.nodes:
            self.nodes[destination].receive(source, payload)
        else:
            self.clients[destination].receive(source, payload)

    def endpoint_call(self, argument: tuple[Any, ...]) -> None:
        """A timer of some endpoint fired; a crashed or paused endpoint's timers wait or vanish."""
        name, method, *arguments = argument
        if self.down.get(name):
            return
        if name in self.paused:
            self.paused[name].append(("", ("__call__", method, *arguments)))
            return
        target: Any = self.stores.get(name) or self.nodes.get(name) or self.clients.get(name)
        getattr(target, method)(*arguments)

    def node_tick(self, argument: tuple[str, int]) -> None:
        name, incarnation = argument
        node = self.nodes.get(name)
        if node is None or id(node) != incarnation or self.down.get(name):
            return
        if name not in self.paused:
            node.tick()
        self.at(self.now + self.config.tick_ms, self.node_tick, argument)

    def etcd_tick(self, _: object) -> None:
        self.etcd.tick()
        self.at(self.now + self.config.tick_ms, self.etcd_tick, None)

    # ----------------------------------------------------------------------------- lifecycle

    def start_node(self, name: str) -> None:
        node = SimNode(self, name)
        self.nodes[name] = node
        self.down.pop(name, None)
        node.start()
        self.at(self.now + 1 + self.rng.randrange(self.config.tick_ms), self.node_tick, (name, id(node)))

    def crash(self, name: str) -> None:
        self.down[name] = True
        self.paused.pop(name, None)
        if name in self.stores:
            self.stores[name].crash()

    def restart(self, name: str) -> None:
        if not self.down.get(name):
            return
        if name in self.stores:
            del self.down[name]
            # A crash ended its background timers (a down endpoint's timers vanish): start them again.
            self.at(self.now + self.config.scrub_every_ms, self.endpoint_call, (name, "scrub"))
            if self.config.retention is not None:
                self.at(self.now + self.config.trim_every_ms, self.endpoint_call, (name, "trim"))
        elif name not in self.departed:
            self.start_node(name)

    def pause(self, name: str) -> None:
        if not self.down.get(name) and name not in self.paused:
            self.paused[name] = []

    def resume(self, name: str) -> None:
        backlog = self.paused.pop(name, None)
        for source, payload in backlog or []:
            if payload[0] == "__call__":
                self.endpoint_call((name, *payload[1:]))
            else:
                self.deliver((source, name, payload, 0))

    # ----------------------------------------------------------------------------- faults

    def schedule_faults(self) -> None:
        low, high = self.config.fault_gap_ms
        time_ms = 100 + self.rng.randrange(low, high)
        while time_ms < self.config.load_ms - 100:
            self.at(time_ms, self.inject_fault, None)
            time_ms += self.rng.randrange(low, high)
        self.at(self.config.load_ms, self.heal, None)

    def inject_fault(self, _: object) -> None:
        rng = self.rng
        nodes = [name for name in self.nodes if not self.down.get(name)]
        kind = rng.choice(
            (
                "crash",
                "pause",
                "partition",
                "partition",
                "split-owner",
                "slow-watch",
                "store",
                "membership",
                "weather",
                "damage",
            )
        )
        self.stats[f"fault_{kind}"] += 1
        if kind == "crash" and len(nodes) > 1:
            victim = rng.choice(nodes)
            self.crash(victim)
            self.at(self.now + rng.randrange(50, 600), self._restart_call, victim)
        elif kind == "pause" and nodes:
            victim = rng.choice(nodes)
            self.pause(victim)
            self.at(self.now + rng.randrange(30, 900), self._resume_call, victim)
        elif kind == "partition":
            self.partition()
        elif kind == "split-owner":
            self.split_owner()
        elif kind == "slow-watch" and nodes:
            # A gray failure: a node (and so the channels it owns) learns of ring changes late.
            self.slow_watch[rng.choice(nodes)] = self.now + rng.randrange(200, 900)
            if rng.random() < 0.5 and self.node_count < self.config.nodes_max:
                self.add_node()
        elif kind == "store" and self.store_fault is None:
            victim = rng.choice(STORES)
            self.store_fault = victim
            action = rng.choice(("crash", "pause", "cut"))
            if action == "crash":
                self.crash(victim)
            elif action == "pause":
                self.pause(victim)
            else:
                self.cut_links(victim, [name for name in self.nodes])
            self.at(self.now + rng.randrange(30, 600), self._heal_store_call, (victim, action))
        elif kind == "membership":
            if rng.random() < 0.5 and self.node_count < self.config.nodes_max:
                self.add_node()
            elif len(nodes) > 2:
                victim = rng.choice(nodes)
                self.departed.append(victim)
                self.crash(victim)
        elif kind == "weather":
            self.network.drop_probability = rng.choice((0.0, 0.02, 0.1, 0.3))
        elif kind == "damage":
            self.damage_replica()

    def damage_replica(self) -> None:
        """One replica loses (or finds corrupt) an entry that both other replicas hold intact at the
        same position, on disk: never more than one bad copy of an entry, as with any one fault."""
        rng = self.rng
        victim = rng.choice(STORES)
        channel = rng.choice(self.channels)
        store = self.stores[victim]
        if store.journal:
            return  # writes waiting for their sync were applied to what the disk held before: not then
        durable = store.durable
        others = [self.stores[name].durable for name in STORES if name != victim]
        candidates = [  # (not its last entry: a row lost at the end of a log is a shorter log, not damage)
            entry
            for entry in durable.read(channel, durable.base(channel).serial, 100_000)[:-1]
            if entry.intact() and all(_holds_intact(other, channel, entry) for other in others)
        ]
        if candidates:
            entry = rng.choice(candidates)
            store.damage(channel, entry.serial, rng.choice(("missing", "corrupt")))
            self.destroyed[(victim, channel, entry.serial)] = entry
            self.stats["damaged"] += 1

    def partition(self) -> None:
        """Cut links: one endpoint from a random part of the cluster, or the cluster in two.

        Partitions may cut any link, store links included: a partition makes replicas unreachable
        from some nodes, it does not make them lose data.
        """
        rng = self.rng
        servers = sorted(self.nodes) + list(STORES) + [ETCD]
        clients = sorted(self.clients)
        cut: list[tuple[str, str]] = []
        if rng.random() < 0.5:
            victim = rng.choice(sorted(self.nodes) + clients + list(STORES))
            others = [name for name in servers + clients if name != victim and rng.random() < 0.6]
            cut = self.cut_links(victim, others)
        else:
            side = [name for name in servers if rng.random() < 0.4]
            side += [name for name in clients if rng.random() < 0.3]
            rest = [name for name in servers + clients if name not in side]
            for name in side:
                cut += self.cut_links(name, rest)
        self.at(self.now + rng.randrange(30, 600), self._heal_cut_call, (cut, None))

    def split_owner(self) -> None:
        """Jepsen's favourite: a channel's owner and one replica on one side, everyone else on the
        other. The owner can still write to its replica (a minority write) until its lease runs out,
        while the majority side moves the channel and commits without that replica."""
        rng = self.rng
        members = self.etcd.members()
        if not members:
            return
        owner = Ring(self.etcd.version, members).owner(rng.choice(self.channels))
        assert owner is not None
        side = [owner, rng.choice(STORES)] + [name for name in sorted(self.clients) if rng.random() < 0.3]
        rest = [name for name in sorted(self.nodes) + list(STORES) + [ETCD] + sorted(self.clients) if name not in side]
        cut: list[tuple[str, str]] = []
        for name in side:
            cut += self.cut_links(name, rest)
        self.at(self.now + rng.randrange(100, 700), self._heal_cut_call, (cut, None))

    def cut_links(self, victim: str, others: list[str]) -> list[tuple[str, str]]:
        cut = []
        for other in others:
            if other != victim:
                link = (victim, other)
                self.network.cut[link] = self.network.cut.get(link, 0) + 1
                cut.append(link)
        return cut

    def _heal_cut_call(self, argument: tuple[list[tuple[str, str]], str | None]) -> None:
        cut, store = argument
        for link in cut:
            remaining = self.network.cut.get(link, 0) - 1
            if remaining > 0:
                self.network.cut[link] = remaining
            else:
                self.network.cut.pop(link, None)
        if store is not None and self.store_fault == store:
            self.store_fault = None

    def _heal_store_call(self, argument: tuple[str, str]) -> None:
        victim, action = argument
        if action == "crash":
            self.restart(victim)
        elif action == "pause":
            self.resume(victim)
        else:
            for link in [link for link in self.network.cut if link[0] == victim]:
                self.network.cut.pop(link)
        self.store_fault = None

    def _restart_call(self, victim: str) -> None:
        self.restart(victim)

    def _resume_call(self, victim: str) -> None:
        self.resume(victim)

    def add_node(self) -> None:
        name = f"node-{self.node_count}"
        self.node_count += 1
        self.start_node(name)

    def heal(self, _: object) -> None:
        """End of the fault period: every link heals, every crashed process restarts."""
        self.network.cut.clear()
        self.network.drop_probability = self.config.drop_probability
        self.store_fault = None
        for name in list(self.paused):
            self.resume(name)
        for name in sorted(self.down):
            if self.down.get(name) and name not in self.departed:
                self.restart(name)
        if all(self.down.get(name) for name in self.nodes):
            self.add_node()

    # ----------------------------------------------------------------------------- the run

    def run(self) -> SimResult:
        config = self.config
        for _ in range(config.nodes):
            self.add_node()
        for index in range(config.publishers):
            publisher = SimPublisher(self, f"pub-{index}")
            self.clients[publisher.name] = publisher
            publisher.refresh_ring()
            self.at(20 + self.rng.randrange(80), self.endpoint_call, (publisher.name, "next_op"))
        for index in range(config.subscribers):
            channel = self.channels[index % len(self.channels)]
            subscriber = SimSubscriber(self, f"sub-{index}", channel)
            self.clients[subscriber.name] = subscriber
            self.history.subscribers.append(subscriber.record)
            subscriber.refresh_ring()
            self.at(30 + self.rng.randrange(500), self.endpoint_call, (subscriber.name, "subscribe"))
            self.at(100, self.endpoint_call, (subscriber.name, "check_idle"))
        self.at(0, self.etcd_tick, None)
        if config.retention is not None:
            for name in STORES:
                self.at(config.trim_every_ms, self.endpoint_call, (name, "trim"))
        for name in STORES:
            self.at(config.scrub_every_ms, self.endpoint_call, (name, "scrub"))
        self.schedule_faults()
        steps = 0
        try:
            while self._queue:
                time_ms, _, callback, argument = heapq.heappop(self._queue)
                if time_ms > self.end_ms:
                    break
                self.now = time_ms
                callback(argument)
                steps += 1
                if steps > config.steps_max:
                    detail = f"over {config.steps_max} events by {self.now} ms: something retries without a pause"
                    return SimResult(self.seed, [Violation("LIVELOCK", "-", detail)], f"{self._digest:08x}", self.stats)
        except InvariantViolation as violation:
            return SimResult(
                self.seed, [Violation("INVARIANT", "-", str(violation))], f"{self._digest:08x}", self.stats
            )
        return self.judge()

    def judge(self) -> SimResult:
        for publisher in self.clients.values():
            if isinstance(publisher, SimPublisher) and publisher.op is not None:
                op = publisher.op
                ids = tuple(message.id for message in op["messages"])
                outcome = Outcome.UNKNOWN if op["maybe_stored"] or op["attempts"] else Outcome.FAIL
                self.history.publishes.append(PublishOp(op["id"], op["channel"], ids, outcome, (), op["invoke"]))
        for channel in self.channels:
            self.history.final_logs[channel] = self.adopted_log(channel, STORES)
        violations = check(self.history) + self.trim_violations
        # Whatever quorum a future owner fences, its adopted log must keep every acknowledged message.
        for pair in combinations(STORES, 2):
            logs = {channel: self.adopted_log(channel, pair) for channel in self.channels}
            if logs == self.history.final_logs:
                continue
            partial = History(self.history.publishes, [], logs)
            for violation in check(partial):
                if violation.kind in ("LOST", "SERIAL_CHANGED"):
                    violations.append(Violation(violation.kind, violation.channel, f"quorum={pair} {violation.detail}"))
        self.stats["digest"] = self._digest
        return SimResult(self.seed, violations, f"{self._digest:08x}", self.stats)

    def adopted_log(self, channel: str, replicas: tuple[str, ...]) -> list[tuple[int, str]]:
        """The log a new owner would adopt from `replicas`: the most up-to-date one, with an entry
        that damage took from it found on another of `replicas` that still holds it intact (an owner
        reads a missing entry from a replica that matches, and rewrites the damaged one from it)."""
        storages = {name: self.stores[name].volatile for name in replicas}
        chosen = most_up_to_date([(name, storage.last(channel)) for name, storage in storages.items()])
        storage = storages[chosen]
        # What the replica trimmed is in the archive (every trimmed entry was committed, and the
        # archive would have caught two replicas trimming different ones).
        archive = self.trimmed.get(channel, {})
        after = storage.base(channel).serial
        entries = [(serial, archive.get(serial, "?trimmed")) for serial in range(1, after + 1)]
        while True:
            page = storage.read(channel, after, 10_000)
            if not page:
                return entries
            for entry in page:
                for missing in range(after + 1, entry.serial):  # damage: a hole in the chosen log
                    lost = self.destroyed.get((chosen, channel, missing))
                    kept = [
                        other for other in storages.values() if lost is not None and _holds_intact(other, channel, lost)
                    ]
                    entries.append((missing, lost.message.id if kept and lost else archive.get(missing, "?missing")))
                entries.append((entry.serial, entry.message.id))
                after = entry.serial


def _holds_intact(storage: MemoryLogStorage, channel: str, entry: Entry) -> bool:
    held = storage.read(channel, entry.serial - 1, 1)
    return bool(held) and held[0].serial == entry.serial and held[0].epoch == entry.epoch and held[0].intact()


class _Counter(dict[str, int]):
    def __missing__(self, key: str) -> int:
        return 0


def run_seed(seed: int, bugs: frozenset[str] = frozenset()) -> SimResult:
    return Simulation(seed, bugs).run()


__all__ = ["SimConfig", "SimResult", "Simulation", "run_seed"]
