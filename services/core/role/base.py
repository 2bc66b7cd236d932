"""What every concern of a channel role shares: its state (the replicas, the in-memory log, the
subscribers and reads in flight), the state table's guard, and the checks every read reply passes."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from services.core.entries import Entry, Message, Position
from services.core.invariants import invariant
from services.core.quorum import quorum_size
from services.core.replica_log import ReadReply
from services.core.role.dedup import DedupWindow
from services.core.role.messages import Effects, ReadRequest, ReplicaFault, RoleConfig, StoreSend
from services.core.role.states import TRANSITIONS, RoleState


@dataclass(slots=True)
class ReplicaView:
    """What the owner knows about one replica's log."""

    name: str
    match: int = 0
    next: int = 1
    inflight: dict[int, tuple[int, int]] = field(default_factory=dict)  # sequence → (sent ms, end)
    reset_sequence: int = 0
    fence_last: Position | None = None
    unreachable: bool = False  # its last append failed in transport or timed out; cleared by any reply
    probed_ms: int = -1_000_000_000  # when we last sent it an empty append to see if it is back
    refused_ms: int = -1_000_000_000  # when it last refused an append as CORRUPT or INVALID
    told_commit: int = 0  # the commit point our last append to it carried
    sent_ms: int = 0  # when we last sent it an append
    fenced_out: int = 0  # its fence, when it refused our epoch (a minority may; we go on without it)
    damaged: int = 0  # the first serial known missing or corrupt on it (0: none): rewritten from there
    unreadable: bool = False  # a recovery read from it failed its checks: not adopted in this takeover
    conflicted: bool = False  # it refused an append as DATA_LOSS (reported once)


@dataclass(slots=True)
class PendingPublish:
    """A publish whose serials are assigned, waiting for its last one to commit."""

    token: int
    last_serial: int
    serials: tuple[int, ...]
    duplicates: tuple[bool, ...]
    assigned_ms: int


@dataclass(slots=True)
class Subscriber:
    """Where a subscription is: the next serial it gets, and the read in flight for it (0: none)."""

    next_serial: int
    read_sequence: int = 0


ReadPurpose = Literal["recover", "recover-ids", "backfill", "subscriber", "history"]


@dataclass(slots=True)
class ReadInFlight:
    """A read in flight: what it is for and where it went."""

    purpose: ReadPurpose
    replica: str
    sent_ms: int
    owner: int  # subscriber token, history token, or the serial a backfill is for
    after_serial: int
    limit: int
    target: str = ""  # for a backfill: the replica the entries are for


class RoleBase:
    """A channel role's state and shared helpers; `ChannelRole` adds the concerns and the inputs."""

    def __init__(self, channel: str, epoch: int, config: RoleConfig, now_ms: int) -> None:
        invariant(epoch > 0, "epochs start at 1")
        self.channel = channel
        self.epoch = epoch
        self.config = config
        self.bugs = config.bugs
        self.state = RoleState.FENCING
        self.stop_reason = ""
        self.quorum = quorum_size(len(config.replicas))
        self.replicas = {name: ReplicaView(name) for name in config.replicas}
        self.started_ms = now_ms
        # A takeover is abandoned when it stops making progress, not when it is merely long: many
        # large recoveries at once share the stores' read bandwidth, and restarting them all on a
        # fixed clock only throws their work away (and they would time out together again).
        self.progress_ms = now_ms
        self.trigger = "request"  # why the takeover began (for metrics and traces): "request" or "prepare"
        self.last_activity_ms = now_ms
        # `now_ms` is a monotonic clock (timers); message timestamps and the dedup window's ages are
        # wall-clock time, `now_ms + wall_offset_ms`, kept current by the node.
        self.wall_offset_ms = 0
        # The owner's log: entries (tail_base, last] in memory; epoch of entry tail_base known.
        self.tail: list[Entry] = []
        self.tail_batch_last: list[int] = []  # per tail entry: last serial of its publish batch
        self.tail_base = 0
        self.tail_base_epoch = 0
        self.epoch_start_serial = 1
        self.commit = 0
        self.dedup = DedupWindow(config.dedup_window_ms, config.dedup_entries_max)
        self.pending: deque[PendingPublish] = deque()
        self.queued: deque[tuple[int, tuple[Message, ...]]] = deque()
        self.subscribers: dict[int, Subscriber] = {}
        self.histories: dict[int, tuple[int, int]] = {}  # token → (after serial, limit), waiting
        self.reads: dict[int, ReadInFlight] = {}
        self.recovery: dict[str, list[Entry]] = {}
        self.recovery_target: dict[str, Position] = {}
        # Per source that had trimmed below the suffix we asked for: its base (our log's start).
        self.recovery_base: dict[str, Position] = {}
        self.recovery_start = 0
        # The dedup range older than the whole-entry read: (id, timestamp) of serials
        # (recovery_ids_from, recovery_start], read from `recovery_ids_source`.
        self.recovery_ids: list[tuple[str, int]] = []
        self.recovery_ids_from = 0
        self.recovery_ids_source = ""
        self.recovered_last = 0  # serial of the adopted log's last entry; commit is known past it
        # The furthest any replica has trimmed (its base, from append replies): readers are served
        # nothing at or below it, even from memory, so what retention dropped is gone everywhere.
        self.trimmed_through = 0
        self._sequence = 0

    @property
    def last(self) -> int:
        return self.tail_base + len(self.tail)

    def epoch_at(self, serial: int) -> int | None:
        """Epoch of our entry at `serial`, or None when it is below what we hold in memory."""
        if serial == self.tail_base:
            return self.tail_base_epoch
        if self.tail_base < serial <= self.last:
            return self.tail[serial - self.tail_base - 1].epoch
        return None

    def _entries(self, first: int, last: int) -> tuple[Entry, ...]:
        return tuple(self.tail[first - self.tail_base - 1 : last - self.tail_base])

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def _reset(self, replica: ReplicaView) -> None:
        replica.next = replica.match + 1
        replica.inflight.clear()
        replica.reset_sequence = self._sequence

    def _send_read(
        self,
        purpose: ReadPurpose,
        replica: str,
        after: int,
        limit: int,
        owner: int,
        now_ms: int,
        effects: Effects,
        *,
        ids_only: bool = False,
    ) -> int:
        sequence = self._next_sequence()
        self.reads[sequence] = ReadInFlight(purpose, replica, now_ms, owner, after, limit)
        effects.sends.append(
            StoreSend(replica, ReadRequest(self.channel, self.epoch, after, limit, sequence, ids_only))
        )
        return sequence

    def _verified(self, after: int, reply: ReadReply) -> tuple[tuple[Entry, ...], int]:
        """The entries of a read reply that can be trusted, and the serial where it went bad (0: it
        did not). Trusted: contiguous from where the read starts (after `after`, or after the
        replica's base when that is later), each checksum intact (it covers serial and epoch), epochs
        never decreasing, and each entry we hold ourselves at the same epoch (rule 8). Whatever the
        replica says is damaged is cut off too."""
        if "unchecked-reads" in self.bugs:
            return reply.entries, 0  # a deliberate bug: whatever one replica said
        start = max(after, reply.base.serial)
        trusted: list[Entry] = []
        floor = 0
        for entry in reply.entries:
            ours = self.epoch_at(entry.serial)
            expected = start + 1 + len(trusted)
            if entry.serial != expected or not entry.intact() or entry.epoch < floor or ours not in (None, entry.epoch):
                return tuple(trusted), expected
            trusted.append(entry)
            floor = entry.epoch
        if reply.damaged:
            return tuple(entry for entry in trusted if entry.serial < reply.damaged), reply.damaged
        return tuple(trusted), 0

    def _note_damage(self, replica: ReplicaView, serial: int, where: str, effects: Effects) -> None:
        """`replica` is missing (or holds corrupt) the entry at `serial`: say so once, and, while we
        serve, rewrite it from there (rule 8) — it no longer counts as holding what follows."""
        if replica.damaged and replica.damaged <= serial:
            return
        replica.damaged = serial
        detail = f"entry {serial} is missing or corrupt ({where})"
        effects.replica_faults.append(ReplicaFault(self.channel, replica.name, "damaged", detail))
        if self.state is RoleState.SERVING and replica.match >= serial:
            replica.match = serial - 1
            self._reset(replica)

    def _enter(self, state: RoleState) -> None:
        """Move to `state`, which the transition table must allow from the current one."""
        invariant(
            state in TRANSITIONS[self.state], f"role {self.channel}: no transition {self.state.name} → {state.name}"
        )
        self.state = state

    # ------------------------------------------------------------------ what the concerns give each other
    # Each concern (takeover.py, replication.py, reads.py, retention.py) calls some of the others;
    # ChannelRole inherits them all, and these declarations are what a concern may call.

    def _publish(self, token: int, messages: tuple[Message, ...], now_ms: int, effects: Effects) -> None:
        raise NotImplementedError  # replication.py

    def _pump(self, now_ms: int, effects: Effects) -> None:
        raise NotImplementedError  # replication.py

    def _send_empty_append(self, replica: ReplicaView, now_ms: int, effects: Effects) -> None:
        raise NotImplementedError  # replication.py

    def _feed_subscribers(self, now_ms: int, effects: Effects) -> None:
        raise NotImplementedError  # reads.py

    def _answer_histories(self, now_ms: int, effects: Effects) -> None:
        raise NotImplementedError  # reads.py

    def _trim_tail(self) -> None:
        raise NotImplementedError  # retention.py

    def _fenced_out(self, replica: ReplicaView, fence_epoch: int, effects: Effects) -> bool:
        raise NotImplementedError  # replication.py

    def _stop(self, reason: str, effects: Effects) -> None:
        raise NotImplementedError  # channel_role.py
