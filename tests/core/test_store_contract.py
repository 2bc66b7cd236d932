"""The store contract: the replica log rules (services/core/replica_log.py) hold over every storage engine.

One suite, run once per engine (`ENGINES`). Every rule test drives a `ReplicaLog` over the engine's
storage, each operation in its own transaction where the engine has them (as the server runs it),
and checks the replies and what the engine holds. A randomized run then applies the same sequence
of fences, appends (well formed, stale, mismatched, malformed), reads and rolled-back transactions
to the engine and to the in-memory reference, and requires identical replies and identical logs.

To add an engine, add one entry to `ENGINES`: a function that opens a fresh, empty storage in a
directory and wraps it in an `Engine`. The Redis engine runs against a real redis-server (started
once for the module, with the flags `ringcast up --engine redis` uses); each storage gets a key
prefix of its own. The SQLite-only and Redis-only properties follow the contract suite.
"""

from __future__ import annotations

import atexit
import itertools
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from services.core import replica_log as log_module
from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.invariants import InvariantViolation
from services.core.replica_log import (
    AppendReply,
    AppendStatus,
    FenceReply,
    LogStorage,
    MemoryLogStorage,
    ReadReply,
    ReplicaLog,
    Retention,
)
from services.store import rows, sqlite_engine
from services.store.redis_engine import RedisConflict, RedisLogStorage, check_durable, open_redis
from services.store.sqlite_engine import SqliteLogStorage
from tests.redis_server import RedisServer

Result = TypeVar("Result")

channel = "orders"
other_channel = "chat:lobby"
channels = (channel, other_channel)

# Large enough to read any log these tests build, in one call to the storage (which has no cap).
whole_log_count = 1_000_000


# --------------------------------------------------------------------------------- engines


class Engine:
    """A storage under test, with its transactions (no-ops for an engine that has none)."""

    def __init__(
        self,
        name: str,
        storage: LogStorage,
        *,
        begin: Callable[[], None] | None = None,
        commit: Callable[[], None] | None = None,
        rollback: Callable[[], None] | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.storage = storage
        self._begin, self._commit, self._rollback, self._close = begin, commit, rollback, close

    @property
    def transactional(self) -> bool:
        return self._rollback is not None

    def begin(self) -> None:
        if self._begin:
            self._begin()

    def commit(self) -> None:
        if self._commit:
            self._commit()

    def rollback(self) -> None:
        assert self._rollback is not None, f"{self.name} has no transactions"
        self._rollback()

    def run(self, operation: Callable[[], Result]) -> Result:
        """`operation` in one transaction, committed when it returns, rolled back when it raises."""
        self.begin()
        try:
            result = operation()
        except BaseException:
            if self._rollback:
                self._rollback()
            raise
        self.commit()
        return result

    def close(self) -> None:
        if self._close:
            self._close()


def _memory_engine(directory: Path) -> Engine:
    return Engine("memory", MemoryLogStorage())


def _sqlite_engine(directory: Path) -> Engine:
    storage = SqliteLogStorage(str(directory / "store.sqlite3"))
    return Engine(
        "sqlite", storage, begin=storage.begin, commit=storage.commit, rollback=storage.rollback, close=storage.close
    )


_redis_servers: list[RedisServer] = []


def _redis_url(directory: Path) -> str:
    """The module's redis-server, started on first use; it dies with the test process."""
    if not _redis_servers:
        _redis_servers.append(RedisServer(directory.parent / "redis").start())
        atexit.register(_redis_servers[0].stop)
    return _redis_servers[0].url


def _redis_engine(directory: Path) -> Engine:
    storage = RedisLogStorage(open_redis(_redis_url(directory)), prefix=f"{uuid.uuid4().hex}:")
    return Engine(
        "redis", storage, begin=storage.begin, commit=storage.commit, rollback=storage.rollback, close=storage.close
    )


ENGINES: dict[str, Callable[[Path], Engine]] = {
    "memory": _memory_engine,
    "sqlite": _sqlite_engine,
    "redis": _redis_engine,
}
"""Every engine the contract runs against: name -> open a fresh, empty storage in a directory."""


@pytest.fixture(params=sorted(ENGINES))
def new_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """A factory of fresh, empty engines of one kind; each is closed when the test ends."""
    opened: list[Engine] = []
    counter = itertools.count()

    def make() -> Engine:
        directory = tmp_path / f"engine-{next(counter)}"
        directory.mkdir()
        engine = ENGINES[request.param](directory)
        opened.append(engine)
        return engine

    yield make
    for engine in opened:
        engine.close()


@pytest.fixture
def engine(new_engine: Callable[[], Engine]) -> Engine:
    return new_engine()


class Replica:
    """A `ReplicaLog` over an engine, each operation in its own transaction, as the server runs them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rules = ReplicaLog(engine.storage)

    def fence(self, name: str, epoch: int) -> FenceReply:
        return self.engine.run(lambda: self.rules.fence(name, epoch))

    def append(
        self,
        name: str,
        epoch: int,
        prev: Position,
        entries: Sequence[Entry],
        *,
        commit: int = 0,
        from_base: bool = False,
    ) -> AppendReply:
        return self.engine.run(
            lambda: self.rules.append(name, epoch, prev, entries, commit=commit, from_base=from_base)
        )

    def trim(self, name: str, wall_now_ms: int, retention: Retention) -> int:
        return self.engine.run(lambda: self.rules.trim(name, wall_now_ms, retention))

    def read(self, name: str, after_serial: int, limit: int) -> ReadReply:
        return self.engine.run(lambda: self.rules.read(name, after_serial, limit))

    def read_ids(self, name: str, after_serial: int, limit: int) -> ReadReply:
        return self.engine.run(lambda: self.rules.read_ids(name, after_serial, limit))


# --------------------------------------------------------------------------------- helpers


def _message(tag: str, index: int) -> Message:
    """A message that exercises every field the engines store (headers sorted, as the wire gives them)."""
    headers = (("kind", tag), ("n", str(index))) if index % 2 else ()
    return Message(f"{tag}-{index}", name=tag, data=bytes([index % 256]) * (index % 7), headers=headers)


def _entries(first_serial: int, epochs: Sequence[int], tag: str = "m") -> list[Entry]:
    """Entries at first_serial, first_serial + 1, ... with the given epochs and distinct messages."""
    return [
        Entry.make(first_serial + index, epoch, _message(f"{tag}-{epoch}", first_serial + index))
        for index, epoch in enumerate(epochs)
    ]


def _held(engine: Engine, name: str = channel) -> list[Entry]:
    return engine.storage.read(name, 0, whole_log_count)


def _state(engine: Engine) -> dict[str, tuple[int, Position, Position, int, tuple[Entry, ...]]]:
    """Everything a replica holds for the test channels: fence, last position, base, committed, whole log."""
    storage = engine.storage
    return {
        name: (
            storage.fence_of(name),
            storage.last(name),
            storage.base(name),
            storage.committed(name),
            tuple(_held(engine, name)),
        )
        for name in channels
    }


def _replica_with(engine: Engine, epochs: Sequence[int], fence: int | None = None) -> Replica:
    """A replica whose log holds entries 1..len(epochs) at `epochs`, fenced at `fence` (default: the last epoch)."""
    replica = Replica(engine)
    fence = max(epochs, default=0) if fence is None else fence
    if fence:
        assert not replica.fence(channel, fence).fenced
    if epochs:
        assert replica.append(channel, fence, ORIGIN, _entries(1, epochs)).status is AppendStatus.OK
    assert [entry.epoch for entry in _held(engine)] == list(epochs)
    return replica


# --------------------------------------------------------------------------------- the storage itself


def test_an_empty_storage_holds_nothing(engine: Engine) -> None:
    storage = engine.storage
    assert storage.fence_of(channel) == 0
    assert storage.last(channel) == ORIGIN
    assert storage.epoch_at(channel, 0) == 0
    assert storage.epoch_at(channel, 1) is None
    assert storage.read(channel, 0, 10) == []


def test_storage_positions_and_epochs(engine: Engine) -> None:
    _replica_with(engine, [1, 1, 3, 3, 3, 4])
    storage = engine.storage
    assert storage.last(channel) == Position(6, 4)
    assert [storage.epoch_at(channel, serial) for serial in range(8)] == [0, 1, 1, 3, 3, 3, 4, None]
    assert [storage.first_serial_of_epoch(channel, epoch) for epoch in (1, 3, 4)] == [1, 3, 6]
    # The other channel is untouched.
    assert (storage.fence_of(other_channel), storage.last(other_channel)) == (0, ORIGIN)


def test_stored_messages_come_back_identical_and_intact(engine: Engine) -> None:
    message = Message("id-1", "event", bytes(range(256)), (("a", "1"), ("b", "é"), ("z", "")), 1_700_000_000_123)
    entry = Entry.make(1, 7, message)
    Replica(engine).append(channel, 7, ORIGIN, [entry])
    [stored] = _held(engine)
    assert stored == entry
    assert stored.message.headers == message.headers
    assert stored.intact()


# --------------------------------------------------------------------------------- rule 1: fence


def test_fence_raises_the_fence_and_answers_the_last_position(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 2])
    reply = replica.fence(channel, 4)
    assert (reply.fenced, reply.fence_epoch, reply.last) == (False, 4, Position(3, 2))
    assert engine.storage.fence_of(channel) == 4


def test_fence_with_a_lower_epoch_is_fenced_and_changes_nothing(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 3], fence=5)
    before = _state(engine)
    reply = replica.fence(channel, 4)
    assert (reply.fenced, reply.fence_epoch, reply.last) == (True, 5, Position(2, 3))
    assert _state(engine) == before


def test_fence_at_the_same_epoch_is_not_fenced(engine: Engine) -> None:
    replica = _replica_with(engine, [2], fence=2)
    assert replica.fence(channel, 2) == FenceReply(False, 2, Position(1, 2))


def test_fences_of_channels_are_independent(engine: Engine) -> None:
    replica = Replica(engine)
    replica.fence(channel, 7)
    assert not replica.fence(other_channel, 1).fenced
    assert (engine.storage.fence_of(channel), engine.storage.fence_of(other_channel)) == (7, 1)


# --------------------------------------------------------------------------------- rule 2: FENCED, MISMATCH


def test_append_below_the_fence_is_fenced_and_changes_nothing(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1], fence=3)
    before = _state(engine)
    reply = replica.append(channel, 2, Position(2, 1), _entries(3, [2]))
    assert (reply.status, reply.fence_epoch, reply.last) == (AppendStatus.FENCED, 3, Position(2, 1))
    assert _state(engine) == before


def test_append_at_a_higher_epoch_raises_the_fence(engine: Engine) -> None:
    replica = _replica_with(engine, [1], fence=1)
    reply = replica.append(channel, 4, Position(1, 1), _entries(2, [4]))
    assert (reply.status, reply.fence_epoch, reply.match_serial) == (AppendStatus.OK, 4, 2)
    assert engine.storage.fence_of(channel) == 4
    assert replica.append(channel, 1, Position(2, 4), _entries(3, [1])).status is AppendStatus.FENCED


def test_append_after_the_end_of_a_short_log_is_a_mismatch_with_no_conflict(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1], fence=2)
    before = _state(engine)
    reply = replica.append(channel, 2, Position(5, 2), _entries(6, [2]))
    assert reply == AppendReply(AppendStatus.MISMATCH, 2, Position(2, 1))
    assert _state(engine) == before


def test_mismatch_at_a_higher_epoch_raises_the_fence_but_keeps_the_log(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1], fence=1)
    before = _held(engine)
    reply = replica.append(channel, 3, Position(5, 1), _entries(6, [3]))
    assert (reply.status, reply.fence_epoch) == (AppendStatus.MISMATCH, 3)
    assert engine.storage.fence_of(channel) == 3
    assert _held(engine) == before


@pytest.mark.parametrize(
    ("epochs", "prev_serial", "conflict_epoch", "conflict_first_serial"),
    [
        ([3], 1, 3, 1),
        ([1, 1, 2, 2, 2, 4], 4, 2, 3),
        ([1, 2, 3, 3, 3], 5, 3, 3),
        ([1, 2, 3, 3, 3], 2, 2, 2),
        ([1, 1, 1, 1], 3, 1, 1),
    ],
)
def test_mismatch_with_a_conflicting_epoch_names_it_and_its_first_serial(
    engine: Engine, epochs: list[int], prev_serial: int, conflict_epoch: int, conflict_first_serial: int
) -> None:
    replica = _replica_with(engine, epochs, fence=9)
    before = _state(engine)
    # The owner at epoch 9 claims prev is at epoch 8, which no entry of this log has.
    reply = replica.append(channel, 9, Position(prev_serial, 8), _entries(prev_serial + 1, [9]))
    assert reply == AppendReply(
        AppendStatus.MISMATCH,
        9,
        Position(len(epochs), epochs[-1]),
        conflict_epoch=conflict_epoch,
        conflict_first_serial=conflict_first_serial,
    )
    assert _state(engine) == before


# --------------------------------------------------------------------------------- rule 3: truncation, duplicates


def test_append_truncates_the_conflicting_suffix_then_writes(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 2, 2, 2], fence=2)
    kept = _held(engine)[:2]
    new = _entries(3, [3], tag="owner-3")
    reply = replica.append(channel, 3, Position(2, 1), new)
    assert (reply.status, reply.match_serial, reply.last) == (AppendStatus.OK, 3, Position(3, 3))
    assert _held(engine) == kept + new
    assert engine.storage.last(channel) == Position(3, 3)
    assert engine.storage.epoch_at(channel, 4) is None


def test_append_skips_held_entries_and_truncates_at_the_first_conflict_inside_the_batch(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 2, 2, 2, 2], fence=2)
    held = _held(engine)
    batch = [held[1], held[2], *_entries(4, [3, 3], tag="owner-3")]
    reply = replica.append(channel, 3, Position(1, 1), batch)
    assert (reply.status, reply.match_serial, reply.last) == (AppendStatus.OK, 5, Position(5, 3))
    assert _held(engine) == held[:3] + batch[2:]


def test_truncation_to_the_origin_then_a_new_log(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 1], fence=1)
    new = _entries(1, [2, 2], tag="owner-2")
    assert replica.append(channel, 2, ORIGIN, new).status is AppendStatus.OK
    assert _held(engine) == new
    assert engine.storage.first_serial_of_epoch(channel, 2) == 1


def test_late_duplicate_of_an_old_append_never_truncates_later_entries(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 1, 1, 1], fence=1)
    held = _held(engine)
    before = _state(engine)
    reply = replica.append(channel, 1, Position(1, 1), held[1:3])
    assert (reply.status, reply.match_serial, reply.last) == (AppendStatus.OK, 3, Position(5, 1))
    assert _state(engine) == before


def test_late_duplicate_at_an_older_epoch_within_the_fence_never_truncates(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 2, 2], fence=2)
    before = _state(engine)
    reply = replica.append(channel, 2, ORIGIN, _held(engine)[:3])
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 3)
    assert _state(engine) == before


def test_append_overlapping_the_end_extends_only_with_the_new_entries(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 1], fence=1)
    held = _held(engine)
    new = _entries(4, [1, 1], tag="late")
    reply = replica.append(channel, 1, Position(1, 1), [*held[1:], *new])
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 5)
    assert _held(engine) == held + new


# --------------------------------------------------------------------------------- rule 4: malformed appends


def _with_checksum(entry: Entry, checksum: int) -> Entry:
    return Entry(entry.serial, entry.epoch, entry.message, checksum)


_good = _entries(4, [3, 4, 5], tag="new")
MALFORMED = {
    "bad checksum": (Position(3, 2), [_good[0], _with_checksum(_good[1], _good[1].checksum ^ 1)], AppendStatus.CORRUPT),
    "content changed": (
        Position(3, 2),
        [Entry(_good[0].serial, _good[0].epoch, Message("other"), _good[0].checksum)],
        AppendStatus.CORRUPT,
    ),
    "first serial is not prev + 1": (Position(3, 2), _entries(5, [3, 4]), AppendStatus.INVALID),
    "first serial repeats prev": (Position(3, 2), _entries(3, [3, 4]), AppendStatus.INVALID),
    "gap inside the batch": (Position(3, 2), [*_entries(4, [3]), *_entries(6, [3])], AppendStatus.INVALID),
    "epochs decrease inside": (Position(3, 2), _entries(4, [4, 3]), AppendStatus.INVALID),
    "first entry below prev epoch": (Position(3, 2), _entries(4, [1]), AppendStatus.INVALID),
    "entry epoch above the append epoch": (Position(3, 2), _entries(4, [3, 6]), AppendStatus.INVALID),
    "prev epoch above the append epoch": (Position(3, 6), _entries(4, [6]), AppendStatus.INVALID),
    "origin serial with an epoch": (Position(0, 1), _entries(1, [1]), AppendStatus.INVALID),
    "negative prev serial": (Position(-1, 0), _entries(0, [1]), AppendStatus.INVALID),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_append_is_refused_and_changes_nothing(engine: Engine, case: str) -> None:
    prev, entries, expected = MALFORMED[case]
    replica = _replica_with(engine, [1, 1, 2], fence=2)
    before = _state(engine)
    # Epoch 5 is above the fence (2): an engine that wrongly kept part of the append would raise the fence.
    reply = replica.append(channel, 5, prev, entries)
    assert (reply.status, reply.fence_epoch, reply.last, reply.match_serial) == (expected, 2, Position(3, 2), 0)
    assert reply.detail
    assert _state(engine) == before


def test_malformed_append_that_would_also_conflict_is_refused_without_truncating(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 2, 2], fence=2)
    before = _state(engine)
    new = _entries(3, [3, 3])
    assert replica.append(channel, 3, Position(2, 1), [new[0], _with_checksum(new[1], 0)]).status is (
        AppendStatus.CORRUPT
    )
    assert _state(engine) == before


# --------------------------------------------------------------------------------- reads


def test_read_returns_the_requested_range_in_order_with_epochs(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 6 + [2] * 4)
    held = _held(engine)
    reply = replica.read(channel, 3, 4)
    assert reply.entries == tuple(held[3:7])
    assert [(entry.serial, entry.epoch) for entry in reply.entries] == [(4, 1), (5, 1), (6, 1), (7, 2)]
    assert (reply.last, reply.damaged) == (Position(10, 2), 0)
    assert replica.read(channel, 0, 100).entries == tuple(held)
    assert replica.read(channel, 8, 100).entries == tuple(held[8:])
    assert replica.read(channel, -5, 2).entries == tuple(held[:2])


@pytest.mark.parametrize("after_serial", [10, 11, 1_000])
def test_read_after_the_end_is_empty(engine: Engine, after_serial: int) -> None:
    replica = _replica_with(engine, [1] * 10)
    assert replica.read(channel, after_serial, 5) == ReadReply((), Position(10, 1), 0)


@pytest.mark.parametrize("limit", [0, -1])
def test_read_with_no_room_is_empty(engine: Engine, limit: int) -> None:
    replica = _replica_with(engine, [1] * 3)
    assert replica.read(channel, 0, limit).entries == ()


def test_read_of_an_unknown_channel_is_empty(engine: Engine) -> None:
    assert Replica(engine).read("nowhere", 0, 10) == ReadReply((), ORIGIN, 0)


def test_read_limit_is_capped_by_read_entries_max(engine: Engine) -> None:
    count_max = log_module.read_entries_max
    replica = _replica_with(engine, [1] * (count_max + 7))
    reply = replica.read(channel, 0, count_max * 3)
    assert [entry.serial for entry in reply.entries] == list(range(1, count_max + 1))
    assert reply.last == Position(count_max + 7, 1)
    tail = replica.read(channel, count_max, count_max * 3)
    assert [entry.serial for entry in tail.entries] == list(range(count_max + 1, count_max + 8))


def test_ids_only_reads_give_each_entrys_message_id_and_timestamp(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 6 + [2] * 4)
    held = _held(engine)
    reply = replica.read_ids(channel, 3, 4)
    assert reply.ids == tuple((entry.message.id, entry.message.timestamp_ms) for entry in held[3:7])
    assert (reply.entries, reply.last, reply.damaged) == ((), Position(10, 2), 0)
    assert [message_id for message_id, _ in replica.read_ids(channel, 0, 100).ids] == [e.message.id for e in held]
    assert replica.read_ids(channel, 10, 5).ids == ()
    assert replica.read_ids(channel, 0, 0).ids == ()
    assert Replica(engine).read_ids("nowhere", 0, 10) == ReadReply((), ORIGIN, 0)


def test_ids_only_reads_are_capped_by_ids_read_max(engine: Engine) -> None:
    count_max = log_module.ids_read_max
    replica = _replica_with(engine, [1] * (count_max + 3))
    reply = replica.read_ids(channel, 0, count_max * 2)
    assert len(reply.ids) == count_max
    assert reply.ids[-1][0] == _held(engine)[count_max - 1].message.id


def test_reads_of_channels_are_independent(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1])
    other = _entries(1, [5], tag="other")
    replica.append(other_channel, 5, ORIGIN, other)
    assert replica.read(other_channel, 0, 10).entries == tuple(other)
    assert len(replica.read(channel, 0, 10).entries) == 2


# --------------------------------------------------------------------------------- retention (rules 5 and 6)

# Retention by count only: nothing here is old or recent enough for time to matter.
by_count = Retention(age_ms=10**15, entries_max=2, keep_recent_ms=0)


def _stamped(first_serial: int, epoch: int, timestamps_ms: Sequence[int]) -> list[Entry]:
    return [
        Entry.make(first_serial + index, epoch, Message(f"t-{first_serial + index}", timestamp_ms=timestamp_ms))
        for index, timestamp_ms in enumerate(timestamps_ms)
    ]


def test_an_append_tells_the_replica_what_is_committed_as_far_as_it_matches(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 4)
    assert engine.storage.committed(channel) == 0
    # The owner's commit is 9, but this append shows the replica matches only up to 6.
    replica.append(channel, 1, Position(4, 1), _entries(5, [1, 1]), commit=9)
    assert engine.storage.committed(channel) == 6
    replica.append(channel, 1, Position(2, 1), _entries(3, [1]), commit=3)  # a late one: never lowers it
    assert engine.storage.committed(channel) == 6


def test_trim_drops_only_committed_entries_beyond_the_newest_entries_max(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 10)
    assert replica.trim(channel, 0, by_count) == 0, "nothing is known committed yet"
    replica.append(channel, 1, Position(10, 1), (), commit=6)
    assert replica.trim(channel, 0, by_count) == 6  # the count alone would allow 8
    assert engine.storage.base(channel) == Position(6, 1)
    assert engine.storage.last(channel) == Position(10, 1)
    assert [entry.serial for entry in _held(engine)] == [7, 8, 9, 10]
    assert engine.storage.epoch_at(channel, 6) == 1 and engine.storage.epoch_at(channel, 5) is None
    replica.append(channel, 1, Position(10, 1), (), commit=10)
    assert replica.trim(channel, 0, by_count) == 2
    assert [entry.serial for entry in _held(engine)] == [9, 10]


def test_trim_drops_by_age_but_never_what_is_younger_than_keep_recent(engine: Engine) -> None:
    replica = Replica(engine)
    replica.fence(channel, 1)
    replica.append(channel, 1, ORIGIN, _stamped(1, 1, [1_000 * n for n in range(1, 11)]), commit=10)
    retention = Retention(age_ms=5_000, entries_max=10**6, keep_recent_ms=1_000)
    assert replica.trim(channel, 10_000, retention) == 5  # timestamps 1,000 .. 5,000 are 5 s old or more
    assert engine.storage.base(channel) == Position(5, 1)
    everything = Retention(age_ms=0, entries_max=0, keep_recent_ms=3_000)
    assert replica.trim(channel, 10_000, everything) == 2  # 8,000 and younger stay: inside keep_recent
    assert [entry.serial for entry in _held(engine)] == [8, 9, 10]


def test_one_trim_looks_at_scan_max_entries_at_most(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 10)
    replica.append(channel, 1, Position(10, 1), (), commit=10)
    bounded = Retention(age_ms=0, entries_max=0, keep_recent_ms=0, scan_max=4)
    assert [replica.trim(channel, 0, bounded) for _ in range(4)] == [4, 4, 2, 0]


def test_a_log_trimmed_to_its_end_keeps_its_position_and_goes_on(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 2])
    replica.append(channel, 2, Position(3, 2), (), commit=3)
    assert replica.trim(channel, 0, Retention(age_ms=0, entries_max=0, keep_recent_ms=0)) == 3
    assert engine.storage.last(channel) == Position(3, 2) == engine.storage.base(channel)
    assert replica.read(channel, 0, 10) == ReadReply((), Position(3, 2), 0, Position(3, 2))
    assert replica.fence(channel, 3) == FenceReply(False, 3, Position(3, 2))
    assert replica.append(channel, 3, Position(3, 2), _entries(4, [3])).status is AppendStatus.OK
    assert [entry.serial for entry in _held(engine)] == [4]


def test_reads_from_below_the_base_start_after_it_and_name_it(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 6)
    replica.append(channel, 1, Position(6, 1), (), commit=6)
    replica.trim(channel, 0, by_count)
    reply = replica.read(channel, 1, 10)
    assert [entry.serial for entry in reply.entries] == [5, 6] and reply.base == Position(4, 1)
    ids = replica.read_ids(channel, 0, 10)
    assert [message_id for message_id, _ in ids.ids] == [entry.message.id for entry in reply.entries]
    assert ids.base == Position(4, 1)
    assert replica.read(channel, 5, 10).entries == reply.entries[1:]


def test_an_append_from_below_the_base_skips_the_trimmed_entries(engine: Engine) -> None:
    owner_log = _entries(1, [1] * 8)
    replica = Replica(engine)
    replica.fence(channel, 1)
    replica.append(channel, 1, ORIGIN, owner_log[:6], commit=6)
    replica.trim(channel, 0, by_count)  # base (4, 1)
    assert replica.append(channel, 1, owner_log[1].position, owner_log[2:8]).match_serial == 8
    assert _held(engine) == owner_log[4:8]
    assert replica.append(channel, 1, owner_log[0].position, owner_log[1:3]) == AppendReply(
        AppendStatus.OK, 1, Position(8, 1), match_serial=3, base=Position(4, 1)
    )
    assert _held(engine) == owner_log[4:8]
    # The entry at the base restamped by a later takeover (same message, newer epoch): the replica
    # takes the stamp, and drops what it holds after the base (written at older epochs).
    restamped = [owner_log[2], owner_log[3].with_epoch(2)]
    reply = replica.append(channel, 2, owner_log[1].position, restamped)
    assert reply.status is AppendStatus.OK and reply.base == Position(4, 2) and _held(engine) == []
    assert engine.storage.last(channel) == Position(4, 2) and engine.storage.epoch_at(channel, 4) == 2
    # An older stamp than the base's is no owner's log: refused, and nothing changes.
    refused = replica.append(channel, 2, owner_log[3].position, owner_log[4:5])
    assert refused.status is AppendStatus.INVALID and refused.detail == "trimmed"
    assert engine.storage.base(channel) == Position(4, 2)


def test_an_append_from_a_base_resets_a_replica_too_far_behind(engine: Engine) -> None:
    replica = _replica_with(engine, [1, 1, 1])
    assert replica.append(channel, 2, Position(8, 2), _entries(9, [2, 2])).status is AppendStatus.MISMATCH
    reply = replica.append(channel, 2, Position(8, 2), _entries(9, [2, 2]), from_base=True)
    assert reply.status is AppendStatus.OK and reply.match_serial == 10
    assert engine.storage.base(channel) == Position(8, 2)
    assert [entry.serial for entry in _held(engine)] == [9, 10]


def test_an_append_from_a_base_drops_a_conflicting_log_whole(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 10)
    reply = replica.append(channel, 2, Position(5, 2), _entries(6, [2]), from_base=True)
    assert reply.status is AppendStatus.OK and engine.storage.base(channel) == Position(5, 2)
    assert [(entry.serial, entry.epoch) for entry in _held(engine)] == [(6, 2)]


def test_an_append_from_a_base_the_replica_holds_changes_nothing_before_it(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 5)
    held = _held(engine)
    reply = replica.append(channel, 1, Position(3, 1), _entries(4, [1, 1, 1]), from_base=True)
    assert reply.status is AppendStatus.OK and engine.storage.base(channel) == ORIGIN
    assert _held(engine)[:5] == held and len(_held(engine)) == 6


def test_channels_are_listed_in_pages(engine: Engine) -> None:
    replica = Replica(engine)
    names = [f"c{index:02}" for index in range(7)]
    for name in reversed(names):
        replica.fence(name, 1)
    assert engine.storage.channels_after("", 3) == names[:3]
    assert engine.storage.channels_after(names[2], 3) == names[3:6]
    assert engine.storage.channels_after(names[5], 3) == names[6:]
    assert engine.storage.channels_after(names[6], 3) == []


# --------------------------------------------------------------------------------- rule 7: damage at rest


def _damage(engine: Engine, serial: int, how: str, name: str = channel) -> None:
    """Damage the stored entry at `serial` behind the rules' back, as a disk or an operator would:
    "missing" (the row is gone) or "corrupt" (a bit of its checksum flipped)."""
    storage = engine.storage
    if isinstance(storage, MemoryLogStorage):
        storage.damage(name, serial, how)
    elif isinstance(storage, SqliteLogStorage):
        statement = (
            "DELETE FROM entries"
            if how == "missing"
            else "UPDATE entries SET checksum = (checksum | 1) - (checksum & 1)"
        )
        engine.run(lambda: storage._connection.execute(f"{statement} WHERE channel = ? AND serial = ?", (name, serial)))
        storage.rollback()  # forget the engine's cache of positions, as a restart would
    else:
        assert isinstance(storage, RedisLogStorage)
        key = storage.prefix + "e:" + name
        (member,) = storage.client.zrangebyscore(key, serial, serial)
        storage.client.zremrangebyscore(key, serial, serial)
        if how == "corrupt":
            storage.client.zadd(key, {member[:16] + bytes([member[16] ^ 1]) + member[17:]: serial})
        storage.rollback()


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_read_stops_at_damage_and_returns_only_the_intact_run_before_it(engine: Engine, how: str) -> None:
    replica = _replica_with(engine, [1] * 10)
    held = _held(engine)
    _damage(engine, 5, how)
    reply = replica.read(channel, 2, 100)
    assert (reply.entries, reply.damaged, reply.last) == (tuple(held[2:4]), 5, Position(10, 1))
    assert replica.read(channel, 4, 100).entries == ()
    assert replica.read(channel, 4, 100).damaged == 5
    assert replica.read(channel, 5, 100).entries == tuple(held[5:])  # after it, intact again
    if how == "missing":  # ids carry no checksum: a hole shows, a corrupt entry does not
        ids = replica.read_ids(channel, 0, 100)
        assert (len(ids.ids), ids.damaged) == (4, 5)


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_damage_is_recorded_reported_and_repaired_in_place_by_the_owners_append(engine: Engine, how: str) -> None:
    replica = _replica_with(engine, [1] * 10)
    held = _held(engine)
    _damage(engine, 5, how)
    assert replica.engine.run(lambda: replica.rules.mark_damaged(channel, 5)) == how
    assert ("orders", 5, "missing") in replica.rules.found
    assert replica.fence(channel, 1) == FenceReply(False, 1, Position(10, 1), damaged=5)
    assert replica.engine.run(lambda: replica.rules.mark_damaged(channel, 5)) == "missing"  # still
    # The owner rewrites from the first bad serial: the missing entry is filled in place, and every
    # intact entry after it is kept (never a good copy removed by a repair).
    reply = replica.append(channel, 1, held[3].position, held[4:7])
    assert (reply.status, reply.match_serial, reply.damaged, reply.last) == (AppendStatus.OK, 7, 0, Position(10, 1))
    assert _held(engine) == held
    assert replica.read(channel, 0, 100) == ReadReply(tuple(held), Position(10, 1), 0)
    assert replica.engine.run(lambda: replica.rules.mark_damaged(channel, 5)) == ""  # intact now


def test_an_append_whose_prev_is_missing_is_refused_and_names_the_damage(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 10)
    held = _held(engine)
    _damage(engine, 6, "missing")
    reply = replica.append(channel, 1, held[5].position, held[6:8])
    assert (reply.status, reply.damaged) == (AppendStatus.MISMATCH, 6)
    # Unknown damage is found by the first entry compared, too: the owner's resend from before it.
    _damage(engine, 3, "missing")
    reply = replica.append(channel, 1, held[1].position, held[2:8])
    assert (reply.status, reply.match_serial, reply.damaged) == (AppendStatus.OK, 8, 0)
    assert _held(engine) == held


def test_a_late_duplicate_append_over_an_unknown_hole_never_cuts_the_log_there(engine: Engine) -> None:
    """Found by the simulator (seed 6315 of 20,000): a binary search for the first entry not held
    took a hole for a conflict and cut the log there, dropping committed entries after it."""
    replica = _replica_with(engine, [1] * 12)
    held = _held(engine)
    _damage(engine, 9, "missing")  # the replica does not know yet
    reply = replica.append(channel, 1, held[4].position, held[5:9])  # an old append, 6..9, once more
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 9)
    assert _held(engine) == held  # the hole filled, 10..12 kept


def test_a_reset_from_a_base_the_replica_lost_to_damage_keeps_what_follows(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 12)
    held = _held(engine)
    _damage(engine, 6, "missing")
    reply = replica.append(channel, 1, held[5].position, held[6:8], from_base=True)
    assert (reply.status, reply.base) == (AppendStatus.OK, held[5].position)
    assert _held(engine) == held[6:]


def test_a_fence_drops_a_corrupt_last_entry_and_answers_what_the_replica_can_vouch_for(engine: Engine) -> None:
    replica = _replica_with(engine, [1] * 6)
    _damage(engine, 6, "corrupt")
    assert replica.fence(channel, 2) == FenceReply(False, 2, Position(5, 1))
    assert [entry.serial for entry in _held(engine)] == [1, 2, 3, 4, 5]
    assert replica.rules.found == [(channel, 6, "corrupt")]


# --------------------------------------------------------------------------------- randomized comparison


class _RandomRun:
    """Random owners taking over, publishing and appending (and misbehaving) on two channels.

    Each operation is applied to the engine under test and to an in-memory reference; replies must be
    identical. Operations are grouped into transactions of random size (as the server groups
    requests), and on engines with transactions some groups of mutations are rolled back, after which
    the engine must hold exactly what it held before.
    """

    epochs_max = 40

    def __init__(self, seed: int, engine: Engine) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.engine = engine
        self.subject = ReplicaLog(engine.storage)
        self.reference_storage = MemoryLogStorage()
        self.reference = ReplicaLog(self.reference_storage)
        self.owners: dict[str, dict[int, list[Entry]]] = {name: {} for name in channels}
        # The entries up to each channel's base, as the reference held them (or as the owner that
        # reset it had them): with the retained log, the whole log new owners adopt a prefix of.
        self.dropped: dict[str, list[Entry]] = {name: [] for name in channels}
        self.sender_log: list[Entry] = []
        self.messages = itertools.count(1)
        self.outcomes: set[str] = set()

    def _whole(self, name: str) -> list[Entry]:
        return self.dropped[name] + self.reference_storage.read(name, 0, whole_log_count)

    def run(self, steps: int) -> None:
        step = 0
        while step < steps:
            if self.engine.transactional and self.random.random() < 0.1:
                self._rolled_back_group(step)
                continue
            group_size = self.random.randint(1, 6)
            self.engine.begin()
            for _ in range(group_size):
                self._step(step)
                step += 1
            self.engine.commit()
            self._compare_holdings(step)

    def _compare_holdings(self, step: int) -> None:
        for name in channels:
            where = f"seed {self.seed}, step {step}, channel {name}"
            assert self.engine.storage.fence_of(name) == self.reference_storage.fence_of(name), where
            assert self.engine.storage.last(name) == self.reference_storage.last(name), where
            assert self.engine.storage.base(name) == self.reference_storage.base(name), where
            assert self.engine.storage.committed(name) == self.reference_storage.committed(name), where
            expected = self.reference_storage.read(name, 0, whole_log_count)
            assert self.engine.storage.read(name, 0, whole_log_count) == expected, where

    def _step(self, step: int) -> None:
        name = self.random.choice(channels)
        kinds = ["take_over", "publish", "append", "malformed", "read", "trim"]
        kind = self.random.choices(kinds, [1, 4, 6, 1, 2, 0.7])[0]
        operation = getattr(self, f"_{kind}")(name)
        if operation is None:
            return
        before = self._whole(name)
        base = self.reference_storage.base(name)
        expected = operation(self.reference)
        actual = operation(self.subject)
        assert actual == expected, f"seed {self.seed}, step {step}: {kind} on {name}"
        moved = self.reference_storage.base(name)
        if moved != base:
            known = before if len(before) >= moved.serial and before[moved.serial - 1].position == moved else []
            self.dropped[name] = (known or self.sender_log)[: moved.serial]
            self.outcomes.add("trimmed" if known else "reset")
        self._note(expected, before, self._whole(name))

    def _note(self, reply: object, before: list[Entry], after: list[Entry]) -> None:
        if isinstance(reply, FenceReply):
            self.outcomes.add("fenced" if reply.fenced else "fence")
        elif isinstance(reply, AppendReply):
            self.outcomes.add(reply.status.name)
            if reply.conflict_epoch:
                self.outcomes.add("conflict")
            if after[: len(before)] != before:
                self.outcomes.add("truncated")
        elif isinstance(reply, ReadReply) and reply.entries:
            self.outcomes.add("read")

    def _take_over(self, name: str) -> Callable[[ReplicaLog], FenceReply] | None:
        owners = self.owners[name]
        unused = [epoch for epoch in range(1, self.epochs_max + 1) if epoch not in owners]
        if not unused:
            return None
        # Mostly the next epoch up, as rings advance; sometimes an older one: an owner already stale.
        newest = max(owners, default=0)
        newer = [epoch for epoch in unused if epoch > newest]
        older = [epoch for epoch in unused if epoch < newest]
        stale = older and (not newer or self.random.random() < 0.25)
        # Rings skip versions, so newer epochs leave gaps that stale owners may show up with later.
        epoch = self.random.choice(older) if stale else self.random.choice(newer[:3])
        # The new owner adopts a prefix of this replica's log (as if another replica of its fence
        # quorum were shorter), keeping only epochs it could have seen, and rewrites its tail.
        held = self._whole(name)
        adopted = [entry for entry in held[: self.random.randint(0, len(held))] if entry.epoch <= epoch]
        rewrite = self.random.randint(1 if adopted else 0, len(adopted))
        for index in range(len(adopted) - rewrite, len(adopted)):
            adopted[index] = adopted[index].with_epoch(epoch)
        owners[epoch] = adopted
        return lambda replica: replica.fence(name, epoch)

    def _publish(self, name: str) -> None:
        owners = self.owners[name]
        if owners:
            epoch = self._pick_owner(sorted(owners))
            owner_log = owners[epoch]
            for _ in range(self.random.randint(1, 3)):
                owner_log.append(Entry.make(len(owner_log) + 1, epoch, _message("random", next(self.messages))))

    def _pick_owner(self, epochs: Sequence[int]) -> int:
        """Mostly the newest owner (the one that can make progress); sometimes a stale one."""
        return epochs[-1] if self.random.random() < 0.75 else self.random.choice(epochs)

    def _draw_append(self, name: str, length_min: int) -> tuple[int, Position, list[Entry]] | None:
        candidates = sorted(epoch for epoch, owned in self.owners[name].items() if len(owned) >= length_min)
        if not candidates:
            return None
        epoch = self._pick_owner(candidates)
        owner_log = self.owners[name][epoch]
        start = self.random.randint(0, len(owner_log) - length_min)
        length = self.random.randint(length_min, len(owner_log) - start)
        prev = owner_log[start - 1].position if start else ORIGIN
        return epoch, prev, owner_log[start : start + length]

    def _append(self, name: str) -> Callable[[ReplicaLog], AppendReply] | None:
        drawn = self._draw_append(name, 0)
        if drawn is None:
            return None
        epoch, prev, entries = drawn
        owner_log = self.owners[name][epoch]
        self.sender_log = owner_log
        commit = self.random.randint(len(owner_log) // 2, len(owner_log))
        from_base = self.random.random() < 0.1
        return lambda replica: replica.append(name, epoch, prev, entries, commit=commit, from_base=from_base)

    def _trim(self, name: str) -> Callable[[ReplicaLog], int]:
        retention = Retention(
            age_ms=10**15,
            entries_max=self.random.choice([0, 3, 8, 20]),
            keep_recent_ms=0,
            scan_max=self.random.randint(1, 8),
        )
        return lambda replica: replica.trim(name, 0, retention)

    def _malformed(self, name: str) -> Callable[[ReplicaLog], AppendReply] | None:
        drawn = self._draw_append(name, 1)
        if drawn is None:
            return None
        epoch, prev, entries = drawn
        index = self.random.randrange(len(entries))
        entry = entries[index]
        kind = self.random.choice(["checksum", "serial", "epoch-above", "prev-above"])
        if kind == "checksum":
            entries = [*entries[:index], _with_checksum(entry, entry.checksum ^ 0x80)]
        elif kind == "serial":
            entries = [*entries[:index], Entry.make(entry.serial + 1, entry.epoch, entry.message)]
        elif kind == "epoch-above":
            entries = [*entries[:index], Entry.make(entry.serial, epoch + 1, entry.message)]
        else:
            prev = Position(prev.serial, epoch + 1)
        return lambda replica: replica.append(name, epoch, prev, entries)

    def _read(self, name: str) -> Callable[[ReplicaLog], ReadReply]:
        after_serial = self.random.randint(-1, 30)
        limit = self.random.randint(0, 12)
        return lambda replica: replica.read(name, after_serial, limit)

    def _rolled_back_group(self, step: int) -> None:
        """Fences and appends applied to the engine only, then rolled back: nothing may remain."""
        before = _state(self.engine)
        self.engine.begin()
        for _ in range(self.random.randint(1, 4)):
            name = self.random.choice(channels)
            self.subject.fence(name, self.random.randint(1, self.epochs_max + 2))
            drawn = self._draw_append(name, 0)
            if drawn is not None:
                epoch, prev, entries = drawn
                self.subject.append(name, epoch, prev, entries)
        self.engine.rollback()
        assert _state(self.engine) == before, f"seed {self.seed}, step {step}: rollback left something behind"
        self.outcomes.add("rolled back")


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_give_the_reference_replies_and_logs(new_engine: Callable[[], Engine], seed: int) -> None:
    engine = new_engine()
    run = _RandomRun(seed, engine)
    run.run(steps=600)
    run._compare_holdings(600)
    # The run must have reached every kind of answer, or it proves little.
    expected = {"fence", "fenced", "OK", "FENCED", "MISMATCH", "conflict", "truncated", "read", "trimmed", "reset"}
    expected |= {"rolled back"} if engine.transactional else set()
    assert expected <= run.outcomes, f"seed {seed}: never reached {sorted(expected - run.outcomes)}"
    assert run.outcomes & {"CORRUPT", "INVALID"}


# --------------------------------------------------------------------------------- SQLite only


def _sqlite(path: Path, channel_cache_entries_max: int = 100_000) -> SqliteLogStorage:
    return SqliteLogStorage(str(path), channel_cache_entries_max=channel_cache_entries_max)


def _in_transaction(storage: SqliteLogStorage, operation: Callable[[], Result]) -> Result:
    storage.begin()
    result = operation()
    storage.commit()
    return result


def test_sqlite_uses_wal_and_syncs_every_commit(tmp_path: Path) -> None:
    storage = _sqlite(tmp_path / "store.sqlite3")
    connection = storage._connection
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    storage.close()


def test_a_schema_1_store_opens_and_its_old_rows_still_give_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    old = _entries(1, [2, 2, 2])
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
    new = _entries(4, [2, 2])
    assert _in_transaction(storage, lambda: replica.append(channel, 2, Position(3, 2), new)).status is AppendStatus.OK
    assert storage.read(channel, 0, 10) == old + new
    ids = _in_transaction(storage, lambda: replica.read_ids(channel, 0, 10)).ids
    assert ids == tuple((e.message.id, e.message.timestamp_ms) for e in old + new)
    stored = storage._connection.execute("SELECT message_id FROM entries ORDER BY serial").fetchall()
    assert stored == [(None,)] * 3 + [(e.message.id,) for e in new]
    # Schema 3: the channel row keeps its fence and gains a base and a committed serial.
    assert storage.fence_of(channel) == 2 and storage.base(channel) == ORIGIN and storage.committed(channel) == 0
    _in_transaction(storage, lambda: replica.append(channel, 2, Position(5, 2), (), commit=5))
    _in_transaction(storage, lambda: replica.trim(channel, 0, by_count))
    storage.close()
    reopened = _sqlite(path)
    assert reopened.base(channel) == Position(3, 2) and reopened.committed(channel) == 5
    assert reopened.read(channel, 0, 10) == new
    reopened.close()


def test_sqlite_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    log_entries = _entries(1, [3, 3, 4])
    _in_transaction(storage, lambda: replica.fence(channel, 4))
    _in_transaction(storage, lambda: replica.append(channel, 4, ORIGIN, log_entries))
    _in_transaction(storage, lambda: replica.fence(other_channel, 9))
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
    _in_transaction(storage, lambda: replica.append(channel, 2, ORIGIN, _entries(1, [1, 2, 2])))

    storage.begin()
    replica.fence(channel, 5)
    assert replica.append(channel, 5, Position(1, 1), _entries(2, [5])).status is AppendStatus.OK  # truncates
    replica.append(other_channel, 6, ORIGIN, _entries(1, [6]))
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
        storage.extend(channel, _entries(1, [1]))
    with pytest.raises(InvariantViolation):
        storage.truncate_after(channel, 0)
    assert (storage.fence_of(channel), storage.last(channel)) == (0, ORIGIN)
    storage.close()


def test_sqlite_reader_sees_only_committed_data(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    writer = _sqlite(path)
    reader = SqliteLogStorage(str(path), read_only=True)
    first = _entries(1, [1])
    _in_transaction(writer, lambda: writer.extend(channel, first))
    writer.begin()
    writer.extend(channel, _entries(2, [1]))
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
            entries = _entries(prev.serial + 1, [round_number], tag=name)
            reply = _in_transaction(storage, lambda: replica.append(name, round_number, prev, entries))  # noqa: B023
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
    _in_transaction(storage, lambda: replica.append(channel, 1, ORIGIN, _entries(1, [1, 1, 1, 1])))
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
    held = _entries(1, [1] * 30)
    _in_transaction(storage, lambda: replica.append(channel, 1, ORIGIN, held))
    _corrupt(path, "UPDATE entries SET serial = serial + (1 << 40) WHERE channel = ? AND serial = 20", (channel,))
    storage = _sqlite(path)
    replica = ReplicaLog(storage)
    assert storage.last(channel) == Position(20 + (1 << 40), 1)  # what the engine alone believes
    assert _in_transaction(storage, lambda: replica.fence(channel, 2)) == FenceReply(False, 2, Position(30, 1))
    reply = _in_transaction(storage, lambda: replica.read(channel, 15, 100))
    assert (reply.damaged, [e.serial for e in reply.entries]) == (20, [16, 17, 18, 19])
    assert _in_transaction(storage, lambda: replica.mark_damaged(channel, 20)) == "missing"
    repaired = _in_transaction(storage, lambda: replica.append(channel, 2, held[18].position, held[19:25]))
    assert (repaired.status, repaired.damaged) == (AppendStatus.OK, 0)
    assert storage.read(channel, 0, 100) == held
    storage.close()


def test_sqlite_schema_3_files_gain_the_damaged_column(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    storage = _sqlite(path)
    _in_transaction(storage, lambda: ReplicaLog(storage).append(channel, 1, ORIGIN, _entries(1, [1, 1])))
    storage.close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE fences DROP COLUMN damaged")
        connection.execute("PRAGMA user_version = 3")
    storage = _sqlite(path)
    assert storage.damaged(channel) == 0 and storage.fence_of(channel) == 1
    _in_transaction(storage, lambda: storage.set_damaged(channel, 2))
    assert _sqlite(path).damaged(channel) == 2
    storage.close()


# --------------------------------------------------------------------------------- Redis only


def _redis(url: str, prefix: str) -> RedisLogStorage:
    return RedisLogStorage(open_redis(url), prefix=prefix)


def test_redis_commit_survives_a_sigkill_of_redis_itself(tmp_path: Path) -> None:
    """appendfsync always: what a commit returned for is on disk, even if Redis dies at once."""
    with RedisServer(tmp_path / "redis") as server:
        storage = _redis(server.url, "k:")
        check_durable(storage.client)
        replica = ReplicaLog(storage)
        log_entries = _entries(1, [3, 3, 4])
        _in_transaction(storage, lambda: replica.fence(channel, 4))
        _in_transaction(storage, lambda: replica.append(channel, 4, ORIGIN, log_entries))
        storage.client.close()
        server.stop()  # SIGKILL
        server.start()  # same directory and port: replays its append-only file
        reopened = _redis(server.url, "k:")
        assert (reopened.fence_of(channel), reopened.last(channel)) == (4, Position(3, 4))
        assert reopened.read(channel, 0, 10) == log_entries
        assert reopened.channels() == [channel]
        reopened.close()


def test_redis_second_writer_makes_the_commit_fail_whole(tmp_path: Path) -> None:
    """The fence check and the write are one atomic script: a writer working from a stale view of a
    channel (another writer raised its fence meanwhile) writes nothing at all."""
    url = _redis_url(tmp_path)
    prefix = f"{uuid.uuid4().hex}:"
    first, second = _redis(url, prefix), _redis(url, prefix)
    _in_transaction(first, lambda: ReplicaLog(first).append(channel, 2, ORIGIN, _entries(1, [2])))
    assert first.fence_of(channel) == 2  # cached by the first writer now
    _in_transaction(second, lambda: ReplicaLog(second).fence(channel, 5))
    first.begin()
    assert ReplicaLog(first).append(channel, 2, Position(1, 2), _entries(2, [2])).status is AppendStatus.OK
    ReplicaLog(first).fence(other_channel, 3)
    with pytest.raises(RedisConflict):
        first.commit()
    # Nothing of the group was written, and the first writer forgot what it had cached.
    assert (first.fence_of(channel), first.last(channel), first.fence_of(other_channel)) == (5, Position(1, 2), 0)
    assert ReplicaLog(first).fence(channel, 4).fenced
    first.close()
    second.close()


def test_redis_rollback_leaves_nothing_behind(tmp_path: Path) -> None:
    storage = _redis(_redis_url(tmp_path), f"{uuid.uuid4().hex}:")
    replica = ReplicaLog(storage)
    _in_transaction(storage, lambda: replica.append(channel, 2, ORIGIN, _entries(1, [1, 2, 2])))
    storage.begin()
    replica.fence(channel, 5)
    assert replica.append(channel, 5, Position(1, 1), _entries(2, [5])).status is AppendStatus.OK  # truncates
    assert storage.last(channel) == Position(2, 5)
    storage.rollback()
    assert (storage.fence_of(channel), storage.last(channel)) == (2, Position(3, 2))
    assert [entry.epoch for entry in storage.read(channel, 0, 10)] == [1, 2, 2]
    with pytest.raises(InvariantViolation):
        storage.set_fence(channel, 9)  # outside a transaction
    storage.close()


def test_redis_written_before_ordered_names_pages_its_channels_once_reopened(tmp_path: Path) -> None:
    prefix = f"{uuid.uuid4().hex}:"
    storage = _redis(_redis_url(tmp_path), prefix)
    replica = ReplicaLog(storage)
    for name in ("b", "a", "c"):
        _in_transaction(storage, lambda name=name: replica.fence(name, 1))
    storage.client.delete(prefix + "names")  # as an older store left it: the set of names only
    storage.close()
    reopened = _redis(_redis_url(tmp_path), prefix)
    assert reopened.channels_after("", 2) == ["a", "b"] and reopened.channels_after("b", 2) == ["c"]
    reopened.close()


def test_redis_that_does_not_sync_every_write_is_refused(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = open_redis(server.url)
        client.config_set("appendfsync", "everysec")
        with pytest.raises(SystemExit, match="appendfsync always"):
            check_durable(client)
        client.close()
