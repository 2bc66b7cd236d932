"""The fault schedule of a simulated run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ringcast_tools.sim.config import ETCD, STORES
from ringcast_tools.sim.store import holds_intact
from services.core.ring import Ring

if TYPE_CHECKING:
    from ringcast_tools.sim.cluster import Simulation


class FaultSchedule:
    """The faults of one run, drawn from its seed: when, and which (crashes, pauses, partitions, an
    owner cut off, slow watches, store faults, membership changes, damage at rest), and the heal."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def schedule(self) -> None:
        low, high = self.sim.config.fault_gap_ms
        time_ms = 100 + self.sim.rng.randrange(low, high)
        while time_ms < self.sim.config.load_ms - 100:
            self.sim.at(time_ms, self.inject_fault, None)
            time_ms += self.sim.rng.randrange(low, high)
        self.sim.at(self.sim.config.load_ms, self.heal, None)

    def inject_fault(self, _: object) -> None:
        rng = self.sim.rng
        nodes = [name for name in self.sim.nodes if not self.sim.down.get(name)]
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
        self.sim.stats[f"fault_{kind}"] += 1
        if kind == "crash" and len(nodes) > 1:
            victim = rng.choice(nodes)
            self.sim.crash(victim)
            self.sim.at(self.sim.now + rng.randrange(50, 600), self._restart_call, victim)
        elif kind == "pause" and nodes:
            victim = rng.choice(nodes)
            self.sim.pause(victim)
            self.sim.at(self.sim.now + rng.randrange(30, 900), self._resume_call, victim)
        elif kind == "partition":
            self.partition()
        elif kind == "split-owner":
            self.split_owner()
        elif kind == "slow-watch" and nodes:
            # A gray failure: a node (and so the channels it owns) learns of ring changes late.
            self.sim.slow_watch[rng.choice(nodes)] = self.sim.now + rng.randrange(200, 900)
            if rng.random() < 0.5 and self.sim.node_count < self.sim.config.nodes_max:
                self.sim.add_node()
        elif kind == "store" and self.sim.store_fault is None:
            victim = rng.choice(STORES)
            self.sim.store_fault = victim
            action = rng.choice(("crash", "pause", "cut"))
            if action == "crash":
                self.sim.crash(victim)
            elif action == "pause":
                self.sim.pause(victim)
            else:
                self.cut_links(victim, [name for name in self.sim.nodes])
            self.sim.at(self.sim.now + rng.randrange(30, 600), self._heal_store_call, (victim, action))
        elif kind == "membership":
            if rng.random() < 0.5 and self.sim.node_count < self.sim.config.nodes_max:
                self.sim.add_node()
            elif len(nodes) > 2:
                victim = rng.choice(nodes)
                self.sim.departed.append(victim)
                self.sim.crash(victim)
        elif kind == "weather":
            self.sim.network.drop_probability = rng.choice((0.0, 0.02, 0.1, 0.3))
        elif kind == "damage":
            self.damage_replica()

    def damage_replica(self) -> None:
        """One replica loses (or finds corrupt) an entry that both other replicas hold intact at the
        same position, on disk: never more than one bad copy of an entry, as with any one fault."""
        rng = self.sim.rng
        victim = rng.choice(STORES)
        channel = rng.choice(self.sim.channels)
        store = self.sim.stores[victim]
        if store.journal:
            return  # writes waiting for their sync were applied to what the disk held before: not then
        durable = store.durable
        others = [self.sim.stores[name].durable for name in STORES if name != victim]
        candidates = [  # (not its last entry: a row lost at the end of a log is a shorter log, not damage)
            entry
            for entry in durable.read(channel, durable.base(channel).serial, 100_000)[:-1]
            if entry.intact() and all(holds_intact(other, channel, entry) for other in others)
        ]
        if candidates:
            entry = rng.choice(candidates)
            store.damage(channel, entry.serial, rng.choice(("missing", "corrupt")))
            self.sim.destroyed[(victim, channel, entry.serial)] = entry
            self.sim.stats["damaged"] += 1

    def partition(self) -> None:
        """Cut links: one endpoint from a random part of the cluster, or the cluster in two.

        Partitions may cut any link, store links included: a partition makes replicas unreachable
        from some nodes, it does not make them lose data.
        """
        rng = self.sim.rng
        servers = sorted(self.sim.nodes) + list(STORES) + [ETCD]
        clients = sorted(self.sim.clients)
        cut: list[tuple[str, str]] = []
        if rng.random() < 0.5:
            victim = rng.choice(sorted(self.sim.nodes) + clients + list(STORES))
            others = [name for name in servers + clients if name != victim and rng.random() < 0.6]
            cut = self.cut_links(victim, others)
        else:
            side = [name for name in servers if rng.random() < 0.4]
            side += [name for name in clients if rng.random() < 0.3]
            rest = [name for name in servers + clients if name not in side]
            for name in side:
                cut += self.cut_links(name, rest)
        self.sim.at(self.sim.now + rng.randrange(30, 600), self._heal_cut_call, (cut, None))

    def split_owner(self) -> None:
        """Jepsen's favourite: a channel's owner and one replica on one side, everyone else on the
        other. The owner can still write to its replica (a minority write) until its lease runs out,
        while the majority side moves the channel and commits without that replica."""
        rng = self.sim.rng
        members = self.sim.etcd.members()
        if not members:
            return
        owner = Ring(self.sim.etcd.version, members).owner(rng.choice(self.sim.channels))
        assert owner is not None
        side = [owner, rng.choice(STORES)] + [name for name in sorted(self.sim.clients) if rng.random() < 0.3]
        rest = [
            name
            for name in sorted(self.sim.nodes) + list(STORES) + [ETCD] + sorted(self.sim.clients)
            if name not in side
        ]
        cut: list[tuple[str, str]] = []
        for name in side:
            cut += self.cut_links(name, rest)
        self.sim.at(self.sim.now + rng.randrange(100, 700), self._heal_cut_call, (cut, None))

    def cut_links(self, victim: str, others: list[str]) -> list[tuple[str, str]]:
        cut = []
        for other in others:
            if other != victim:
                link = (victim, other)
                self.sim.network.cut[link] = self.sim.network.cut.get(link, 0) + 1
                cut.append(link)
        return cut

    def _heal_cut_call(self, argument: tuple[list[tuple[str, str]], str | None]) -> None:
        cut, store = argument
        for link in cut:
            remaining = self.sim.network.cut.get(link, 0) - 1
            if remaining > 0:
                self.sim.network.cut[link] = remaining
            else:
                self.sim.network.cut.pop(link, None)
        if store is not None and self.sim.store_fault == store:
            self.sim.store_fault = None

    def _heal_store_call(self, argument: tuple[str, str]) -> None:
        victim, action = argument
        if action == "crash":
            self.sim.restart(victim)
        elif action == "pause":
            self.sim.resume(victim)
        else:
            for link in [link for link in self.sim.network.cut if link[0] == victim]:
                self.sim.network.cut.pop(link)
        self.sim.store_fault = None

    def _restart_call(self, victim: str) -> None:
        self.sim.restart(victim)

    def _resume_call(self, victim: str) -> None:
        self.sim.resume(victim)

    def heal(self, _: object) -> None:
        """End of the fault period: every link heals, every crashed process restarts."""
        self.sim.network.cut.clear()
        self.sim.network.drop_probability = self.sim.config.drop_probability
        self.sim.store_fault = None
        for name in list(self.sim.paused):
            self.sim.resume(name)
        for name in sorted(self.sim.down):
            if self.sim.down.get(name) and name not in self.sim.departed:
                self.sim.restart(name)
        if all(self.sim.down.get(name) for name in self.sim.nodes):
            self.sim.add_node()
