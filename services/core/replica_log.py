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
7. Damage (a row lost or changed at rest, which no engine notices by itself) is never served and
   never hidden. A read checks what it returns: serials contiguous from where it starts, every
   checksum (which covers serial and epoch) intact; at the first entry that is missing or fails, it
   stops and says `damaged` = that serial, returning only the intact run before it. A replica that
   learns of damage (`mark_damaged`: from its reads, its scrub, or an append that finds a hole)
   drops the entries that fail their checksum (they can never be served) and remembers the first
   missing serial; fences and appends report it, so the owner rewrites the replica from there. An
   append over a damaged range fills the missing entries in place and keeps every intact one it
   holds at the same (serial, epoch), so a repair never removes a good copy. A fence first checks
   the log's last entry, so the position it answers is one the replica can vouch for.
8. Defence in depth: one owner writes each (serial, epoch) once, so an append that brings an entry
   the log already holds at the same (serial, epoch) with other content (another checksum) is a
   forgery or a broken writer. It is refused as DATA_LOSS — logged and counted, nothing written,
   never acknowledged as held — unless the held copy fails its own checksum (damage, rule 7: then
   the owner's copy replaces it).

The rules are plain code over a `LogStorage` (what an engine provides: SQLite, Redis, or the
in-memory engine, memory_log.py). They do no I/O of their own; making writes durable before the reply leaves
the replica is the adapter's job.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from services.core.entries import ORIGIN, Entry, Position
from services.core.invariants import invariant

read_entries_max = 1_000
"""Upper bound on the entries one read returns, whatever the caller asked for."""

ids_read_max = 10_000
"""Message ids one ids-only read returns at most."""

tail_checks_max = 16
"""Corrupt entries a fence drops from the end of a log before it answers with what is left."""


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
    DATA_LOSS = "data_loss"


@dataclass(frozen=True, slots=True)
class FenceReply:
    fenced: bool
    fence_epoch: int
    last: Position
    damaged: int = 0
    """The first serial the replica knows to be missing from its log (rule 7); 0 when none."""


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
    damaged: int = 0
    """The first serial the replica knows to be missing from its log after this append (rule 7)."""


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
    damaged: int = 0
    """Non-zero: the entry at this serial is missing or fails its checksum (rule 7); `entries` (or
    `ids`) are the intact run before it."""
    base: Position = ORIGIN
    """The position the replica's retained log follows: a read from below it starts after it."""
    ids: tuple[tuple[str, int], ...] = ()
    """For an ids-only read: (message id, timestamp ms) of each entry after the read's serial, in
    order, and no `entries`. Serials are checked for contiguity on this path, checksums are not
    (they cover the whole message): a corrupt id can at worst let one retried message be stored
    twice, never lose or reorder one."""


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

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[int, str, int]]:
        """(serial, message id, timestamp ms) of the entries `read` would return."""
        ...

    def damaged(self, channel: str) -> int:
        """The first serial known to be missing from the log (rule 7); 0 when none is known."""
        ...

    def set_damaged(self, channel: str, serial: int) -> None:
        """Remember (or, with 0, forget) the first serial known to be missing."""
        ...

    def remove(self, channel: str, serial: int) -> None:
        """Drop the stored entry at `serial` (one that fails its checksum); the serial is then missing."""
        ...

    def fill(self, channel: str, entries: Sequence[Entry]) -> None:
        """Write entries at serials missing inside the log (after the base, before the last entry)."""
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
        self.found: list[tuple[str, int, str]] = []
        """Damage found while applying the rules, for the adapter to log and count (and clear):
        (channel, serial, "missing" or "corrupt")."""
        # `no-epoch-check` is a deliberate bug for the simulator's self-test: accept stale appends.
        self._check_epoch = "no-epoch-check" not in bugs
        # `trim-uncommitted`, another: trim by count alone, without knowing the entries are committed.
        self._trim_committed_only = "trim-uncommitted" not in bugs
        # `unchecked-reads`, another: serve what is stored as it is, holes and bad checksums included.
        self._check_reads = "unchecked-reads" not in bugs

    def fence(self, channel: str, epoch: int) -> FenceReply:
        fence = self.storage.fence_of(channel)
        last = self._checked_last(channel)
        if fence > epoch:
            return FenceReply(True, fence, last, self.storage.damaged(channel))
        if epoch > fence:
            self.storage.set_fence(channel, epoch)
        return FenceReply(False, epoch, last, self.storage.damaged(channel))

    def _checked_last(self, channel: str) -> Position:
        """The last position, once the entry there passes its checksum: a corrupt last entry (a
        flipped bit in its serial can even make it look far beyond the real end) is dropped (rule 7)."""
        storage = self.storage
        for _ in range(tail_checks_max):
            last = storage.last(channel)
            if last.serial <= storage.base(channel).serial:
                return last
            found = storage.read(channel, last.serial - 1, 1)
            if found and found[0].serial == last.serial and found[0].intact():
                return last
            storage.remove(channel, last.serial)
            self.found.append((channel, last.serial, "corrupt"))
        return storage.last(channel)

    def mark_damaged(self, channel: str, serial: int) -> str:
        """Rule 7: a reader found the entry at `serial` missing or failing its checksum. Drop it if it
        is there and corrupt (and a corrupt entry that stands in its place, at another serial), and
        remember the first missing serial inside the log. Returns what was found there ("missing",
        "corrupt"), or "" when the entry is (now) intact or outside the log."""
        storage = self.storage
        if serial <= storage.base(channel).serial or serial > storage.last(channel).serial:
            return ""
        found = storage.read(channel, serial - 1, 1)
        if found and found[0].serial == serial and found[0].intact():
            return ""  # repaired meanwhile
        what = "missing"
        if found and not found[0].intact():
            storage.remove(channel, found[0].serial)
            what = "corrupt" if found[0].serial == serial else "missing"
            self.found.append((channel, found[0].serial, "corrupt"))
        self._note_missing(channel, serial)
        return what

    def _note_missing(self, channel: str, serial: int) -> None:
        known = self.storage.damaged(channel)
        if serial < self.storage.last(channel).serial and (not known or serial < known):
            self.storage.set_damaged(channel, serial)
            self.found.append((channel, serial, "missing"))

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
            if held_epoch is not None or not base.serial < prev.serial < storage.last(channel).serial:
                storage.truncate_after(channel, prev.serial)
            # (else `prev` is missing inside the log, damage: the base moves past it, and what follows
            # stays, to be compared with the owner's entries like any other: never cut at a hole)
            storage.drop_through(channel, prev)
            base, held_epoch = prev, prev.epoch
        last = storage.last(channel)
        if held_epoch != prev.epoch:
            if held_epoch is None:
                if base.serial < prev.serial < last.serial:
                    self._note_missing(channel, prev.serial)  # a hole inside the log: damage
                return AppendReply(AppendStatus.MISMATCH, fence, last, damaged=storage.damaged(channel))
            return AppendReply(
                AppendStatus.MISMATCH,
                fence,
                last,
                conflict_epoch=held_epoch,
                conflict_first_serial=storage.first_serial_of_epoch(channel, held_epoch),
                damaged=storage.damaged(channel),
            )
        damaged = storage.damaged(channel)
        first_new = self._first_not_held(channel, entries, last, damaged)
        forged = self._held_otherwise(channel, entries[:first_new])
        if forged is not None:
            self.found.append((channel, forged.serial, "conflict"))
            detail = f"entry {forged.serial} at epoch {forged.epoch} differs from the one held"
            return AppendReply(AppendStatus.DATA_LOSS, fence, last, detail=detail, damaged=storage.damaged(channel))
        if first_new < len(entries):
            if entries[first_new].serial <= last.serial:
                storage.truncate_after(channel, entries[first_new].serial - 1)
            storage.extend(channel, entries[first_new:])
        if damaged and (prev.serial < damaged <= end or damaged > storage.last(channel).serial):
            storage.set_damaged(channel, 0)  # filled (or cut off); the scrub looks for more
        self._learn_commit(channel, commit, end)
        return AppendReply(
            AppendStatus.OK, fence, storage.last(channel), match_serial=end, base=base, damaged=storage.damaged(channel)
        )

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
        if limit <= base.serial:
            return 0
        first = storage.read_ids(channel, base.serial, 1)
        if not first or first[0][0] != base.serial + 1 or not droppable(base.serial + 1, first[0][2]):
            return 0  # (a missing first entry is left to the repair: nothing is dropped past a hole)
        through = base.serial + 1
        for serial, _, timestamp_ms in storage.read_ids(channel, through, limit - through):
            if serial != through + 1 or not droppable(through + 1, timestamp_ms):
                break
            through += 1
        epoch = storage.epoch_at(channel, through)
        invariant(epoch is not None, "a retained entry has an epoch")
        assert epoch is not None
        storage.drop_through(channel, Position(through, epoch))
        return through - base.serial

    def _held_otherwise(self, channel: str, entries: Sequence[Entry]) -> Entry | None:
        """Rule 8: the first of `entries` (all held at the same serial and epoch) whose held copy has
        other content. One owner writes each (serial, epoch) once, so a different entry there is a
        forgery or a broken writer: refused, never acknowledged as if held. A held copy that fails
        its own checksum is damage at rest instead (rule 7): it is replaced by the owner's."""
        if not entries:
            return None
        held = {entry.serial: entry for entry in self.storage.read(channel, entries[0].serial - 1, len(entries))}
        replaced: list[Entry] = []
        for entry in entries:
            mine = held.get(entry.serial)
            if mine is None or mine.checksum == entry.checksum:
                continue
            if mine.intact():
                return entry
            replaced.append(entry)
        for entry in replaced:
            self.storage.remove(channel, entry.serial)
        if replaced:
            self.storage.fill(channel, replaced)
            self.found.extend((channel, entry.serial, "filled") for entry in replaced)
        return None

    def _first_not_held(self, channel: str, entries: Sequence[Entry], last: Position, damaged: int) -> int:
        """Index of the first entry the log does not already hold at the same (serial, epoch).

        Holding an entry at the same position implies holding every entry before it (log
        matching), so "held" is a prefix of `entries` and a binary search finds its end. Damage
        breaks that premise (rule 7), and a log must never be cut at a missing entry: that would
        drop the intact, maybe committed, entries after it. So where the log is known to be damaged,
        or the search ends on a missing entry, each entry is compared in turn: the missing ones are
        filled in place, and only a real conflict (another epoch at that serial) is cut at.
        """
        overlap = 0
        while overlap < len(entries) and entries[overlap].serial <= last.serial:
            overlap += 1
        storage = self.storage
        if not damaged:
            low, high = 0, overlap
            while low < high:
                middle = (low + high) // 2
                if storage.epoch_at(channel, entries[middle].serial) == entries[middle].epoch:
                    low = middle + 1
                else:
                    high = middle
            if low == overlap or storage.epoch_at(channel, entries[low].serial) is not None:
                return low  # held up to `low`, then a real conflict (or nothing more to compare)
        holes: list[Entry] = []
        for index in range(overlap):
            held = storage.epoch_at(channel, entries[index].serial)
            if held is None:
                holes.append(entries[index])
            elif held != entries[index].epoch:
                overlap = index  # a conflict: truncated there, and the rest written after it
                break
        if holes:
            storage.fill(channel, holes)
            self.found.extend((channel, entry.serial, "filled") for entry in holes)
        return overlap

    def read(self, channel: str, after_serial: int, limit: int, *, bytes_max: int | None = None) -> ReadReply:
        """At most `limit` entries after `after_serial`; with `bytes_max`, only as many as fit in that
        much message data, but never fewer than one (so a reader always makes progress). Only an
        intact, contiguous run is returned; where it breaks, `damaged` says so (rule 7)."""
        limit = max(0, min(limit, read_entries_max))
        base = self.storage.base(channel)
        start = max(after_serial, base.serial)
        entries = self.storage.read(channel, start, limit)
        if bytes_max is not None:
            size = 0
            for index, entry in enumerate(entries):
                size += len(entry.message.data)
                if index and size > bytes_max:
                    del entries[index:]
                    break
        damaged = 0
        for index, entry in enumerate(entries):
            if self._check_reads and (entry.serial != start + 1 + index or not entry.intact()):
                damaged = start + 1 + index
                del entries[index:]
                break
        last = self.storage.last(channel)
        if not entries and not damaged and limit and start < last.serial and self._check_reads:
            damaged = start + 1  # the log goes on, but nothing follows `start`
        return ReadReply(tuple(entries), last, damaged, base)

    def read_ids(self, channel: str, after_serial: int, limit: int) -> ReadReply:
        """At most `limit` (message id, timestamp) pairs of the entries after `after_serial` (or
        after the base, when that is later), as long as their serials are contiguous (rule 7)."""
        base = self.storage.base(channel)
        start = max(after_serial, base.serial)
        rows = self.storage.read_ids(channel, start, max(0, min(limit, ids_read_max)))
        ids, damaged = [], 0
        for index, (serial, message_id, timestamp_ms) in enumerate(rows):
            if serial != start + 1 + index and self._check_reads:
                damaged = start + 1 + index
                break
            ids.append((message_id, timestamp_ms))
        last = self.storage.last(channel)
        if not ids and not damaged and limit and start < last.serial and self._check_reads:
            damaged = start + 1
        return ReadReply((), last, damaged, base, tuple(ids))


def base_advances(new: Position, old: Position) -> bool:
    """A base only moves forward: to a later serial, or to a newer stamp of the same entry (rule 5)."""
    return new.serial > old.serial or (new.serial == old.serial and new.epoch > old.epoch)


def message_ids(entries: Sequence[Entry]) -> list[tuple[int, str, int]]:
    """(serial, message id, timestamp ms) of each entry: `read_ids` for engines with nothing cheaper
    to fetch."""
    return [(entry.serial, entry.message.id, entry.message.timestamp_ms) for entry in entries]


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
