"""The channel role: the state machine of one owner for one channel, at one epoch.

A role is created when a node takes a channel over, and it lives through four states:

    FENCING ──quorum of fence replies──▶ RECOVERING ──adopted log read──▶ SERVING
       │                                     │                              │
       └──────────────── FENCED, timeout, step-down ────────────────────────┴──▶ STOPPED

Rules, in the order they matter:

1. Fence before anything: every replica is told the new epoch, and a quorum must answer. A replica
   that has seen a higher epoch answers FENCED. Once a quorum has done so the role stops: it is
   stale. A minority cannot veto it (a corrupted fence, a takeover that fenced one replica and
   died): the role goes on with the others, sends the refusing replica nothing more, and reports it.
2. Adopt the most up-to-date log of the fence quorum (highest last epoch, then longest), read a
   bounded suffix of it, and rewrite its last entry at the role's own epoch. The role serves at once,
   but commit only moves when a quorum holds an entry of the role's epoch, so nothing older is
   declared committed on the strength of a log some earlier owner may have lost.
3. Rebuild the dedup window from that suffix, so a retry of a message stored under an earlier owner
   gets its original serial back instead of a second copy.
4. Assign serials contiguously; replicate to every replica with a pipelined, bounded window;
   acknowledge a publish only when its last serial is committed; deliver only committed entries,
   in serial order.
5. Repair each replica from where its log matches ours (Raft's match index), going back on every
   refusal until the logs agree; read entries we no longer hold in memory from a replica that is
   known to match that far.
6. Stop at once on FENCED, and when the node says the channel moved or the lease is gone: pending
   publishes fail with a retryable CHANNEL_MOVED, subscriptions end, and the role is dropped.
7. Retention: every append tells a replica our commit point (and an idle channel's replicas are
   told once more, `notify_commit`), so replicas can drop old committed entries. A replica
   that trimmed answers reads from after its base: a subscriber or history reader who asked for
   older entries gets an explicit gap (`gap_next_serial`), never a silent skip; a takeover adopts the
   base as its log's start; a replica that needs entries every other replica trimmed is reset to
   that base (an append `from_base`) and caught up from there.
8. Trust no single replica (Raft's log matching, applied to reads). Every read reply is checked:
   contiguous from where it starts, every checksum intact (it covers serial and epoch), epochs never
   decreasing, and every entry we hold ourselves at the same epoch. Only the trusted run before the
   first bad entry is used; the rest is read again from a replica that matches that far. The bad
   replica (and one that reports damage itself) is reported once and rewritten from its first bad
   serial like a lagging replica — it no longer counts as holding what follows — and a takeover
   never adopts a log it cannot read whole: it chooses again among the other fence answers.

The role does no I/O and reads no clock. Every method takes `now_ms` where time matters and adds
what must happen to an `Effects` object: requests for store replicas, publish results, deliveries.
"""

from __future__ import annotations

import enum
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ringcast.reasons import Reason
from services.core.entries import Entry, Message, Position
from services.core.invariants import invariant
from services.core.quorum import advance_commit, most_up_to_date, quorum_size
from services.core.replica_log import AppendReply, AppendStatus, FenceReply, ReadReply, ReplicaLog

BUG_NAMES = (
    "ack-before-quorum",
    "skip-fence",
    "no-epoch-check",
    "recover-from-one",
    "reset-dedup-on-takeover",
    "deliver-uncommitted",
    "adopt-highest-epoch-per-serial",
    "trim-uncommitted",
    "unchecked-reads",
)
"""Deliberate bugs, switchable for tests only, that the simulator's checker must catch."""


@dataclass(frozen=True, slots=True)
class RoleConfig:
    """Bounds and timeouts of a role. Every queue, window and retry here has a named limit."""

    replicas: tuple[str, ...] = ("store-a", "store-b", "store-c")
    dedup_window_ms: int = 120_000
    dedup_entries_max: int = 100_000
    recovery_read_entries_max: int = 100_000
    """How far back a takeover rebuilds the dedup window (entries before the adopted log's last)."""
    recovery_full_entries_max: int = 1_000
    """Of those, the newest this many are read whole (they become the in-memory tail); the older
    ones only as message ids and timestamps, which is all the dedup window needs and a fraction of
    the work (a busy channel holds tens of thousands of entries inside the window)."""
    recovery_ids_per_read: int = 10_000
    tail_entries_max: int = 10_000
    read_entries_max: int = 1_000
    append_entries_max: int = 256
    append_inflight_max: int = 4
    append_timeout_ms: int = 1_000
    takeover_timeout_ms: int = 3_000
    commit_stall_ms: int = 5_000
    """A role whose oldest pending publish has waited this long gives up (COMMIT_STALLED)."""
    read_timeout_ms: int = 1_000
    pending_entries_max: int = 10_000
    queued_publishes_max: int = 1_000
    subscribers_max: int = 10_000
    delivery_entries_max: int = 256
    commit_notice_ms: int = 1_000
    """A replica not told our latest commit point by an append is told by an empty one once this
    long has passed since the last append it got (`notify_commit`, on the node's sweep)."""
    bugs: frozenset[str] = frozenset()


class RoleState(enum.Enum):
    FENCING = "fencing"
    RECOVERING = "recovering"
    SERVING = "serving"
    STOPPED = "stopped"


# Requests to store replicas. Adapters turn them into RPCs and feed the replies back.
@dataclass(frozen=True, slots=True)
class FenceRequest:
    channel: str
    epoch: int


@dataclass(frozen=True, slots=True)
class AppendRequest:
    channel: str
    epoch: int
    prev: Position
    entries: tuple[Entry, ...]
    sequence: int
    commit: int = 0  # our commit point when sent: the replica learns what of its log is committed
    from_base: bool = False  # `prev` is another replica's base: reset a replica that lacks it
    owner_now_ms: int = 0  # our wall clock when sent: stores trim only what both clocks call old

    def apply_to(self, replica: ReplicaLog) -> AppendReply:
        """This append, applied by a replica's rules (what a store does with it)."""
        return replica.append(
            self.channel, self.epoch, self.prev, self.entries, commit=self.commit, from_base=self.from_base
        )


@dataclass(frozen=True, slots=True)
class ReadRequest:
    channel: str
    epoch: int
    after_serial: int
    limit: int
    sequence: int
    ids_only: bool = False  # only (message id, timestamp) per entry: ReadReply.ids


StoreRequest = FenceRequest | AppendRequest | ReadRequest


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish comes to. `reason` is an UPPER_SNAKE_CASE code when `ok` is false."""

    ok: bool
    serials: tuple[int, ...] = ()
    duplicates: tuple[bool, ...] = ()
    reason: str = ""
    retryable: bool = False
    maybe_stored: bool = False
    """False only when the messages certainly were not assigned serials by this attempt."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Committed entries for one subscription, in serial order; or its end, with a reason."""

    entries: tuple[Entry, ...] = ()
    end_reason: str = ""
    gap_next_serial: int = 0
    """Non-zero: the entries from the subscriber's next serial up to this one are no longer retained
    (they come before `entries`, which start here if any)."""


@dataclass(frozen=True, slots=True)
class HistoryResult:
    entries: tuple[Entry, ...] = ()
    reason: str = ""
    gap_next_serial: int = 0
    """Non-zero: the entries asked for before this serial are no longer retained."""


@dataclass(slots=True)
class Effects:
    """What the adapters must do, in order, after a call into a core."""

    sends: list[tuple[str, StoreRequest]] = field(default_factory=list)
    results: list[tuple[int, PublishResult]] = field(default_factory=list)
    deliveries: list[tuple[int, Delivery]] = field(default_factory=list)
    histories: list[tuple[int, HistoryResult]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    # Takeover steps, for traces: (channel, epoch, step, details); step is "fencing", "recovering",
    # "serving" or "failed".
    takeovers: list[tuple[str, int, str, dict[str, int | str]]] = field(default_factory=list)
    # Replicas found at fault, each reported once per role: (channel, replica, kind, detail); kind is
    # "fenced_out" (its fence is above our epoch while a quorum accepts us) or "damaged" (it answered a
    # read with a hole, a bad checksum or a wrong entry, or said itself that its log is damaged).
    replica_faults: list[tuple[str, str, str, str]] = field(default_factory=list)


class DedupWindow:
    """Message id → serial for the recent part of the log, bounded by age and by count.

    Ages are kept on the role's monotonic clock (`now_ms`), never read off a wall clock: an id is
    added with the monotonic time it was "born" at, and forgotten `window_ms` after it. An id a
    takeover rebuilds is born as much before the takeover as its message is older than the newest
    message adopted, so the window holds whatever this node's wall clock says (a node ahead by
    80 days must not forget every id it adopts: a retry would then be stored twice).
    """

    def __init__(self, window_ms: int, entries_max: int) -> None:
        self.window_ms = window_ms
        self.entries_max = entries_max
        self._serial_by_id: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._serial_by_id)

    def get(self, message_id: str) -> int | None:
        return self._serial_by_id.get(message_id)

    def add(self, message_id: str, serial: int, born_ms: int) -> None:
        """Remember `message_id` at `serial`, as of monotonic time `born_ms`."""
        self._serial_by_id[message_id] = serial
        self._order.append((born_ms, message_id))
        while len(self._order) > self.entries_max:
            self._forget_oldest()

    def expire(self, now_ms: int) -> None:
        """Forget the ids born more than the window before monotonic time `now_ms`."""
        horizon = now_ms - self.window_ms
        while self._order and self._order[0][0] < horizon:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, message_id = self._order.popleft()
        self._serial_by_id.pop(message_id, None)


@dataclass(slots=True)
class _Replica:
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


@dataclass(slots=True)
class _Pending:
    token: int
    last_serial: int
    serials: tuple[int, ...]
    duplicates: tuple[bool, ...]
    assigned_ms: int


@dataclass(slots=True)
class _Subscriber:
    next_serial: int
    read_sequence: int = 0


@dataclass(slots=True)
class _Read:
    """A read in flight: what it is for and where it went."""

    purpose: str  # "recover", "recover-ids", "backfill", "subscriber" or "history"
    replica: str
    sent_ms: int
    owner: int  # subscriber token, history token, or the serial a backfill is for
    after_serial: int
    limit: int
    target: str = ""  # for a backfill: the replica the entries are for


class ChannelRole:
    """One channel's owner at one epoch. See the module docstring for the rules."""

    def __init__(self, channel: str, epoch: int, config: RoleConfig, now_ms: int) -> None:
        invariant(epoch > 0, "epochs start at 1")
        self.channel = channel
        self.epoch = epoch
        self.config = config
        self.bugs = config.bugs
        self.state = RoleState.FENCING
        self.stop_reason = ""
        self.quorum = quorum_size(len(config.replicas))
        self.replicas = {name: _Replica(name) for name in config.replicas}
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
        self.pending: deque[_Pending] = deque()
        self.queued: deque[tuple[int, tuple[Message, ...]]] = deque()
        self.subscribers: dict[int, _Subscriber] = {}
        self.histories: dict[int, tuple[int, int]] = {}  # token → (after serial, limit), waiting
        self.reads: dict[int, _Read] = {}
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

    # ----------------------------------------------------------------------------- accessors

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

    # ----------------------------------------------------------------------------- takeover

    def start(self, fx: Effects, trigger: str = "request") -> None:
        """Begin the takeover: fence every replica at our epoch. `trigger` says why (for metrics, traces)."""
        self.trigger = trigger
        fence_epoch = 0 if "skip-fence" in self.bugs else self.epoch
        for name in self.config.replicas:
            fx.sends.append((name, FenceRequest(self.channel, fence_epoch)))
        fx.events.append(f"takeover {self.channel} epoch={self.epoch} fencing")
        fx.takeovers.append(
            (self.channel, self.epoch, "fencing", {"replicas": len(self.config.replicas), "trigger": trigger})
        )

    def on_fence_reply(self, replica: str, reply: FenceReply, now_ms: int, fx: Effects) -> None:
        if self.state not in (RoleState.FENCING, RoleState.RECOVERING) or replica not in self.replicas:
            return
        if reply.fenced and reply.fence_epoch > self.epoch:
            self._fenced_out(self.replicas[replica], reply.fence_epoch, fx)
            return
        invariant(reply.last.epoch < self.epoch or "skip-fence" in self.bugs, "no entry at our epoch yet")
        answering = self.replicas[replica]
        answering.fence_last = reply.last  # kept while recovering too: a re-adoption may need it
        if reply.damaged:
            self._note_damage(answering, reply.damaged, "reported by the replica", fx)
        self.progress_ms = now_ms
        if self.state is RoleState.FENCING:
            self._adopt(now_ms, fx)

    def _adopt(self, now_ms: int, fx: Effects) -> None:
        """Once a quorum answered the fence: adopt the most up-to-date log among the answers (rule 2).

        Any quorum of answers will do (all of them hold our fence), so replicas that reported damage
        are left out when the others still make a quorum, and a replica whose recovery read failed
        its checks is left out for the rest of this takeover; without a quorum of others we wait.
        """
        needed = 1 if "recover-from-one" in self.bugs else self.quorum
        answered = [r for r in self.replicas.values() if r.fence_last is not None and not r.unreadable]
        if len(answered) < needed:
            return
        sound = [r for r in answered if not r.damaged]
        if len(sound) >= needed:
            answered = sound
        self.state = RoleState.RECOVERING
        fx.takeovers.append((self.channel, self.epoch, "recovering", {"fence_answers": len(answered)}))
        lasts = [(r.name, r.fence_last) for r in answered if r.fence_last is not None]
        if "adopt-highest-epoch-per-serial" in self.bugs:
            sources = lasts
        else:
            # Replicas with the same last position hold the same log; which one to read from among
            # them is free, so channels take turns (by name) instead of all reading the first.
            turn = zlib.crc32(self.channel.encode()) % len(lasts)
            adopted = most_up_to_date(lasts[turn:] + lasts[:turn])
            sources = [(adopted, self.replicas[adopted].fence_last)]  # type: ignore[list-item]
        self._begin_recovery(sources, now_ms, fx)

    def _begin_recovery(self, sources: Sequence[tuple[str, Position | None]], now_ms: int, fx: Effects) -> None:
        """Read the adopted log's suffix: from `recovery_start` (its entry gives our base epoch)
        whole, and the dedup range before it as ids only."""
        targets = {name: last for name, last in sources if last is not None}
        invariant(len(targets) == len(sources), "every source answered its fence")
        self.recovered_last = max(last.serial for last in targets.values())
        full = min(self.config.recovery_full_entries_max, self.config.recovery_read_entries_max)
        self.recovery_start = max(0, self.recovered_last - full)
        self.recovery_ids_from = max(0, self.recovered_last - self.config.recovery_read_entries_max)
        if self.recovered_last == 0:
            self._install_recovered([], now_ms, fx)
            return
        after = max(0, self.recovery_start - 1)
        for name, target in targets.items():
            self.recovery[name] = []
            self.recovery_target[name] = target
            if target.serial > after:
                self._send_read("recover", name, after, target.serial - after, 0, now_ms, fx)
        if self.recovery_ids_from < self.recovery_start:
            self.recovery_ids_source = max(targets, key=lambda name: (targets[name].epoch, targets[name].serial))
            self._send_ids_read(now_ms, fx)

    def _send_ids_read(self, now_ms: int, fx: Effects) -> None:
        after = self.recovery_ids_from + len(self.recovery_ids)
        limit = min(self.config.recovery_ids_per_read, self.recovery_start - after)
        self._send_read("recover-ids", self.recovery_ids_source, after, limit, 0, now_ms, fx, ids_only=True)

    def _on_recovery_ids_read(self, read: _Read, reply: ReadReply, now_ms: int, fx: Effects) -> None:
        target = self.recovery_target.get(read.replica)
        after = read.after_serial
        if target is not None and reply.base.serial > after:
            # Trimmed: those entries are older than any dedup window (stores keep that much).
            self.recovery_ids = []
            self.recovery_ids_from = after = min(reply.base.serial, self.recovery_start)
        if target is None:
            self.stop(Reason.RECOVERY_READ_FAILED, fx)
            return
        if reply.damaged or (not reply.ids and after < self.recovery_start):
            self._recovery_source_damaged(read.replica, reply.damaged or after + 1, now_ms, fx)
            return
        if reply.last.serial < target.serial:
            self.stop(Reason.FENCED, fx)  # the adopted log got shorter under us: a later epoch is writing
            return
        self.recovery_ids.extend(reply.ids[: self.recovery_start - after])
        self.progress_ms = now_ms
        if self.recovery_ids_from + len(self.recovery_ids) < self.recovery_start:
            self._send_ids_read(now_ms, fx)
            return
        self._install_if_recovered(now_ms, fx)

    def _on_recovery_read(self, read: _Read, reply: ReadReply, now_ms: int, fx: Effects) -> None:
        name = read.replica
        target = self.recovery_target[name]
        got = self.recovery[name]
        base = reply.base
        if base.serial > target.serial or (base.serial == target.serial and base.epoch != target.epoch):
            self.stop(Reason.FENCED, fx)  # the adopted log moved on under us: a later epoch is writing
            return
        trimmed = base.serial > read.after_serial
        if trimmed and (got or name in self.recovery_base):
            self.stop(Reason.RECOVERY_READ_FAILED, fx)  # trimmed between our reads: start the takeover again
            return
        start = base.serial if trimmed else read.after_serial
        entries, damaged = self._verified(read.after_serial, reply)
        if (damaged and damaged <= target.serial) or (start < target.serial and not entries):
            self._recovery_source_damaged(name, damaged or start + 1, now_ms, fx)
            return
        entries = tuple(entry for entry in entries if entry.serial <= target.serial)
        if reply.last.serial < target.serial or any(
            entry.serial == target.serial and entry.epoch != target.epoch for entry in entries
        ):
            self.stop(Reason.FENCED, fx)  # the adopted log changed under us: a later epoch is writing
            return
        if trimmed:
            self.recovery_base[name] = base
        got.extend(entries)
        self.progress_ms = now_ms
        have = got[-1].serial if got else base.serial
        if have < target.serial:
            self._send_read("recover", name, have, target.serial - have, 0, now_ms, fx)
            return
        self._install_if_recovered(now_ms, fx)

    def _recovery_source_damaged(self, name: str, serial: int, now_ms: int, fx: Effects) -> None:
        """A recovery read from `name` came back with a hole, a bad checksum or a wrong entry: never
        adopt what cannot be read whole. Leave that replica out of this takeover, and choose again
        among the other answers (or wait for one more)."""
        replica = self.replicas[name]
        replica.unreadable = True
        self._note_damage(replica, serial, "read during takeover", fx)
        for sequence in [s for s, r in self.reads.items() if r.purpose in ("recover", "recover-ids")]:
            del self.reads[sequence]
        self.recovery.clear()
        self.recovery_target.clear()
        self.recovery_base.clear()
        self.recovery_ids, self.recovery_ids_source = [], ""
        self.state = RoleState.FENCING
        self._adopt(now_ms, fx)

    def _install_if_recovered(self, now_ms: int, fx: Effects) -> None:
        whole = all(self._recovered_enough(name) for name in self.recovery)
        ids = self.recovery_ids_from + len(self.recovery_ids) >= self.recovery_start
        if whole and ids and not any(r.purpose in ("recover", "recover-ids") for r in self.reads.values()):
            self._install_recovered(self._merge_recovered(), now_ms, fx)

    def _recovered_enough(self, name: str) -> bool:
        """Whether what we read of `name` reaches its target (true, too, when nothing was to be read;
        reads still in flight are checked apart)."""
        entries, base = self.recovery[name], self.recovery_base.get(name)
        if entries:
            return entries[-1].serial >= self.recovery_target[name].serial
        return base is None or base.serial >= self.recovery_target[name].serial

    def _merge_recovered(self) -> list[Entry]:
        """The adopted suffix. With the `adopt-highest-epoch-per-serial` bug: a per-serial merge."""
        if len(self.recovery) == 1:
            (entries,) = self.recovery.values()
            return entries
        by_serial: dict[int, Entry] = {}
        for entries in self.recovery.values():
            for entry in entries:
                held = by_serial.get(entry.serial)
                if held is None or entry.epoch > held.epoch:
                    by_serial[entry.serial] = entry
        merged: list[Entry] = []
        first = min(by_serial)
        while first + len(merged) in by_serial:
            merged.append(by_serial[first + len(merged)])
        return merged

    def _install_recovered(self, entries: list[Entry], now_ms: int, fx: Effects) -> None:
        """Make the adopted suffix our log, rewrite its last entry at our epoch, and serve."""
        trimmed_base = self.recovery_base.get(next(iter(self.recovery))) if len(self.recovery) == 1 else None
        if trimmed_base is not None:
            # The source had dropped everything up to here: committed, and where our log starts.
            self.tail_base, self.tail_base_epoch = trimmed_base.serial, trimmed_base.epoch
            self.commit = self.trimmed_through = trimmed_base.serial
            suffix = entries
        elif entries and self.recovery_start > 0:
            base, suffix = entries[0], entries[1:]
            self.tail_base, self.tail_base_epoch = base.serial, base.epoch
            invariant(bool(suffix), "a suffix read from after its base has entries")
        else:
            suffix = entries
        if suffix:
            invariant(suffix[0].serial == self.tail_base + 1, "adopted suffix follows its base")
            rewrite_from = suffix[-1].serial  # the last adopted entry: what moves commit to our epoch
            if "adopt-highest-epoch-per-serial" in self.bugs:
                # The merged suffix mixes logs, so the bug rewrites all of it past the common part.
                lasts = [r.fence_last.serial for r in self.replicas.values() if r.fence_last is not None]
                rewrite_from = max(min(lasts) + 1, suffix[0].serial)
            self.tail = [e if e.serial < rewrite_from else e.with_epoch(self.epoch) for e in suffix]
            self.tail_batch_last = [entry.serial for entry in self.tail]
            self.epoch_start_serial = min(rewrite_from, self.last)
        else:
            self.epoch_start_serial = self.last + 1  # nothing to rewrite: what we adopted is committed
        self.recovered_last = self.last
        tail_base = Position(self.tail_base, self.tail_base_epoch)
        matched_max = max(self.last - 1, 0) if suffix else self.last  # the rewritten entry matches nowhere yet
        for replica in self.replicas.values():
            replica.next = max(self.last, 1)
            fence_last = replica.fence_last
            if fence_last is not None and (_holds(entries, fence_last) or fence_last == tail_base):
                replica.match = min(fence_last.serial, matched_max)
                replica.next = replica.match + 1
            if replica.damaged and replica.match >= replica.damaged:
                replica.match = replica.damaged - 1  # rewritten from its first bad serial (rule 8)
                replica.next = replica.match + 1
        if "reset-dedup-on-takeover" not in self.bugs:
            # Ages relative to the newest message adopted, whatever our own wall clock says.
            newest_ms = max(
                [timestamp_ms for _, timestamp_ms in self.recovery_ids[-1:]]
                + [entry.message.timestamp_ms for entry in self.tail],
                default=0,
            )
            for offset, (message_id, timestamp_ms) in enumerate(self.recovery_ids):
                born_ms = now_ms - max(0, newest_ms - timestamp_ms)
                self.dedup.add(message_id, self.recovery_ids_from + 1 + offset, born_ms)
            for entry in self.tail:
                self.dedup.add(entry.message.id, entry.serial, now_ms - max(0, newest_ms - entry.message.timestamp_ms))
            self.dedup.expire(now_ms)
        self.recovery_ids = []
        self.state = RoleState.SERVING
        details: dict[str, int | str] = {
            "last": self.last,
            "adopted_entries": len(entries),
            "rewritten_at_epoch": self.last - self.epoch_start_serial + 1 if entries else 0,
            "dedup_ids": len(self.dedup),
            "trigger": self.trigger,
            "duration_ms": now_ms - self.started_ms,
        }
        fx.takeovers.append((self.channel, self.epoch, "serving", details))
        self.recovery.clear()
        self.recovery_target.clear()
        self.recovery_base.clear()
        fx.events.append(f"takeover {self.channel} epoch={self.epoch} serving last={self.last}")
        queued, self.queued = self.queued, deque()
        for token, messages in queued:
            self.publish(token, messages, now_ms, fx)
        self._pump(now_ms, fx)

    # ----------------------------------------------------------------------------- publishing

    def publish(self, token: int, messages: tuple[Message, ...], now_ms: int, fx: Effects) -> None:
        """Assign serials to a batch (atomically), or answer at once for duplicates."""
        self.last_activity_ms = now_ms
        if self.state is RoleState.STOPPED:
            fx.results.append((token, self._moved_result(False)))
            return
        if self.state is not RoleState.SERVING:
            if len(self.queued) >= self.config.queued_publishes_max:
                fx.results.append((token, PublishResult(False, reason=Reason.OWNER_OVERLOADED, retryable=True)))
            else:
                self.queued.append((token, messages))
            return
        if self._quorum_unreachable():
            # Fail fast: a quorum of replicas is known to be unreachable, so nothing could commit.
            fx.results.append((token, PublishResult(False, reason=Reason.QUORUM_UNAVAILABLE, retryable=True)))
            return
        uncommitted = self.last - max(self.commit, self.epoch_start_serial - 1)  # adopted entries do not count
        if uncommitted + len(messages) > self.config.pending_entries_max:
            fx.results.append((token, PublishResult(False, reason=Reason.OWNER_OVERLOADED, retryable=True)))
            return
        serials: list[int] = []
        duplicates: list[bool] = []
        seen_in_batch: dict[str, int] = {}
        first_new = self.last + 1
        for message in messages:
            original = self.dedup.get(message.id)
            if original is None:
                original = seen_in_batch.get(message.id)
            if original is not None:
                serials.append(original)
                duplicates.append(True)
                continue
            serial = self.last + 1
            entry = Entry.make(serial, self.epoch, message.stamped(now_ms + self.wall_offset_ms))
            self.tail.append(entry)
            self.tail_batch_last.append(0)  # filled in below, once the batch's end is known
            self.dedup.add(message.id, serial, now_ms)
            seen_in_batch[message.id] = serial
            serials.append(serial)
            duplicates.append(False)
        batch_last = self.last
        for index in range(first_new - self.tail_base - 1, len(self.tail)):
            self.tail_batch_last[index] = batch_last
        pending = _Pending(token, max(serials), tuple(serials), tuple(duplicates), now_ms)
        if "ack-before-quorum" in self.bugs or pending.last_serial <= self.commit:
            fx.results.append((token, PublishResult(True, pending.serials, pending.duplicates)))
        else:
            self.pending.append(pending)
        if batch_last >= first_new:
            self._pump(now_ms, fx)
            if "deliver-uncommitted" in self.bugs:
                self._feed_subscribers(now_ms, fx)

    def _moved_result(self, maybe_stored: bool) -> PublishResult:
        reason = self.stop_reason if self.stop_reason in (Reason.LEASE_LOST,) else Reason.CHANNEL_MOVED
        return PublishResult(False, reason=reason, retryable=True, maybe_stored=maybe_stored)

    # ----------------------------------------------------------------------------- replication

    def _pump(self, now_ms: int, fx: Effects) -> None:
        """Send every replica what it is missing, within its in-flight window."""
        if self.state is not RoleState.SERVING:
            return
        for replica in self.replicas.values():
            if replica.fenced_out or now_ms - replica.refused_ms < self.config.append_timeout_ms:
                continue
            while replica.next <= self.last and len(replica.inflight) < self.config.append_inflight_max:
                if replica.next - 1 < self.tail_base:
                    self._backfill(replica, now_ms, fx)
                    break
                first = replica.next
                end = min(self.last, first + self.config.append_entries_max - 1)
                end = max(end, self.tail_batch_last[end - self.tail_base - 1])  # whole batches only
                prev_epoch = self.epoch_at(first - 1)
                invariant(prev_epoch is not None, "prev within memory")
                assert prev_epoch is not None
                self._send_append(replica, Position(first - 1, prev_epoch), self._entries(first, end), now_ms, fx)

    def _send_append(
        self,
        replica: _Replica,
        prev: Position,
        entries: tuple[Entry, ...],
        now_ms: int,
        fx: Effects,
        *,
        from_base: bool = False,
    ) -> None:
        sequence = self._next_sequence()
        end = prev.serial + len(entries)
        replica.inflight[sequence] = (now_ms, end)
        replica.next = end + 1
        replica.told_commit, replica.sent_ms = self.commit, now_ms
        request = AppendRequest(
            self.channel, self.epoch, prev, entries, sequence, self.commit, from_base, now_ms + self.wall_offset_ms
        )
        fx.sends.append((replica.name, request))

    def _backfill(self, replica: _Replica, now_ms: int, fx: Effects) -> None:
        """`replica` needs entries older than our memory: read them from a replica that matches."""
        if any(read.target == replica.name for read in self.reads.values()):
            return
        first = replica.next
        sources = [r for r in self.replicas.values() if r is not replica and r.match >= first]
        if not sources:
            return  # no replica is known to match that far yet; the next tick asks again
        source = max(sources, key=lambda r: r.match)
        after = max(0, first - 2)  # include the entry before `first`: it is the append's prev
        limit = min(self.config.read_entries_max, min(source.match, self.tail_base) - after)
        sequence = self._send_read("backfill", source.name, after, limit, first, now_ms, fx)
        self.reads[sequence].target = replica.name

    def _on_backfill_read(self, read: _Read, reply: ReadReply, now_ms: int, fx: Effects) -> None:
        replica = self.replicas[read.target]
        first = read.owner
        entries, damaged = self._verified(read.after_serial, reply)
        if damaged:
            self._note_damage(self.replicas[read.replica], damaged, "read", fx)
        if replica.next != first:
            return  # the replica's needs moved on: the next pump asks again
        if reply.base.serial > read.after_serial:
            # The source dropped what the replica lacks: start the replica over from the source's base
            # (committed), then catch it up from there.
            if not entries or entries[0].serial == reply.base.serial + 1:
                self._send_append(replica, reply.base, entries, now_ms, fx, from_base=True)
            self._pump(now_ms, fx)
            return
        if not entries or entries[0].serial != read.after_serial + 1:
            return
        if first >= 2:
            prev, entries = entries[0].position, entries[1:]
        else:
            prev = Position(0, 0)
        if entries:
            self._send_append(replica, prev, entries, now_ms, fx)
        self._pump(now_ms, fx)

    def on_append_reply(
        self, replica_name: str, request: AppendRequest, reply: AppendReply, now_ms: int, fx: Effects
    ) -> None:
        replica = self.replicas.get(replica_name)
        if replica is None or self.state is not RoleState.SERVING:
            return
        replica.inflight.pop(request.sequence, None)
        replica.unreachable = False
        if reply.damaged:
            self._note_damage(replica, reply.damaged, "reported by the replica", fx)
        if reply.status is AppendStatus.OK:
            invariant(reply.match_serial <= self.last, "a replica cannot match beyond our log")
            self.trimmed_through = max(self.trimmed_through, reply.base.serial)
            holds = min(reply.match_serial, reply.damaged - 1) if reply.damaged else reply.match_serial
            if not reply.damaged and replica.damaged and holds >= replica.damaged:
                replica.damaged = 0  # rewritten: the replica knows of no damage up to here
            if holds > replica.match:
                replica.match = holds
                self._advance_commit(now_ms, fx)
        elif reply.status is AppendStatus.FENCED and reply.fence_epoch > self.epoch:
            if self._fenced_out(replica, reply.fence_epoch, fx):
                return
        elif reply.status is AppendStatus.MISMATCH:
            if request.sequence > replica.reset_sequence:
                self._rewind(replica, request, reply, fx)
        else:
            fx.events.append(f"append refused {self.channel} {replica_name} {reply.status.value} {reply.detail}")
            self._reset(replica)
            replica.refused_ms = now_ms  # sent again after append_timeout_ms, not at once in a loop
        self._pump(now_ms, fx)

    def _rewind(self, replica: _Replica, request: AppendRequest, reply: AppendReply, fx: Effects) -> None:
        """Move `replica.next` back to where its log may agree with ours (never below its match)."""
        if request.prev.serial <= replica.match:
            # A stale refusal: a later reply already showed the replica holds `prev`. (A replica
            # that lost synced entries would break G1's premise; it is repaired by hand.)
            return
        if reply.conflict_epoch == 0:
            next_serial = reply.last.serial + 1
        else:
            ours = self._last_serial_with_epoch(reply.conflict_epoch, request.prev.serial)
            next_serial = ours + 1 if ours is not None else reply.conflict_first_serial
        next_serial = min(next_serial, request.prev.serial)
        replica.next = max(next_serial, replica.match + 1, 1)
        replica.inflight.clear()
        replica.reset_sequence = self._sequence

    def _last_serial_with_epoch(self, epoch: int, below: int) -> int | None:
        """The last serial < `below` of ours with `epoch`, if our memory shows it.

        Epochs never decrease along a log, so a binary search over the tail finds it.
        """
        low, high = 0, min(below - 1, self.last) - self.tail_base  # tail indexes [low, high)
        while low < high:
            middle = (low + high) // 2
            if self.tail[middle].epoch <= epoch:
                low = middle + 1
            else:
                high = middle
        if low > 0 and self.tail[low - 1].epoch == epoch:
            return self.tail_base + low
        if low == 0 and self.tail_base_epoch == epoch and self.tail_base > 0:
            return self.tail_base
        return None

    def _reset(self, replica: _Replica) -> None:
        replica.next = replica.match + 1
        replica.inflight.clear()
        replica.reset_sequence = self._sequence

    def _fenced_out(self, replica: _Replica, fence_epoch: int, fx: Effects) -> bool:
        """`replica` holds a fence above our epoch. That proves a newer owner only once a quorum says
        so: a newer owner must fence a quorum before it can do anything, and then no quorum is left
        for us. One replica alone (a corrupted fence, a takeover that fenced it and died) cannot
        veto us; we go on with the others, which is safe for the same reason as going on without a
        replica that does not answer: every commit still needs a quorum at our epoch."""
        if not replica.fenced_out:
            replica.fenced_out = fence_epoch
            detail = f"its fence {fence_epoch} is above our epoch {self.epoch}"
            fx.replica_faults.append((self.channel, replica.name, "fenced_out", detail))
        fenced = sum(1 for other in self.replicas.values() if other.fenced_out)
        if fenced > len(self.replicas) - self.quorum:
            self.stop(Reason.FENCED, fx)
            return True
        self._reset(replica)  # nothing more is sent to it: it would refuse everything at our epoch
        self._fail_without_quorum(fx)
        return False

    def _quorum_unreachable(self) -> bool:
        unreachable = sum(1 for replica in self.replicas.values() if replica.unreachable or replica.fenced_out)
        return unreachable > len(self.replicas) - self.quorum

    def _mark_unreachable(self, replica: _Replica, fx: Effects) -> None:
        """Note a replica as unreachable; when that leaves no quorum, fail what waits for one.

        The publishes waiting fail with a retryable QUORUM_UNAVAILABLE (maybe stored: their entries
        stay in our log and may still commit, which a retry with the same ids then finds).
        """
        replica.unreachable = True
        self._fail_without_quorum(fx)

    def _fail_without_quorum(self, fx: Effects) -> None:
        if not self._quorum_unreachable():
            return
        for pending in self.pending:
            fx.results.append(
                (
                    pending.token,
                    PublishResult(False, reason=Reason.QUORUM_UNAVAILABLE, retryable=True, maybe_stored=True),
                )
            )
        self.pending.clear()

    def _probe(self, replica: _Replica, now_ms: int, fx: Effects) -> None:
        """An empty append to an unreachable replica that has nothing to catch up: any reply clears it."""
        if now_ms - replica.probed_ms < self.config.append_timeout_ms:
            return
        replica.probed_ms = now_ms
        self._send_empty_append(replica, now_ms, fx)

    def _send_empty_append(self, replica: _Replica, now_ms: int, fx: Effects) -> None:
        """An append of nothing after our last entry: a probe, or a commit notice."""
        prev_epoch = self.epoch_at(self.last)
        invariant(prev_epoch is not None, "our last entry is in memory")
        assert prev_epoch is not None
        self._send_append(replica, Position(self.last, prev_epoch), (), now_ms, fx)

    def _advance_commit(self, now_ms: int, fx: Effects) -> None:
        matches = [replica.match for replica in self.replicas.values()]
        commit = advance_commit(self.commit, matches, self.quorum, self.epoch_start_serial)
        if commit == self.commit:
            return
        invariant(commit <= self.last, "commit within the log")
        self.commit = commit
        while self.pending and self.pending[0].last_serial <= commit:
            done = self.pending.popleft()
            if "ack-before-quorum" not in self.bugs:
                fx.results.append((done.token, PublishResult(True, done.serials, done.duplicates)))
        self._feed_subscribers(now_ms, fx)
        self._answer_histories(now_ms, fx)
        self._trim_tail()

    def _trim_tail(self) -> None:
        """Keep the in-memory log bounded; only committed entries are dropped."""
        excess = len(self.tail) - self.config.tail_entries_max
        if excess <= self.config.tail_entries_max // 4:
            return
        drop = min(excess, self.commit - self.tail_base)
        if drop <= 0:
            return
        self.tail_base_epoch = self.tail[drop - 1].epoch
        self.tail_base += drop
        del self.tail[:drop]
        del self.tail_batch_last[:drop]

    # ----------------------------------------------------------------------------- reading

    def subscribe(self, token: int, after_serial: int, now_ms: int, fx: Effects) -> None:
        """Deliver every committed entry after `after_serial`, in order, then live ones."""
        self.last_activity_ms = now_ms
        if self.state is RoleState.STOPPED:
            fx.deliveries.append((token, Delivery(end_reason=Reason.CHANNEL_MOVED)))
            return
        if token not in self.subscribers and len(self.subscribers) >= self.config.subscribers_max:
            fx.deliveries.append((token, Delivery(end_reason=Reason.TOO_MANY_SUBSCRIBERS)))
            return
        self.subscribers[token] = _Subscriber(max(after_serial, 0) + 1)
        self._feed_subscribers(now_ms, fx)

    def unsubscribe(self, token: int) -> None:
        self.subscribers.pop(token, None)

    def _visible(self) -> int:
        """The last serial subscribers may see: the commit point (or the log end, when buggy)."""
        return self.last if "deliver-uncommitted" in self.bugs else self.commit

    def _feed_subscribers(self, now_ms: int, fx: Effects) -> None:
        if self.state is not RoleState.SERVING:
            return
        visible = self._visible()
        for token, subscriber in self.subscribers.items():
            if subscriber.next_serial <= self.trimmed_through and not subscriber.read_sequence:
                subscriber.next_serial = self.trimmed_through + 1
                fx.deliveries.append((token, Delivery(gap_next_serial=subscriber.next_serial)))
            while subscriber.next_serial <= visible and not subscriber.read_sequence:
                first = subscriber.next_serial
                if first > self.tail_base:
                    end = min(visible, first + self.config.delivery_entries_max - 1)
                    fx.deliveries.append((token, Delivery(self._entries(first, end))))
                    subscriber.next_serial = end + 1
                else:
                    limit = min(self.tail_base, visible) - (first - 1)
                    subscriber.read_sequence = self._read_committed("subscriber", token, first - 1, limit, now_ms, fx)
                    if not subscriber.read_sequence:
                        break  # no replica is known to match that far yet; the next tick tries again

    def read_history(self, token: int, after_serial: int, limit: int, now_ms: int, fx: Effects) -> None:
        """Committed entries after `after_serial`, at most `limit` (bounded by read_entries_max)."""
        self.last_activity_ms = now_ms
        limit = max(0, min(limit, self.config.read_entries_max))
        if self.state is RoleState.STOPPED:
            fx.histories.append((token, HistoryResult(reason=Reason.CHANNEL_MOVED)))
            return
        self.histories[token] = (max(after_serial, 0), limit)
        self._answer_histories(now_ms, fx)

    def _answer_histories(self, now_ms: int, fx: Effects) -> None:
        if self.state is not RoleState.SERVING or self.commit < self.recovered_last:
            return  # until our rewrite of the adopted log is on a quorum, commit is unknown
        for token, (asked_after, limit) in list(self.histories.items()):
            if any(read.owner == token and read.purpose == "history" for read in self.reads.values()):
                continue
            after = max(asked_after, self.trimmed_through)
            gap = after + 1 if after > asked_after else 0
            end = min(self.commit, after + limit)
            if after >= end:
                del self.histories[token]
                fx.histories.append((token, HistoryResult((), gap_next_serial=gap)))
            elif after >= self.tail_base:
                del self.histories[token]
                fx.histories.append((token, HistoryResult(self._entries(after + 1, end), gap_next_serial=gap)))
            else:
                self._read_committed("history", token, after, min(end, self.tail_base) - after, now_ms, fx)

    def _read_committed(self, purpose: str, owner: int, after: int, limit: int, now_ms: int, fx: Effects) -> int:
        """Read committed entries we no longer hold from the replica that matches us furthest."""
        source = max(self.replicas.values(), key=lambda r: r.match)
        limit = min(limit, self.config.read_entries_max, source.match - after)
        if limit <= 0:
            return 0
        return self._send_read(purpose, source.name, after, limit, owner, now_ms, fx)

    def _send_read(
        self,
        purpose: str,
        replica: str,
        after: int,
        limit: int,
        owner: int,
        now_ms: int,
        fx: Effects,
        *,
        ids_only: bool = False,
    ) -> int:
        sequence = self._next_sequence()
        self.reads[sequence] = _Read(purpose, replica, now_ms, owner, after, limit)
        fx.sends.append((replica, ReadRequest(self.channel, self.epoch, after, limit, sequence, ids_only)))
        return sequence

    def on_read_reply(self, replica: str, request: ReadRequest, reply: ReadReply, now_ms: int, fx: Effects) -> None:
        read = self.reads.pop(request.sequence, None)
        if read is None or read.replica != replica or self.state is RoleState.STOPPED:
            return
        if read.purpose == "recover":
            self._on_recovery_read(read, reply, now_ms, fx)
        elif read.purpose == "recover-ids":
            self._on_recovery_ids_read(read, reply, now_ms, fx)
        elif read.purpose == "backfill":
            self._on_backfill_read(read, reply, now_ms, fx)
        elif read.purpose == "subscriber":
            self._on_subscriber_read(read, reply, now_ms, fx)
        else:
            self._on_history_read(read, reply, now_ms, fx)

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

    def _note_damage(self, replica: _Replica, serial: int, where: str, fx: Effects) -> None:
        """`replica` is missing (or holds corrupt) the entry at `serial`: say so once, and, while we
        serve, rewrite it from there (rule 8) — it no longer counts as holding what follows."""
        if replica.damaged and replica.damaged <= serial:
            return
        replica.damaged = serial
        detail = f"entry {serial} is missing or corrupt ({where})"
        fx.replica_faults.append((self.channel, replica.name, "damaged", detail))
        if self.state is RoleState.SERVING and replica.match >= serial:
            replica.match = serial - 1
            self._reset(replica)

    def _checked_committed(self, read: _Read, reply: ReadReply, fx: Effects) -> tuple[tuple[Entry, ...], int] | None:
        """The reply's committed entries that can be trusted, with the serial they resume at when the
        replica no longer holds the first ones asked for (else 0); None when nothing in it can be
        used (the read is then made again, from a replica that matches: this one no longer does)."""
        gap = reply.base.serial + 1 if reply.base.serial > read.after_serial else 0
        entries, damaged = self._verified(read.after_serial, reply)
        if not entries and not gap and not damaged:
            damaged = max(read.after_serial, reply.base.serial) + 1  # nothing, where it should hold entries
        if damaged:
            self._note_damage(self.replicas[read.replica], damaged, "read", fx)
        entries = tuple(entry for entry in entries if entry.serial <= self.commit)
        if not entries and not gap:
            return None
        return entries, gap

    def _on_subscriber_read(self, read: _Read, reply: ReadReply, now_ms: int, fx: Effects) -> None:
        subscriber = self.subscribers.get(read.owner)
        if subscriber is None or subscriber.read_sequence == 0:
            return
        subscriber.read_sequence = 0
        checked = self._checked_committed(read, reply, fx)
        if checked and subscriber.next_serial == read.after_serial + 1:
            entries, gap = checked
            if entries or gap:
                fx.deliveries.append((read.owner, Delivery(entries, gap_next_serial=gap)))
                subscriber.next_serial = entries[-1].serial + 1 if entries else gap
        self._feed_subscribers(now_ms, fx)

    def _on_history_read(self, read: _Read, reply: ReadReply, now_ms: int, fx: Effects) -> None:
        if read.owner not in self.histories:
            return
        checked = self._checked_committed(read, reply, fx)
        if checked is None:
            return  # retried by the next call to _answer_histories
        entries, gap = checked
        asked_after, _ = self.histories.pop(read.owner)
        resumes_after = gap - 1 if gap else read.after_serial  # later than asked when trimmed
        gap = resumes_after + 1 if resumes_after > asked_after else 0
        fx.histories.append((read.owner, HistoryResult(entries, gap_next_serial=gap)))

    # ----------------------------------------------------------------------------- failures & time

    def on_store_error(self, replica_name: str, request: StoreRequest, now_ms: int, fx: Effects) -> None:
        """A request failed in transport (unreachable, deadline exceeded)."""
        if isinstance(request, AppendRequest):
            replica = self.replicas.get(replica_name)
            if replica is not None and request.sequence in replica.inflight:
                self._reset(replica)
                self._mark_unreachable(replica, fx)
        elif isinstance(request, ReadRequest):
            self._fail_read(request.sequence, now_ms, fx)

    def _fail_read(self, sequence: int, now_ms: int, fx: Effects) -> None:
        read = self.reads.pop(sequence, None)
        if read is None:
            return
        if read.purpose in ("recover", "recover-ids"):
            self.stop(Reason.RECOVERY_READ_FAILED, fx)
        elif read.purpose == "subscriber":
            subscriber = self.subscribers.get(read.owner)
            if subscriber is not None:
                subscriber.read_sequence = 0

    def notify_commit(self, now_ms: int, fx: Effects) -> bool:
        """Tell each replica our commit point where the last append it got carried an older one and
        went out `commit_notice_ms` ago or more (an empty append): so an idle channel's last
        entries can be trimmed too. The node calls it on its sweep; True when something was sent."""
        if self.state is not RoleState.SERVING:
            return False
        sent = False
        for replica in self.replicas.values():
            owed = replica.told_commit < self.commit and not replica.inflight and replica.next > self.last
            if (
                owed
                and not replica.unreachable
                and not replica.fenced_out
                and now_ms - replica.sent_ms >= self.config.commit_notice_ms
            ):
                self._send_empty_append(replica, now_ms, fx)
                sent = True
        return sent

    @property
    def quorum_lost(self) -> bool:
        """Serving, with no quorum of replicas within reach (its publishes fail fast)."""
        return self.state is RoleState.SERVING and self._quorum_unreachable()

    @property
    def quiet(self) -> bool:
        """True when nothing here waits on time: a tick would do nothing until an event arrives.

        The node ticks only roles that are not quiet, so the cost of a tick follows the channels
        with work in flight, not every channel held (10,000 idle channels cost nothing per tick).
        """
        if self.state is not RoleState.SERVING:
            return self.state is RoleState.STOPPED
        if self.pending or self.queued or self.reads or self.histories:
            return False
        last = self.last
        for replica in self.replicas.values():
            if replica.fenced_out:
                continue
            if replica.inflight or replica.unreachable or replica.next <= last:
                return False
        visible = self._visible()
        return all(subscriber.next_serial > visible for subscriber in self.subscribers.values())

    def tick(self, now_ms: int, fx: Effects) -> None:
        """Time passes: take-over deadline, append and read retransmissions, dedup expiry."""
        if self.state is RoleState.STOPPED:
            return
        if self.state is not RoleState.SERVING:
            if now_ms - self.progress_ms > self.config.takeover_timeout_ms:
                self.stop(Reason.TAKEOVER_TIMEOUT, fx)
            return
        if self.pending and now_ms - self.pending[0].assigned_ms > self.config.commit_stall_ms:
            # Alive but failing: its replicas do not answer in time. Holding the channel would only
            # keep publishes waiting; stepping down lets the node decide whether to leave the ring.
            self.stop(Reason.COMMIT_STALLED, fx)
            return
        for replica in self.replicas.values():
            if replica.fenced_out:
                continue
            if replica.inflight:
                oldest = min(sent for sent, _ in replica.inflight.values())
                if now_ms - oldest > self.config.append_timeout_ms:
                    self._reset(replica)
                    self._mark_unreachable(replica, fx)
            elif replica.unreachable and replica.next > self.last:
                self._probe(replica, now_ms, fx)
        for sequence, read in list(self.reads.items()):
            if now_ms - read.sent_ms > self.config.read_timeout_ms:
                self._fail_read(sequence, now_ms, fx)
        self.dedup.expire(now_ms)
        self._pump(now_ms, fx)
        self._feed_subscribers(now_ms, fx)
        self._answer_histories(now_ms, fx)

    def stop(self, reason: str, fx: Effects) -> None:
        """Stop serving at once: fail what is pending, end every subscription."""
        if self.state is RoleState.STOPPED:
            return
        if self.state is not RoleState.SERVING:
            fx.takeovers.append((self.channel, self.epoch, "failed", {"reason": reason, "trigger": self.trigger}))
        self.state = RoleState.STOPPED
        self.stop_reason = reason
        for pending in self.pending:
            fx.results.append((pending.token, self._moved_result(True)))
        for token, _ in self.queued:
            fx.results.append((token, self._moved_result(False)))
        for token in self.subscribers:
            fx.deliveries.append((token, Delivery(end_reason=Reason.CHANNEL_MOVED)))
        for token in self.histories:
            fx.histories.append((token, HistoryResult(reason=Reason.CHANNEL_MOVED)))
        self.pending.clear()
        self.queued.clear()
        self.subscribers.clear()
        self.histories.clear()
        self.reads.clear()
        fx.events.append(f"stepped down {self.channel} epoch={self.epoch} reason={reason}")


def _holds(entries: Sequence[Entry], position: Position) -> bool:
    """True when `entries` (a contiguous run of a log) hold `position`; the origin always is."""
    if position.serial == 0:
        return True
    if not entries or not entries[0].serial <= position.serial <= entries[-1].serial:
        return False
    index = position.serial - entries[0].serial
    invariant(index < len(entries) and entries[index].serial == position.serial, "a run of a log is contiguous")
    return entries[index].epoch == position.epoch
