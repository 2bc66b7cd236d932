"""The SQLite engine: one replica's channel logs in one SQLite file (WAL, synchronous=FULL).

Rules:

1. Mutations (`set_fence`, `truncate_after`, `extend`) happen only inside an explicit transaction
   (`begin()` ... `commit()` or `rollback()`) and never commit by themselves: the server applies many
   requests in one transaction and makes them durable with one commit, one fsync (group commit).
2. A message is stored as its serialized ringcast.v1 Message, with the checksum as it was received,
   so corruption at rest is detected when the entry is read back (`Entry.intact()`): an entry whose
   stored bytes no longer parse is handed back as an entry that is not intact, never skipped.
3. Each channel's fence, base, committed serial and last position are cached in memory, in a
   bounded cache, and updated on every mutation. A rollback forgets the whole cache, so it never
   holds what was not committed.
4. A read-only instance (`read_only=True`) serves reads from its own connection, which WAL lets run
   alongside the writer and which only ever sees committed transactions. It caches nothing, since
   another connection writes; `begin()`/`commit()` around several reads give them one snapshot.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.core.entries import ORIGIN, Entry, Position
from services.core.invariants import invariant
from services.core.replica_log import base_advances
from services.store.rows import (
    BoundedCache,
    channel_cache_entries_max,
    entry_from_stored,
    id_and_timestamp,
    message_bytes,
)

busy_timeout_ms = 5_000
"""How long a connection waits for a lock held by another connection before it fails."""

schema_version = 4
"""1: entries and fences. 2: entries also hold their message id and timestamp in columns of their own
(what ids-only reads select); rows written at version 1 have them NULL and are decoded instead.
3: the channel row (`fences`) also holds the log's base and the serial known committed (retention).
4: ... and the first serial known to be missing (`damaged`, replica_log.py rule 7).
Older files are migrated in place when a writer opens them."""

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS entries (
        channel TEXT NOT NULL,
        serial INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        message BLOB NOT NULL,
        checksum INTEGER NOT NULL,
        message_id TEXT,
        timestamp_ms INTEGER,
        PRIMARY KEY (channel, serial)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS entries_by_epoch ON entries (channel, epoch, serial)",
    """
    CREATE TABLE IF NOT EXISTS fences (
        channel TEXT NOT NULL PRIMARY KEY,
        epoch INTEGER NOT NULL,
        base_serial INTEGER NOT NULL DEFAULT 0,
        base_epoch INTEGER NOT NULL DEFAULT 0,
        committed INTEGER NOT NULL DEFAULT 0,
        damaged INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
)

_CHANNEL_COLUMNS_OF_SCHEMA_3 = ("base_serial", "base_epoch", "committed")
_CHANNEL_COLUMNS_OF_SCHEMA_4 = ("damaged",)


@dataclass(frozen=True, slots=True)
class _ChannelRow:
    """A channel's row of `fences`: its fence, the base its log follows, and what is known committed."""

    fence: int = 0
    base: Position = ORIGIN
    committed: int = 0
    damaged: int = 0


_NO_ROW = _ChannelRow()


class SqliteLogStorage:
    """A `LogStorage` (services/core/replica_log.py) over one SQLite file."""

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        channel_cache_entries_max: int = channel_cache_entries_max,
    ) -> None:
        self.path = path
        self.read_only = read_only
        if read_only and not os.path.exists(path):
            # Opening would create an empty database: a reader must never be what creates the store.
            raise FileNotFoundError(f"no store database at {path}")
        # isolation_level=None: the sqlite3 module opens no transaction of its own; ours are explicit.
        # check_same_thread=False: the server hands a connection to one worker thread at a time.
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        if read_only:
            self._connection.execute("PRAGMA query_only = ON")
        else:
            self._open_for_writing()
        journal_mode = self._connection.execute("PRAGMA journal_mode").fetchone()[0]
        invariant(str(journal_mode).lower() == "wal", f"store database {path} is in WAL mode")
        cache_bound = 0 if read_only else channel_cache_entries_max
        self._rows: BoundedCache[_ChannelRow] = BoundedCache(cache_bound)
        self._lasts: BoundedCache[Position] = BoundedCache(cache_bound)
        # Committed serials learnt in this transaction, written once per channel when it commits
        # (an append teaches one; a group commit carries hundreds of appends of a few channels).
        self._committed_learnt: dict[str, int] = {}

    def _open_for_writing(self) -> None:
        connection = self._connection
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        invariant(str(mode).lower() == "wal", f"store database {self.path} can use WAL")
        # FULL: every commit syncs the WAL, so a committed transaction survives a power loss.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                connection.execute(statement)
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            invariant(version in (0, 1, 2, 3, schema_version), f"store database schema {version} is {schema_version}")
            if version == 1:
                connection.execute("ALTER TABLE entries ADD COLUMN message_id TEXT")
                connection.execute("ALTER TABLE entries ADD COLUMN timestamp_ms INTEGER")
            added = (_CHANNEL_COLUMNS_OF_SCHEMA_3 if version in (1, 2) else ()) + (
                _CHANNEL_COLUMNS_OF_SCHEMA_4 if version in (1, 2, 3) else ()
            )
            for column in added:
                connection.execute(f"ALTER TABLE fences ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
            connection.execute(f"PRAGMA user_version = {schema_version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------------------- transactions

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    def begin(self) -> None:
        """Start a transaction; the writer takes the write lock at once, so no other writer can interpose."""
        invariant(not self._connection.in_transaction, "no transaction is open")
        self._connection.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")

    def commit(self) -> None:
        """End the transaction; with synchronous=FULL, durable once this returns (one fsync)."""
        invariant(self._connection.in_transaction, "a transaction is open")
        learnt, self._committed_learnt = self._committed_learnt, {}
        if learnt:
            self._connection.executemany(
                "UPDATE fences SET committed = ? WHERE channel = ? AND committed < ?",
                [(serial, channel, serial) for channel, serial in learnt.items()],
            )
            for channel, serial in learnt.items():
                row = self._rows.get(channel)
                if row is not None and row.committed < serial:
                    self._rows.put(channel, replace(row, committed=serial))
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        """Undo the transaction, and forget the cache, which may hold what was undone."""
        self._rows.clear()
        self._lasts.clear()
        self._committed_learnt.clear()
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def close(self) -> None:
        if self._connection.in_transaction:
            self.rollback()
        self._connection.close()

    def _mutating(self) -> None:
        invariant(not self.read_only, "a read-only store is never written")
        invariant(self._connection.in_transaction, "store mutations run inside begin() ... commit()")

    # ----------------------------------------------------------------------------- LogStorage

    def channels(self) -> list[str]:
        """Every channel with a fence or an entry, sorted."""
        rows = self._connection.execute(
            "SELECT channel FROM fences UNION SELECT DISTINCT channel FROM entries ORDER BY 1"
        ).fetchall()
        return [str(row[0]) for row in rows]

    def max_fence(self) -> int:
        """The highest fence of any channel (0 when none)."""
        row = self._connection.execute("SELECT MAX(epoch) FROM fences").fetchone()
        return int(row[0] or 0)

    def channels_after(self, channel: str, count: int) -> list[str]:
        """Channels with a row (every channel ever fenced or written: an append raises the fence first)."""
        rows = self._connection.execute(
            "SELECT channel FROM fences WHERE channel > ? ORDER BY channel LIMIT ?", (channel, max(count, 0))
        ).fetchall()
        return [str(row[0]) for row in rows]

    def _row(self, channel: str) -> _ChannelRow:
        cached = self._rows.get(channel)
        if cached is None:
            row = self._connection.execute(
                "SELECT epoch, base_serial, base_epoch, committed, damaged FROM fences WHERE channel = ?", (channel,)
            ).fetchone()
            cached = (
                _ChannelRow(int(row[0]), Position(int(row[1]), int(row[2])), int(row[3]), int(row[4]))
                if row
                else _NO_ROW
            )
            self._rows.put(channel, cached)
        return cached

    def _write_row(self, channel: str, row: _ChannelRow) -> None:
        self._mutating()
        row = replace(row, committed=max(row.committed, self._committed_learnt.pop(channel, 0)))
        self._connection.execute(
            "INSERT INTO fences (channel, epoch, base_serial, base_epoch, committed, damaged) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (channel) DO UPDATE SET epoch = excluded.epoch, base_serial = excluded.base_serial, "
            "base_epoch = excluded.base_epoch, committed = excluded.committed, damaged = excluded.damaged",
            (channel, row.fence, row.base.serial, row.base.epoch, row.committed, row.damaged),
        )
        self._rows.put(channel, row)

    def fence_of(self, channel: str) -> int:
        return self._row(channel).fence

    def set_fence(self, channel: str, epoch: int) -> None:
        row = self._row(channel)
        invariant(epoch >= row.fence, "fence never decreases")
        self._write_row(channel, replace(row, fence=epoch))

    def base(self, channel: str) -> Position:
        return self._row(channel).base

    def committed(self, channel: str) -> int:
        return max(self._row(channel).committed, self._committed_learnt.get(channel, 0))

    def set_committed(self, channel: str, serial: int) -> None:
        """Kept in memory until the transaction commits (see `commit`); the channel has a row, as an
        append raises its fence first."""
        self._mutating()
        invariant(serial >= self.committed(channel), "what is known committed stays known")
        self._committed_learnt[channel] = serial

    def damaged(self, channel: str) -> int:
        return self._row(channel).damaged

    def set_damaged(self, channel: str, serial: int) -> None:
        self._write_row(channel, replace(self._row(channel), damaged=serial))

    def remove(self, channel: str, serial: int) -> None:
        self._mutating()
        self._connection.execute("DELETE FROM entries WHERE channel = ? AND serial = ?", (channel, serial))
        self._lasts.forget(channel)

    def fill(self, channel: str, entries: Sequence[Entry]) -> None:
        """Missing rows written in place (replica_log.py rule 7); the primary key refuses one that is there."""
        self._mutating()
        self._connection.executemany(
            "INSERT INTO entries (channel, serial, epoch, message, checksum, message_id, timestamp_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [_row_of(channel, entry) for entry in entries],
        )

    def drop_through(self, channel: str, base: Position) -> None:
        row = self._row(channel)
        invariant(base_advances(base, row.base), "the base only moves forward")
        self._write_row(channel, replace(row, base=base))
        self._connection.execute("DELETE FROM entries WHERE channel = ? AND serial <= ?", (channel, base.serial))
        self._lasts.forget(channel)

    def last(self, channel: str) -> Position:
        last = self._lasts.get(channel)
        if last is None:
            row = self._connection.execute(
                "SELECT serial, epoch FROM entries WHERE channel = ? ORDER BY serial DESC LIMIT 1", (channel,)
            ).fetchone()
            last = Position(int(row[0]), int(row[1])) if row else self.base(channel)
            self._lasts.put(channel, last)
        return last

    def epoch_at(self, channel: str, serial: int) -> int | None:
        if serial == 0:
            return 0
        if serial < 0:
            return None
        # The common case (an append right after the last entry) needs no query.
        last = self.last(channel)
        if serial > last.serial:
            return None
        if serial == last.serial:
            return last.epoch
        base = self.base(channel)
        if serial <= base.serial:
            return base.epoch if serial == base.serial else None
        row = self._connection.execute(
            "SELECT epoch FROM entries WHERE channel = ? AND serial = ?", (channel, serial)
        ).fetchone()
        return int(row[0]) if row is not None else None  # None inside the log: a missing row (damage)

    def first_serial_of_epoch(self, channel: str, epoch: int) -> int:
        base = self.base(channel)
        if base.epoch == epoch and base.serial > 0:
            return base.serial
        row = self._connection.execute(
            "SELECT MIN(serial) FROM entries WHERE channel = ? AND epoch = ?", (channel, epoch)
        ).fetchone()
        invariant(row is not None and row[0] is not None, "epoch is in the log")
        return int(row[0])

    def truncate_after(self, channel: str, serial: int) -> None:
        self._mutating()
        invariant(serial >= 0, "truncation point is a serial")
        self._connection.execute("DELETE FROM entries WHERE channel = ? AND serial > ?", (channel, serial))
        # The new last position is the entry at `serial`, which the next `last()` looks up.
        self._lasts.forget(channel)

    def extend(self, channel: str, entries: Sequence[Entry]) -> None:
        self._mutating()
        if not entries:
            return
        last = self.last(channel)
        previous_serial, previous_epoch = last.serial, last.epoch
        rows = []
        for entry in entries:
            invariant(entry.serial == previous_serial + 1, "log stays contiguous")
            invariant(entry.epoch >= previous_epoch, "epochs never decrease")
            rows.append(_row_of(channel, entry))
            previous_serial, previous_epoch = entry.serial, entry.epoch
        self._connection.executemany(
            "INSERT INTO entries (channel, serial, epoch, message, checksum, message_id, timestamp_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._lasts.put(channel, entries[-1].position)

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[int, str, int]]:
        if limit <= 0:
            return []
        rows = self._connection.execute(
            "SELECT serial, message_id, timestamp_ms, CASE WHEN message_id IS NULL THEN message END FROM entries "
            "WHERE channel = ? AND serial > ? ORDER BY serial LIMIT ?",
            (channel, max(after_serial, 0), limit),
        ).fetchall()
        return [
            (int(serial), message_id, timestamp_ms)
            if message_id is not None
            else (int(serial), *id_and_timestamp(bytes(data)))
            for serial, message_id, timestamp_ms, data in rows
        ]

    def read(self, channel: str, after_serial: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        rows = self._connection.execute(
            "SELECT serial, epoch, message, checksum FROM entries WHERE channel = ? AND serial > ? "
            "ORDER BY serial LIMIT ?",
            (channel, max(after_serial, 0), limit),
        ).fetchall()
        return [
            entry_from_stored(int(serial), int(epoch), bytes(data), int(checksum))
            for serial, epoch, data, checksum in rows
        ]


def _row_of(channel: str, entry: Entry) -> tuple[str, int, int, bytes, int, str, int]:
    message = entry.message
    return (
        channel,
        entry.serial,
        entry.epoch,
        message_bytes(message),
        entry.checksum,
        message.id,
        message.timestamp_ms,
    )
