"""Properties of the SQLite engine beyond the contract."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.core.entries import ORIGIN, Position
from services.core.invariants import InvariantViolation
from services.core.replica_log import (
    AppendStatus,
    FenceReply,
    ReplicaLog,
)
from services.store import rows, sqlite_engine
from services.store.sqlite_engine import SqliteLogStorage
from tests.core.store_contract.harness import by_count, channel, in_transaction, make_entries, other_channel

# --------------------------------------------------------------------------------- SQLite only


def _sqlite(path: Path, channel_cache_entries_max: int = 100_000) -> SqliteLogStorage:
    return SqliteLogStorage(str(path), channel_cache_entries_max=channel_cache_entries_max)


def test_sqlite_uses_wal_and_syncs_every_commit(tmp_path: Path) -> None:
    storage = _sqlite(tmp_path / "store.sqlite3")
    connection = storage._connection
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    storage.close()


def test_a_schema_1_store_opens_and_its_old_rows_still_give_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    old = make_entries(1, [2, 2, 2])
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE entries (channel TEXT NOT NULL, serial INTEGER NOT NULL, epoch INTEGER NOT NULL,
            message BLOB NOT NULL, checksum INTEGER NOT NULL, PRIMARY KEY (channel, serial)) WITHOUT ROWID;
        CREATE TABLE fences (channel TEXT NOT NULL PRIMARY KEY, epoch INTEGER NOT NULL) WITHOUT ROWID;
        PRAGMA user_version = 1;
        """
    )
    connection.execute("INSERT INTO fences VALUES (?, 2)", (channel,))
    connection.executemany(
        "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
        [(channel, e.serial, e.epoch, rows.message_bytes(e.message), e.checksum) for e in old],
    )
    connection.commit()
    connection.close()

    storage = _sqlite(path)
    assert storage._connection.execute("PRAGMA user_version").fetchone()[0] == sqlite_engine.schema_version
    replica = ReplicaLog(storage)
    new = make_entries(4, [2, 2])
    assert in_transaction(storage, lambda: replica.append(channel, 2, Position(3, 2), new)).status is AppendStatus.OK
    assert storage.read(channel, 0, 10) == old + new
    ids = in_transaction(storage, lambda: replica.read_ids(channel, 0, 10)).ids
    assert ids == tuple((e.message.id, e.message.timestamp_ms) for e in old + new)
    stored = storage._connection.execute("SELECT message_id FROM entries ORDER BY serial").fetchall()
    assert stored == [(None,)] * 3 + [(e.message.id,) for e in new]
    # Schema 3: the channel row keeps its fence and gains a base and a committed serial.
    assert storage.fence_of(channel) == 2 and storage.base(channel) == ORIGIN and storage.committed(channel) == 0
    in_transaction(storage, lambda: replica.append(channel, 2, Position(5, 2), (), commit=5))
    in_transaction(storage, lambda: replica.trim(channel, 0, by_count))
    storage.close()
    reopened = _sqlite(path)
    assert reopened.base(channel) == Position(3, 2) and reopened.committed(channel) == 5
    assert reopened.read(channel, 0, 10) == new
    reopened.close()


def test_sqlite_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    log_entries = make_entries(1, [3, 3, 4])
    in_transaction(storage, lambda: replica.fence(channel, 4))
    in_transaction(storage, lambda: replica.append(channel, 4, ORIGIN, log_entries))
    in_transaction(storage, lambda: replica.fence(other_channel, 9))
    storage.close()

    reopened = _sqlite(path)
    assert reopened.fence_of(channel) == 4
    assert reopened.fence_of(other_channel) == 9
    assert reopened.last(channel) == Position(3, 4)
    assert reopened.read(channel, 0, 10) == log_entries
    assert ReplicaLog(reopened).fence(channel, 3).fenced
    reopened.close()


def test_sqlite_rollback_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    in_transaction(storage, lambda: replica.append(channel, 2, ORIGIN, make_entries(1, [1, 2, 2])))

    storage.begin()
    replica.fence(channel, 5)
    assert replica.append(channel, 5, Position(1, 1), make_entries(2, [5])).status is AppendStatus.OK  # truncates
    replica.append(other_channel, 6, ORIGIN, make_entries(1, [6]))
    assert storage.last(channel) == Position(2, 5)
    storage.rollback()

    # Neither the database nor the cache remembers the rolled-back transaction.
    assert (storage.fence_of(channel), storage.last(channel)) == (2, Position(3, 2))
    assert [entry.epoch for entry in storage.read(channel, 0, 10)] == [1, 2, 2]
    assert (storage.fence_of(other_channel), storage.last(other_channel)) == (0, ORIGIN)
    storage.close()
    reopened = _sqlite(path)
    assert [entry.epoch for entry in reopened.read(channel, 0, 10)] == [1, 2, 2]
    assert reopened.channels() == [channel]
    reopened.close()


def test_sqlite_mutations_outside_a_transaction_are_refused(tmp_path: Path) -> None:
    storage = _sqlite(tmp_path / "store.sqlite3")
    with pytest.raises(InvariantViolation):
        storage.set_fence(channel, 1)
    with pytest.raises(InvariantViolation):
        storage.extend(channel, make_entries(1, [1]))
    with pytest.raises(InvariantViolation):
        storage.truncate_after(channel, 0)
    assert (storage.fence_of(channel), storage.last(channel)) == (0, ORIGIN)
    storage.close()


def test_sqlite_reader_sees_only_committed_data(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    writer = _sqlite(path)
    reader = SqliteLogStorage(str(path), read_only=True)
    first = make_entries(1, [1])
    in_transaction(writer, lambda: writer.extend(channel, first))
    writer.begin()
    writer.extend(channel, make_entries(2, [1]))
    assert (reader.read(channel, 0, 10), reader.last(channel)) == (first, Position(1, 1))
    writer.commit()
    assert reader.last(channel) == Position(2, 1)
    assert len(reader.read(channel, 0, 10)) == 2
    with pytest.raises(sqlite3.OperationalError):
        reader._connection.execute("DELETE FROM entries")
    reader.close()
    writer.close()


def test_sqlite_cache_bound_keeps_answers_correct(tmp_path: Path) -> None:
    storage = _sqlite(tmp_path / "store.sqlite3", channel_cache_entries_max=2)
    replica = ReplicaLog(storage)
    names = [f"channel-{index}" for index in range(6)]
    for round_number in range(1, 4):
        for name in names:
            prev = storage.last(name)
            entries = make_entries(prev.serial + 1, [round_number], tag=name)
            reply = in_transaction(storage, lambda: replica.append(name, round_number, prev, entries))  # noqa: B023
            assert reply.status is AppendStatus.OK
    assert len(storage._lasts) <= 2 and len(storage._rows) <= 2
    for name in names:
        assert (storage.fence_of(name), storage.last(name)) == (3, Position(3, 3))
    storage.close()


def _corrupt(path: Path, statement: str, parameters: tuple[object, ...] = ()) -> None:
    """Change a stored row behind the engine's back, as a bad disk would."""
    with sqlite3.connect(path) as connection:
        connection.execute(statement, parameters)


def _flip_message_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[-1] ^= 0x01  # the last byte: inside the payload of the message's last field
    return bytes(damaged)


@pytest.mark.parametrize("damage", ["checksum", "message byte", "message garbage", "epoch"])
def test_sqlite_corrupted_stored_row_reads_as_corrupt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    in_transaction(storage, lambda: replica.append(channel, 1, ORIGIN, make_entries(1, [1, 1, 1, 1])))
    where = "WHERE channel = ? AND serial = 3"
    if damage == "checksum":
        _corrupt(path, f"UPDATE entries SET checksum = (checksum | 1) - (checksum & 1) {where}", (channel,))
    elif damage == "epoch":
        _corrupt(path, f"UPDATE entries SET epoch = 0 {where}", (channel,))
    else:
        with sqlite3.connect(path) as connection:
            data = connection.execute(f"SELECT message FROM entries {where}", (channel,)).fetchone()[0]
        damaged = _flip_message_byte(data) if damage == "message byte" else b"\xff\xff\xff"
        _corrupt(path, f"UPDATE entries SET message = ? {where}", (damaged, channel))

    reply = replica.read(channel, 0, 10)
    assert reply.damaged == 3 and [entry.serial for entry in reply.entries] == [1, 2]  # the intact run only
    assert replica.read(channel, 2, 1).damaged == 3
    assert replica.read(channel, 0, 2).damaged == 0
    assert replica.read(channel, 3, 10).damaged == 0
    storage.close()


def test_sqlite_a_serial_flipped_far_beyond_the_log_is_dropped_by_the_fence_and_the_hole_repaired(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    held = make_entries(1, [1] * 30)
    in_transaction(storage, lambda: replica.append(channel, 1, ORIGIN, held))
    _corrupt(path, "UPDATE entries SET serial = serial + (1 << 40) WHERE channel = ? AND serial = 20", (channel,))
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    assert storage.last(channel) == Position(20 + (1 << 40), 1)  # what the engine alone believes
    assert in_transaction(storage, lambda: replica.fence(channel, 2)) == FenceReply(False, 2, Position(30, 1))
    reply = in_transaction(storage, lambda: replica.read(channel, 15, 100))
    assert (reply.damaged, [e.serial for e in reply.entries]) == (20, [16, 17, 18, 19])
    assert in_transaction(storage, lambda: replica.mark_damaged(channel, 20)) == "missing"
    repaired = in_transaction(storage, lambda: replica.append(channel, 2, held[18].position, held[19:25]))
    assert (repaired.status, repaired.damaged) == (AppendStatus.OK, 0)
    assert storage.read(channel, 0, 100) == held
    storage.close()


def test_sqlite_schema_3_files_gain_the_damaged_column(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    in_transaction(storage, lambda: ReplicaLog(storage).append(channel, 1, ORIGIN, make_entries(1, [1, 1])))
    storage.close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE fences DROP COLUMN damaged")
        connection.execute("PRAGMA user_version = 3")
    storage = _sqlite(path)
    assert storage.damaged(channel) == 0 and storage.fence_of(channel) == 1
    in_transaction(storage, lambda: storage.set_damaged(channel, 2))
    assert _sqlite(path).damaged(channel) == 2
    storage.close()
