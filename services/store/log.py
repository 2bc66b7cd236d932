"""The replica log rules: what one store replica accepts into a channel's log, and what it answers.

Rules (DESIGN §3), for one channel X on one replica:

1. `fence(X, E)` raises fence[X] to max(fence[X], E) and answers the replica's last (serial, epoch).
   If fence[X] is already above E the answer is FENCED: the caller is a stale owner.
2. `append(X, E, prev, entries)` is rejected with FENCED when E < fence[X]; otherwise it raises
   fence[X] to E. It is refused with MISMATCH unless the log holds `prev` (the (serial, epoch) of the
   entry just before the first new one): the replica never accepts an entry that does not continue
   its log. The refusal carries the replica's last position and, when the replica holds a different
   entry at prev.serial, that entry's epoch and the first serial of that epoch in the log, so the
   owner can jump back to the point where the logs agree (Raft's fast log backtracking).
3. An accepted append skips the entries the log already holds at the same (serial, epoch) — by the
   log matching property they are the same entries — and truncates the log at the first entry that
   conflicts, then writes the rest. So a late duplicate of an old append never truncates anything.
4. Logs are contiguous from serial 1, and epochs never decrease along a log. Entries whose checksum
   does not match their content are refused whole (CORRUPT), and so are appends that break
   contiguity or epoch order (INVALID): bad input never changes the log.

5. Retention: a replica drops the oldest entries of a channel's log (`trim`), but only entries it
   knows are committed — an accepted append carries the owner's commit point, and the replica's log
   matches the owner's up to the append's end, so `committed` is the smaller of the two — and never
   one younger than `Retention.keep_recent_ms` (the dedup window: a retry must still find its id).
   The log then starts after its `base`, the position of the last dropped entry. Committed entries
   are never truncated, so an append whose `prev` lies below the base skips the entries up to it
   (the owner holds the same ones); a read from below the base starts after it and says so.
6. An append marked `from_base` carries a `prev` the owner read as another replica's base, i.e. a
   committed position. A replica that does not hold `prev` drops its whole log and starts after
   `prev`: it was too far behind to be caught up entry by entry from replicas that trimmed.

The rules are plain code over a `LogStorage` (what an engine provides: SQLite, Redis, or the
in-memory engine below). They do no I/O of their own; making writes durable before the reply leaves
the replica is the adapter's job.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.entries import ORIGIN, Entry, Position
from services.common.invariants import invariant

read_entries_max = 1_000
"""Upper bound on the entries one read returns, whatever the caller asked for."""

ids_read_max = 10_000
"""Message ids one ids-only read returns at most."""


COMMIT_ID_KEY = "ringcast-commit-id"
"""Trailing metadata of a store's write replies: the number of the group commit that made it durable."""
COMMIT_REQUESTS_KEY = "ringcast-commit-requests"
"""... how many requests that commit carried."""
COMMIT_MS_KEY = "ringcast-commit-ms"
"""... how long the commit (its sync to disk) took, in milliseconds."""


class AppendStatus(enum.Enum):
    OK = "ok"
    FENCED = "fenced"
    MISMATCH = "mismatch"
    CORRUPT = "corrupt"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class FenceReply:
    fenced: bool
    fence_epoch: int
    last: Position


@dataclass(frozen=True, slots=True)
class AppendReply:
    status: AppendStatus
    fence_epoch: int
    last: Position
    match_serial: int = 0
    """On OK: the log matches the owner's up to here (prev.serial + len(entries))."""
    conflict_epoch: int = 0
    """On MISMATCH: the epoch of the replica's own entry at prev.serial (0 when it has none)."""
    conflict_first_serial: int = 0
    """On MISMATCH: the first serial in the replica's log with `conflict_epoch`."""
    detail: str = ""
    base: Position = ORIGIN
    """On OK: the position the replica's retained log follows (what it trimmed, rule 5)."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of each channel's log a replica keeps (DESIGN §7): entries older than `age_ms`, or
    beyond the newest `entries_max`, are dropped, as long as they are committed and older than
    `keep_recent_ms`. One `trim` call looks at `scan_max` entries at most."""

    age_ms: int = 72 * 3_600_000
    entries_max: int = 1_000_000
    keep_recent_ms: int = 120_000
    scan_max: int = 1_000


@dataclass(frozen=True, slots=True)
class ReadReply:
    entries: tuple[Entry, ...]
    last: Position
    corrupt: bool = False
    base: Position = ORIGIN
    """The position the replica's retained log follows: a read from below it starts after it."""
    ids: tuple[tuple[str, int], ...] = ()
    """For an ids-only read: (message id, timestamp ms) of each entry after the read's serial, in
    order, and no `entries`. Checksums are not checked on this path (they cover the whole message):
    a corrupt id can at worst let one retried message be stored twice, never lose or reorder one."""


class LogStorage(Protocol):
    """What a storage engine provides to the rules, for one replica. Calls never fail silently."""

    def fence_of(self, channel: str) -> int: ...

    def set_fence(self, channel: str, epoch: int) -> None: ...

    def last(self, channel: str) -> Position: ...

    def epoch_at(self, channel: str, serial: int) -> int | None:
        """Epoch of the entry at `serial`; 0 for serial 0; None when the log does not reach it."""
        ...

    def first_serial_of_epoch(self, channel: str, epoch: int) -> int:
        """The first retained serial with `epoch` (the base's serial when the base has it)."""
        ...

    def truncate_after(self, channel: str, serial: int) -> None: ...

    def extend(self, channel: str, entries: Sequence[Entry]) -> None: ...

    def read(self, channel: str, after_serial: int, limit: int) -> list[Entry]: ...

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[str, int]]:
        """(message id, timestamp ms) of the entries `read` would return."""
        ...

    def base(self, channel: str) -> Position:
        """The position the retained log follows (ORIGIN until something is trimmed). `last` is the
        base when no entry is retained; `epoch_at` knows the base's epoch and nothing below it."""
        ...

    def drop_through(self, channel: str, base: Position) -> None:
        """Drop every entry up to `base.serial`; the log then follows `base`."""
        ...

    def committed(self, channel: str) -> int:
        """The highest serial this replica knows to be committed (0: none known)."""
        ...

    def set_committed(self, channel: str, serial: int) -> None: ...

    def channels_after(self, channel: str, count: int) -> list[str]:
        """Up to `count` channel names after `channel` ("" for the first), in order."""
        ...


class ReplicaLog:
    """The rules of DESIGN §3 over one replica's storage."""

    def __init__(self, storage: LogStorage, *, bugs: frozenset[str] = frozenset()) -> None:
        self.storage = storage
        # `no-epoch-check` is a deliberate bug for the simulator's self-test: accept stale appends.
        self._check_epoch = "no-epoch-check" not in bugs
        # `trim-uncommitted`, another: trim by count alone, without knowing the entries are committed.
        self._trim_committed_only = "trim-uncommitted" not in bugs

    def fence(self, channel: str, epoch: int) -> FenceReply:
        fence = self.storage.fence_of(channel)
        if fence > epoch:
            return FenceReply(True, fence, self.storage.last(channel))
        if epoch > fence:
            self.storage.set_fence(channel, epoch)
        return FenceReply(False, epoch, self.storage.last(channel))

    def append(
        self,
        channel: str,
        epoch: int,
        prev: Position,
        entries: Sequence[Entry],
        *,
        commit: int = 0,
        from_base: bool = False,
    ) -> AppendReply:
        """Rules 2, 3, 5 and 6; `commit` is the owner's commit point when it sent the append."""
        storage = self.storage
        fence = storage.fence_of(channel)
        if epoch < fence and self._check_epoch:
            return AppendReply(AppendStatus.FENCED, fence, storage.last(channel))
        problem = _malformed(epoch, prev, entries)
        if problem:
            status = AppendStatus.CORRUPT if problem == "checksum" else AppendStatus.INVALID
            return AppendReply(status, fence, storage.last(channel), detail=problem)
        base = storage.base(channel)
        end = prev.serial + len(entries)
        if prev.serial < base.serial:
            # Entries up to the base were committed when they were dropped: the owner holds the same
            # messages (the one at the base perhaps restamped by a later takeover, see below).
            skipped = base.serial - prev.serial
            if skipped > len(entries):
                entries = ()
            else:
                prev, entries = Position(base.serial, entries[skipped - 1].epoch), entries[skipped:]
        if prev.serial == base.serial and prev.epoch < base.epoch:
            # An older stamp of a committed entry we dropped: never in the log of a current owner.
            return AppendReply(AppendStatus.INVALID, fence, storage.last(channel), detail="trimmed")
        if epoch > fence:
            storage.set_fence(channel, epoch)
            fence = epoch
        if not entries and prev.serial < base.serial:
            self._learn_commit(channel, commit, end)
            return AppendReply(AppendStatus.OK, fence, storage.last(channel), match_serial=end, base=base)
        if prev.serial == base.serial and prev.epoch > base.epoch:
            # A takeover rewrote its last adopted entry at its own epoch (role rule 2): when that entry
            # was one we had trimmed as committed, it is the same message with a newer stamp. Take the
            # stamp; what we hold after the base was written at older epochs and is not the owner's.
            storage.truncate_after(channel, base.serial)
            storage.drop_through(channel, prev)
            base = prev
        held_epoch = storage.epoch_at(channel, prev.serial)
        if from_base and held_epoch != prev.epoch:
            storage.truncate_after(channel, prev.serial)
            storage.drop_through(channel, prev)
            base, held_epoch = prev, prev.epoch
        last = storage.last(channel)
        if held_epoch != prev.epoch:
            if held_epoch is None:
                return AppendReply(AppendStatus.MISMATCH, fence, last)
            return AppendReply(
                AppendStatus.MISMATCH,
                fence,
                last,
                conflict_epoch=held_epoch,
                conflict_first_serial=storage.first_serial_of_epoch(channel, held_epoch),
            )
        first_new = self._first_not_held(channel, entries, last)
        if first_new < len(entries):
            if entries[first_new].serial <= last.serial:
                storage.truncate_after(channel, entries[first_new].serial - 1)
            storage.extend(channel, entries[first_new:])
        self._learn_commit(channel, commit, end)
        return AppendReply(AppendStatus.OK, fence, storage.last(channel), match_serial=end, base=base)

    def _learn_commit(self, channel: str, commit: int, match_serial: int) -> None:
        known = min(commit, match_serial)
        if known > self.storage.committed(channel):
            self.storage.set_committed(channel, known)

    def trim(self, channel: str, wall_now_ms: int, retention: Retention) -> int:
        """Rule 5 for one channel: drop what retention no longer keeps, looking at `scan_max`
        entries at most. Returns how many were dropped (`scan_max` means: call again)."""
        storage = self.storage
        base, last = storage.base(channel), storage.last(channel)
        committed = storage.committed(channel) if self._trim_committed_only else last.serial
        limit = min(committed, last.serial, base.serial + retention.scan_max)
        by_count = last.serial - retention.entries_max

        def droppable(serial: int, timestamp_ms: int) -> bool:
            age_ms = wall_now_ms - timestamp_ms
            if age_ms < retention.keep_recent_ms and self._trim_committed_only:
                return False
            return serial <= by_count or age_ms >= retention.age_ms

        # The oldest entry first: most passes over most channels stop there, having read one id.
        if limit <= base.serial or not droppable(base.serial + 1, storage.read_ids(channel, base.serial, 1)[0][1]):
            return 0
        through = base.serial + 1
        for _, timestamp_ms in storage.read_ids(channel, through, limit - through):
            if not droppable(through + 1, timestamp_ms):
                break
            through += 1
        epoch = storage.epoch_at(channel, through)
        invariant(epoch is not None, "a retained entry has an epoch")
        assert epoch is not None
        storage.drop_through(channel, Position(through, epoch))
        return through - base.serial

    def _first_not_held(self, channel: str, entries: Sequence[Entry], last: Position) -> int:
        """Index of the first entry the log does not already hold at the same (serial, epoch).

        Holding an entry at the same position implies holding every entry before it (log
        matching), so "held" is a prefix of `entries` and a binary search finds its end.
        """
        overlap = 0
        while overlap < len(entries) and entries[overlap].serial <= last.serial:
            overlap += 1
        low, high = 0, overlap
        while low < high:
            middle = (low + high) // 2
            if self.storage.epoch_at(channel, entries[middle].serial) == entries[middle].epoch:
                low = middle + 1
            else:
                high = middle
        return low

    def read(self, channel: str, after_serial: int, limit: int, *, bytes_max: int | None = None) -> ReadReply:
        """At most `limit` entries after `after_serial`; with `bytes_max`, only as many as fit in that
        much message data, but never fewer than one (so a reader always makes progress)."""
        limit = max(0, min(limit, read_entries_max))
        base = self.storage.base(channel)
        entries = self.storage.read(channel, max(after_serial, base.serial), limit)
        if bytes_max is not None:
            size = 0
            for index, entry in enumerate(entries):
                size += len(entry.message.data)
                if index and size > bytes_max:
                    del entries[index:]
                    break
        corrupt = not all(entry.intact() for entry in entries)
        return ReadReply(tuple(entries), self.storage.last(channel), corrupt, base)

    def read_ids(self, channel: str, after_serial: int, limit: int) -> ReadReply:
        """At most `limit` (message id, timestamp) pairs of the entries after `after_serial` (or
        after the base, when that is later)."""
        base = self.storage.base(channel)
        ids = self.storage.read_ids(channel, max(after_serial, base.serial), max(0, min(limit, ids_read_max)))
        return ReadReply((), self.storage.last(channel), False, base, tuple(ids))


def base_advances(new: Position, old: Position) -> bool:
    """A base only moves forward: to a later serial, or to a newer stamp of the same entry (rule 5)."""
    return new.serial > old.serial or (new.serial == old.serial and new.epoch > old.epoch)


def message_ids(entries: Sequence[Entry]) -> list[tuple[str, int]]:
    """(message id, timestamp ms) of each entry: `read_ids` for engines with nothing cheaper to fetch."""
    return [(entry.message.id, entry.message.timestamp_ms) for entry in entries]


def _malformed(epoch: int, prev: Position, entries: Sequence[Entry]) -> str:
    """Why an append cannot be accepted whatever the log holds; "" when it is well formed."""
    if prev.serial < 0 or prev.epoch < 0 or prev.epoch > epoch or (prev.serial == 0 and prev.epoch != 0):
        return "prev"
    expected_serial, floor_epoch = prev.serial + 1, prev.epoch
    for entry in entries:
        if entry.serial != expected_serial:
            return "serial"
        if entry.epoch < floor_epoch or entry.epoch > epoch:
            return "epoch"
        if not entry.intact():
            return "checksum"
        expected_serial, floor_epoch = entry.serial + 1, entry.epoch
    return ""


class _ChannelLog:
    __slots__ = ("fence", "entries", "epochs", "base", "committed")

    def __init__(self) -> None:
        self.fence = 0
        self.entries: list[Entry] = []  # serials base.serial + 1, base.serial + 2, ...
        self.epochs: list[int] = []  # entries[i].epoch, kept for bisect
        self.base = ORIGIN
        self.committed = 0


class MemoryLogStorage:
    """An in-memory engine: the simulator's store, and the reference the contract tests compare to.

    With `journal` set, every mutation is also recorded there, so an adapter can replay exactly the
    mutations that reached "disk" onto another storage (the simulator's model of fsync).
    """

    def __init__(self, *, journal: list[tuple[str, str, object]] | None = None) -> None:
        self._logs: dict[str, _ChannelLog] = {}
        self.journal = journal

    def _log(self, channel: str) -> _ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _ChannelLog()
        return log

    def _record(self, kind: str, channel: str, argument: object) -> None:
        if self.journal is not None:
            self.journal.append((kind, channel, argument))

    def channels(self) -> list[str]:
        return sorted(self._logs)

    def channels_after(self, channel: str, count: int) -> list[str]:
        names = self.channels()
        start = bisect.bisect_right(names, channel)
        return names[start : start + max(count, 0)]

    def fence_of(self, channel: str) -> int:
        log = self._logs.get(channel)
        return log.fence if log else 0

    def set_fence(self, channel: str, epoch: int) -> None:
        log = self._log(channel)
        invariant(epoch >= log.fence, "fence never decreases")
        log.fence = epoch
        self._record("fence", channel, epoch)

    def base(self, channel: str) -> Position:
        log = self._logs.get(channel)
        return log.base if log else ORIGIN

    def committed(self, channel: str) -> int:
        log = self._logs.get(channel)
        return log.committed if log else 0

    def set_committed(self, channel: str, serial: int) -> None:
        log = self._log(channel)
        invariant(serial >= log.committed, "what is known committed stays known")
        log.committed = serial
        self._record("committed", channel, serial)

    def last(self, channel: str) -> Position:
        log = self._logs.get(channel)
        if not log:
            return ORIGIN
        return log.entries[-1].position if log.entries else log.base

    def epoch_at(self, channel: str, serial: int) -> int | None:
        if serial == 0:
            return 0
        log = self._logs.get(channel)
        if not log:
            return None
        if serial == log.base.serial:
            return log.base.epoch
        index = serial - log.base.serial - 1
        if index < 0 or index >= len(log.entries):
            return None
        return log.epochs[index]

    def first_serial_of_epoch(self, channel: str, epoch: int) -> int:
        log = self._log(channel)
        index = bisect.bisect_left(log.epochs, epoch)
        if log.base.epoch == epoch and log.base.serial > 0:
            return log.base.serial
        invariant(index < len(log.epochs) and log.epochs[index] == epoch, "epoch is in the log")
        return log.base.serial + index + 1

    def truncate_after(self, channel: str, serial: int) -> None:
        log = self._log(channel)
        keep = max(serial - log.base.serial, 0)
        del log.entries[keep:]
        del log.epochs[keep:]
        self._record("truncate", channel, serial)

    def drop_through(self, channel: str, base: Position) -> None:
        log = self._log(channel)
        invariant(base_advances(base, log.base), "the base only moves forward")
        drop = base.serial - log.base.serial
        del log.entries[:drop]
        del log.epochs[:drop]
        log.base = base
        self._record("drop", channel, base)

    def extend(self, channel: str, entries: Sequence[Entry]) -> None:
        log = self._log(channel)
        for entry in entries:
            invariant(entry.serial == log.base.serial + len(log.entries) + 1, "log stays contiguous")
            invariant(entry.epoch >= (log.epochs[-1] if log.epochs else log.base.epoch), "epochs never decrease")
            log.entries.append(entry)
            log.epochs.append(entry.epoch)
        self._record("extend", channel, tuple(entries))

    def read(self, channel: str, after_serial: int, limit: int) -> list[Entry]:
        log = self._logs.get(channel)
        if not log:
            return []
        start = max(after_serial - log.base.serial, 0)
        return log.entries[start : start + max(limit, 0)]

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[str, int]]:
        return message_ids(self.read(channel, after_serial, limit))

    def replay(self, journal: Sequence[tuple[str, str, object]]) -> None:
        """Apply mutations recorded by another storage's journal, in order."""
        apply = {
            "fence": self.set_fence,
            "committed": self.set_committed,
            "truncate": self.truncate_after,
            "drop": self.drop_through,
            "extend": self.extend,
        }
        for kind, channel, argument in journal:
            apply[kind](channel, argument)  # type: ignore[operator]

    def clone(self, *, journal: list[tuple[str, str, object]] | None = None) -> MemoryLogStorage:
        """A deep-enough copy (entries are immutable), recording into `journal` from now on."""
        copy = MemoryLogStorage(journal=journal)
        for channel, log in self._logs.items():
            copied = copy._log(channel)
            copied.fence, copied.entries, copied.epochs = log.fence, list(log.entries), list(log.epochs)
            copied.base, copied.committed = log.base, log.committed
        return copy
