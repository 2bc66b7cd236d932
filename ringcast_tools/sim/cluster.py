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
from itertools import combinations
from typing import Any

from ringcast_tools.sim.clients import SimPublisher, SimSubscriber
from ringcast_tools.sim.config import ETCD, STORES, Counter, SimConfig, SimResult, role_config
from ringcast_tools.sim.etcd import SimEtcd
from ringcast_tools.sim.faults import FaultSchedule
from ringcast_tools.sim.network import Network
from ringcast_tools.sim.node import SimNode
from ringcast_tools.sim.store import SimStore, holds_intact
from services.core.checker import History, Outcome, PublishOp, Violation, check
from services.core.entries import Entry
from services.core.invariants import InvariantViolation
from services.core.quorum import most_up_to_date


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
        self.stats: dict[str, int] = Counter()
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
        self.faults = FaultSchedule(self)

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

    def add_node(self) -> None:
        name = f"node-{self.node_count}"
        self.node_count += 1
        self.start_node(name)

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
        self.faults.schedule()
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
                        other for other in storages.values() if lost is not None and holds_intact(other, channel, lost)
                    ]
                    entries.append((missing, lost.message.id if kept and lost else archive.get(missing, "?missing")))
                entries.append((entry.serial, entry.message.id))
                after = entry.serial


def run_seed(seed: int, bugs: frozenset[str] = frozenset()) -> SimResult:
    return Simulation(seed, bugs).run()


__all__ = ["SimConfig", "SimResult", "Simulation", "run_seed"]
