"""Properties of the Redis engine beyond the contract."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from services.core.entries import ORIGIN, Position
from services.core.invariants import InvariantViolation
from services.core.replica_log import (
    AppendStatus,
    ReplicaLog,
)
from services.store.redis_engine import RedisConflict, RedisLogStorage, check_durable, open_redis
from tests.core.store_contract.harness import _redis_url, channel, in_transaction, make_entries, other_channel
from tests.redis_server import RedisServer

# --------------------------------------------------------------------------------- Redis only


def _redis(url: str, prefix: str) -> RedisLogStorage:
    return RedisLogStorage(open_redis(url), prefix=prefix)


def test_redis_commit_survives_a_sigkill_of_redis_itself(tmp_path: Path) -> None:
    """appendfsync always: what a commit returned for is on disk, even if Redis dies at once."""
    with RedisServer(tmp_path / "redis") as server:
        storage = _redis(server.url, "k:")
        check_durable(storage.client)
        replica = ReplicaLog(storage)
        log_entries = make_entries(1, [3, 3, 4])
        in_transaction(storage, lambda: replica.fence(channel, 4))
        in_transaction(storage, lambda: replica.append(channel, 4, ORIGIN, log_entries))
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
    in_transaction(first, lambda: ReplicaLog(first).append(channel, 2, ORIGIN, make_entries(1, [2])))
    assert first.fence_of(channel) == 2  # cached by the first writer now
    in_transaction(second, lambda: ReplicaLog(second).fence(channel, 5))
    first.begin()
    assert ReplicaLog(first).append(channel, 2, Position(1, 2), make_entries(2, [2])).status is AppendStatus.OK
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
    in_transaction(storage, lambda: replica.append(channel, 2, ORIGIN, make_entries(1, [1, 2, 2])))
    storage.begin()
    replica.fence(channel, 5)
    assert replica.append(channel, 5, Position(1, 1), make_entries(2, [5])).status is AppendStatus.OK  # truncates
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
        in_transaction(storage, lambda name=name: replica.fence(name, 1))
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
