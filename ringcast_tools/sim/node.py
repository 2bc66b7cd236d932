"""A simulated channel node: the real `ChannelNode` core, fed messages and ticks, its effects sent on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ringcast_tools.sim.config import ETCD
from services.core.node import ChannelNode, NodeConfig
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    Effects,
    FenceRequest,
)

if TYPE_CHECKING:
    from ringcast_tools.sim.cluster import Simulation


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
