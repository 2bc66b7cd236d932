"""A simulated store replica: the real `ReplicaLog` rules over the in-memory engine, with fsync,
crashes that lose what was not synced, retention, scrub and damage at rest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.core.checker import Violation
from services.core.entries import Entry
from services.core.memory_log import MemoryLogStorage
from services.core.replica_log import ReplicaLog
from services.core.role import (
    AppendRequest,
    FenceRequest,
    StoreRequest,
)

if TYPE_CHECKING:
    from ringcast_tools.sim.cluster import Simulation


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


def holds_intact(storage: MemoryLogStorage, channel: str, entry: Entry) -> bool:
    held = storage.read(channel, entry.serial - 1, 1)
    return bool(held) and held[0].serial == entry.serial and held[0].epoch == entry.epoch and held[0].intact()
