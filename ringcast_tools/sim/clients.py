"""Simulated publishers (retrying with the same ids) and subscribers (resuming from their last serial)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringcast_tools.sim.config import ETCD
from services.core.checker import ContinuityLost, Outcome, PublishOp, SubscriberRecord
from services.core.entries import Message
from services.core.ring import Ring
from services.core.role import (
    Delivery,
    PublishResult,
)

if TYPE_CHECKING:
    from ringcast_tools.sim.cluster import Simulation


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
