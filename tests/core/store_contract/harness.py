"""What the store contract suite shares: the engines it runs against (`ENGINES`), a replica over
an engine, and the helpers that build entries and read back what an engine holds."""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.memory_log import MemoryLogStorage
from services.core.replica_log import (
    AppendReply,
    AppendStatus,
    FenceReply,
    LogStorage,
    ReadReply,
    ReplicaLog,
    Retention,
)
from services.store.redis_engine import RedisLogStorage, open_redis
from services.store.sqlite_engine import SqliteLogStorage
from tests.redis_server import RedisServer

Result = TypeVar("Result")

channel = "orders"
other_channel = "chat:lobby"
channels = (channel, other_channel)

# Large enough to read any log these tests build, in one call to the storage (which has no cap).
whole_log_count = 1_000_000


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


def make_message(tag: str, index: int) -> Message:
    """A message that exercises every field the engines store (headers sorted, as the wire gives them)."""
    headers = (("kind", tag), ("n", str(index))) if index % 2 else ()
    return Message(f"{tag}-{index}", name=tag, data=bytes([index % 256]) * (index % 7), headers=headers)


def make_entries(first_serial: int, epochs: Sequence[int], tag: str = "m") -> list[Entry]:
    """Entries at first_serial, first_serial + 1, ... with the given epochs and distinct messages."""
    return [
        Entry.make(first_serial + index, epoch, make_message(f"{tag}-{epoch}", first_serial + index))
        for index, epoch in enumerate(epochs)
    ]


def held_entries(engine: Engine, name: str = channel) -> list[Entry]:
    return engine.storage.read(name, 0, whole_log_count)


def engine_state(engine: Engine) -> dict[str, tuple[int, Position, Position, int, tuple[Entry, ...]]]:
    """Everything a replica holds for the test channels: fence, last position, base, committed, whole log."""
    storage = engine.storage
    return {
        name: (
            storage.fence_of(name),
            storage.last(name),
            storage.base(name),
            storage.committed(name),
            tuple(held_entries(engine, name)),
        )
        for name in channels
    }


def replica_with(engine: Engine, epochs: Sequence[int], fence: int | None = None) -> Replica:
    """A replica whose log holds entries 1..len(epochs) at `epochs`, fenced at `fence` (default: the last epoch)."""
    replica = Replica(engine)
    fence = max(epochs, default=0) if fence is None else fence
    if fence:
        assert not replica.fence(channel, fence).fenced
    if epochs:
        assert replica.append(channel, fence, ORIGIN, make_entries(1, epochs)).status is AppendStatus.OK
    assert [entry.epoch for entry in held_entries(engine)] == list(epochs)
    return replica


def with_checksum(entry: Entry, checksum: int) -> Entry:
    return Entry(entry.serial, entry.epoch, entry.message, checksum)


def in_transaction(storage: SqliteLogStorage, operation: Callable[[], Result]) -> Result:
    storage.begin()
    result = operation()
    storage.commit()
    return result


by_count = Retention(age_ms=10**15, entries_max=2, keep_recent_ms=0)


def damage_at_rest(engine: Engine, serial: int, how: str, name: str = channel) -> None:
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
