"""A simulated etcd: leases, membership and ring versions, watched with a lag."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringcast_tools.sim.config import ETCD

if TYPE_CHECKING:
    from ringcast_tools.sim.cluster import Simulation


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
