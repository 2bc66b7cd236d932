"""What the channel role and node tests share: three in-memory replicas answering a role's (or a
node's) requests at once, and the steps every test takes (take over, publish)."""

from __future__ import annotations

from collections.abc import Iterator

from services.core.entries import Entry, Message
from services.core.memory_log import MemoryLogStorage
from services.core.node import ChannelNode, NodeConfig
from services.core.replica_log import AppendReply, FenceReply, ReadReply, ReplicaLog, Retention
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    ChannelRole,
    Effects,
    FenceRequest,
    ReadRequest,
    RoleConfig,
    StoreRequest,
)

STORES = ("store-a", "store-b", "store-c")


class Replicas:
    """Three replicas answering a role's requests at once, except those marked down."""

    def __init__(self) -> None:
        self.storages = {name: MemoryLogStorage() for name in STORES}
        self.logs = {name: ReplicaLog(storage) for name, storage in self.storages.items()}
        self.down: set[str] = set()

    def run(self, role: ChannelRole, effects: Effects, now_ms: int = 0) -> Effects:
        """Deliver every request the role sends (and the ones its replies cause) until quiet."""
        for name, request, reply in self.replies(effects):
            if isinstance(request, FenceRequest):
                assert isinstance(reply, FenceReply)
                effects.extend(role.on_fence_reply(name, reply, now_ms))
            elif isinstance(request, AppendRequest):
                assert isinstance(reply, AppendReply)
                effects.extend(role.on_append_reply(name, request, reply, now_ms))
            else:
                assert isinstance(reply, ReadReply)
                effects.extend(role.on_read_reply(name, request, reply, now_ms))
        return effects

    def replies(self, effects: Effects) -> Iterator[tuple[str, StoreRequest, FenceReply | AppendReply | ReadReply]]:
        """Each request sent (also those sent while earlier replies are handled) with its answer."""
        index = 0
        while index < len(effects.sends):
            name, request = effects.sends[index]
            index += 1
            if name in self.down:
                continue
            log = self.logs[name]
            if isinstance(request, FenceRequest):
                yield name, request, log.fence(request.channel, request.epoch)
            elif isinstance(request, AppendRequest):
                yield name, request, request.apply_to(log)
            else:
                assert isinstance(request, ReadRequest)
                read = log.read_ids if request.ids_only else log.read
                reply = read(request.channel, request.after_serial, request.limit)
                if reply.damaged:  # what the store process does with damage a read found
                    log.mark_damaged(request.channel, reply.damaged)
                yield name, request, reply

    def ids(self, name: str, channel: str = "ch") -> list[tuple[int, int, str]]:
        return [(e.serial, e.epoch, e.message.id) for e in self.storages[name].read(channel, 0, 10_000)]

    def trim(self, name: str, entries_max: int, channel: str = "ch") -> int:
        """Let replica `name` drop what it knows is committed beyond the newest `entries_max`."""
        retention = Retention(age_ms=10**15, entries_max=entries_max, keep_recent_ms=0, scan_max=10_000)
        return self.logs[name].trim(channel, 0, retention)

    def write(self, name: str, entries: list[Entry], channel: str = "ch") -> None:
        storage = self.storages[name]
        storage.set_fence(channel, max(storage.fence_of(channel), max(e.epoch for e in entries)))
        storage.extend(channel, entries)


def take_over(replicas: Replicas, epoch: int, config: RoleConfig | None = None, now_ms: int = 0) -> ChannelRole:
    role = ChannelRole("ch", epoch, config or RoleConfig(), now_ms)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects, now_ms)
    return role


def publish(replicas: Replicas, role: ChannelRole, token: int, *ids: str, now_ms: int = 0) -> Effects:
    effects = Effects()
    effects.extend(role.publish(token, tuple(Message(message_id) for message_id in ids), now_ms))
    return replicas.run(role, effects, now_ms)


def entries(epoch: int, first: int, *ids: str) -> list[Entry]:
    return [Entry.make(first + index, epoch, Message(message_id)) for index, message_id in enumerate(ids)]


def node_with(ring_members: tuple[str, ...], version: int = 3) -> ChannelNode:
    node = ChannelNode("n1", NodeConfig())
    node.on_registered(version)
    node.on_lease(1_000)
    node.on_ring(Ring(version, ring_members))
    return node


def run_node(replicas: Replicas, node: ChannelNode, effects: Effects, now_ms: int = 0) -> Effects:
    """Like `Replicas.run`, through the node."""
    for name, request, reply in replicas.replies(effects):
        if isinstance(request, FenceRequest):
            assert isinstance(reply, FenceReply)
            effects.extend(node.on_fence_reply(name, request, reply, now_ms))
        elif isinstance(request, AppendRequest):
            assert isinstance(reply, AppendReply)
            effects.extend(node.on_append_reply(name, request, reply, now_ms))
        else:
            assert isinstance(reply, ReadReply) and isinstance(request, ReadRequest)
            effects.extend(node.on_read_reply(name, request, reply, now_ms))
    return effects


def published_via(node: ChannelNode, channel: str, token: int, now_ms: int = 0) -> Effects:
    effects = Effects()
    effects.extend(node.publish(channel, token, (Message(f"{channel}-{token}"),), now_ms))
    return effects
