"""The store replica as a real OS process: `python -m services.store` on loopback.

Over gRPC: batched Fence, Append and Read map the replica log rules to the protos, each channel of
a call judged on its own; bad input gets INVALID_ARGUMENT with a reason and changes nothing; writes
that arrive while a commit is held up share the next commit (group commit); a corrupt stored entry
is never served. Durability, membership and retention: test_store_process.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.convert import entry_from_proto
from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.replica_log import COMMIT_ID_KEY, COMMIT_REQUESTS_KEY, read_entries_max
from services.internal.v1 import store_service_pb2 as store_pb2
from services.internal.v1 import store_service_pb2_grpc as store_grpc
from services.store import requests as store_requests
from services.store import server as store_server
from tests.integration.procs import ServiceProcess, ServiceProcesses
from tests.integration.store_rpc import (
    append_one,
    call_timeout_s,
    channel_append,
    failure_of,
    fence_one,
    make_entries,
    read_entries,
    read_result,
    refusal_of,
    serials_in,
    start_store,
    stub_of,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One store process shared by the tests that only talk to it (each uses its own channels)."""
    directory = tmp_path_factory.mktemp("store")
    with ServiceProcesses(directory / "logs") as started:
        yield start_store(started, directory / "data")


@pytest.fixture
def stub(store: ServiceProcess) -> Iterator[store_grpc.StoreServiceStub]:
    channel, stub = stub_of(store)
    with channel:
        yield stub


# --------------------------------------------------------------------------------- serving


def test_health_says_serving_for_the_server_and_the_store_service(store: ServiceProcess) -> None:
    with grpc.insecure_channel(store.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ringcast.internal.v1.StoreService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=call_timeout_s)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_fence_append_read_round_trip(stub: store_grpc.StoreServiceStub) -> None:
    fence = fence_one(stub, "round-trip", 3)
    assert (fence.fenced, fence.fence_epoch, fence.last.serial) == (False, 3, 0)
    entries = make_entries(1, [3, 3, 3])
    result = append_one(stub, channel_append("round-trip", 3, ORIGIN, entries))
    assert result.status == store_pb2.APPEND_STATUS_OK
    assert (result.match_serial, result.last.serial, result.last.epoch, result.fence_epoch) == (3, 3, 3, 3)
    assert read_entries(stub, "round-trip") == entries
    assert read_entries(stub, "round-trip", after_serial=1, limit=1) == entries[1:2]
    stale = fence_one(stub, "round-trip", 2)
    assert (stale.fenced, stale.fence_epoch, stale.last.serial, stale.last.epoch) == (True, 3, 3, 3)


def test_an_entry_forged_at_a_held_serial_and_epoch_is_refused_as_data_loss(stub: store_grpc.StoreServiceStub) -> None:
    """The attack of issue #16: a self-made entry at the owner's (serial, epoch) must not be
    acknowledged as held (replica log rule 8); the real one still is."""
    fence_one(stub, "forged", 4)
    entries = make_entries(1, [4, 4, 4])
    assert append_one(stub, channel_append("forged", 4, ORIGIN, entries)).status == store_pb2.APPEND_STATUS_OK
    (forged,) = make_entries(2, [4], tag="forged")
    refused = append_one(stub, channel_append("forged", 4, entries[0].position, [forged]))
    assert refused.status == store_pb2.APPEND_STATUS_DATA_LOSS and refused.match_serial == 0, refused
    assert read_entries(stub, "forged") == entries  # nothing written
    held = append_one(stub, channel_append("forged", 4, entries[0].position, entries[1:2]))
    assert (held.status, held.match_serial) == (store_pb2.APPEND_STATUS_OK, 2)


def test_one_append_call_judges_each_channel_on_its_own(stub: store_grpc.StoreServiceStub) -> None:
    fence_one(stub, "batch-fenced", 5)
    append_one(stub, channel_append("batch-conflict", 2, ORIGIN, make_entries(1, [1, 2, 2])))
    good = make_entries(1, [4])
    bad_checksum = Entry(1, 4, Message("x"), 12345)
    response = stub.Append(
        store_pb2.AppendRequest(
            appends=[
                channel_append("batch-ok", 4, ORIGIN, good),
                channel_append("batch-fenced", 4, ORIGIN, make_entries(1, [4])),
                channel_append("batch-short", 4, Position(7, 4), make_entries(8, [4])),
                channel_append("batch-conflict", 4, Position(3, 3), make_entries(4, [4])),
                channel_append("batch-corrupt", 4, ORIGIN, [bad_checksum]),
                channel_append("batch-invalid", 4, ORIGIN, make_entries(2, [4])),
            ]
        ),
        timeout=call_timeout_s,
    )
    statuses = [store_pb2.AppendStatus.Name(result.status) for result in response.results]
    assert statuses == [
        "APPEND_STATUS_OK",
        "APPEND_STATUS_FENCED",
        "APPEND_STATUS_MISMATCH",
        "APPEND_STATUS_MISMATCH",
        "APPEND_STATUS_CORRUPT",
        "APPEND_STATUS_INVALID",
    ]
    ok, fenced, short, conflict, corrupt, invalid = response.results
    assert ok.match_serial == 1
    assert fenced.fence_epoch == 5
    assert (short.conflict_epoch, short.conflict_first_serial, short.last.serial) == (0, 0, 0)
    assert (conflict.conflict_epoch, conflict.conflict_first_serial, conflict.last.serial) == (2, 2, 3)
    assert corrupt.detail and invalid.detail
    assert read_entries(stub, "batch-ok") == good
    assert read_entries(stub, "batch-corrupt") == [] and read_entries(stub, "batch-invalid") == []


def test_read_limit_zero_means_the_default_and_large_limits_are_capped(stub: store_grpc.StoreServiceStub) -> None:
    count = read_entries_max + 50
    append_one(stub, channel_append("long", 1, ORIGIN, make_entries(1, [1] * count)))
    assert len(read_entries(stub, "long")) == store_requests.read_entries_default
    capped = read_entries(stub, "long", limit=10 * count)
    assert [entry.serial for entry in capped] == list(range(1, read_entries_max + 1))
    response = read_result(stub, "long", after_serial=count - 2)
    assert [entry.serial for entry in response.entries] == [count - 1, count]
    assert (response.last.serial, response.last.epoch) == (count, 1)


def test_one_fence_call_judges_each_channel_on_its_own(stub: store_grpc.StoreServiceStub) -> None:
    fence_one(stub, "fences-stale", 9)
    append_one(stub, channel_append("fences-held", 2, ORIGIN, make_entries(1, [2, 2])))
    response = stub.Fence(
        store_pb2.FenceRequest(
            fences=[
                store_pb2.ChannelFence(channel="fences-new", epoch=4),
                store_pb2.ChannelFence(channel="fences-stale", epoch=4),
                store_pb2.ChannelFence(channel="fences-held", epoch=4),
            ]
        ),
        timeout=call_timeout_s,
    )
    new, stale, held = response.results
    assert (new.fenced, new.fence_epoch, new.last.serial) == (False, 4, 0)
    assert (stale.fenced, stale.fence_epoch) == (True, 9)
    assert (held.fenced, held.fence_epoch, held.last.serial, held.last.epoch) == (False, 4, 2, 2)
    assert append_one(stub, channel_append("fences-held", 3, Position(2, 2), make_entries(3, [3]))).status == (
        store_pb2.APPEND_STATUS_FENCED
    )


def test_one_read_call_answers_each_channel_and_keeps_to_its_size_budget(stub: store_grpc.StoreServiceStub) -> None:
    big = b"x" * (64 * 1024)
    count = store_requests.read_response_bytes_max // len(big) + 8
    entries = [Entry.make(serial, 1, Message(f"big-{serial}", data=big)) for serial in range(1, count + 1)]
    append_one(stub, channel_append("reads-big", 1, ORIGIN, entries))
    append_one(stub, channel_append("reads-small", 1, ORIGIN, make_entries(1, [1, 1])))
    response = stub.Read(
        store_pb2.ReadRequest(
            reads=[
                store_pb2.ChannelRead(channel="reads-big", limit=count),
                store_pb2.ChannelRead(channel="reads-small"),
                store_pb2.ChannelRead(channel="reads-none"),
            ]
        ),
        timeout=call_timeout_s,
    )
    first, small, none = response.results
    # The budget stops the big read short of `count`; the next read still gets its first entry.
    assert 1 < len(first.entries) < count
    assert len(first.entries) * len(big) <= store_requests.read_response_bytes_max + len(big)
    assert [entry.serial for entry in first.entries] == list(range(1, len(first.entries) + 1))
    assert [entry.serial for entry in small.entries] == [1]
    assert (small.last.serial, none.last.serial, len(none.entries)) == (2, 0, 0)
    assert [entry_from_proto(entry) for entry in first.entries] == entries[: len(first.entries)]


# --------------------------------------------------------------------------------- bad input


def test_bad_input_is_invalid_argument_with_a_reason_and_changes_nothing(stub: store_grpc.StoreServiceStub) -> None:
    too_big = store_requests.stored_value_max + 1
    refusals = {
        "read without channel": lambda: read_entries(stub, ""),
        "fence without channel": lambda: fence_one(stub, "", 1),
        "fence epoch too big": lambda: fence_one(stub, "bad-input", too_big),
        "read after too big": lambda: read_entries(stub, "bad-input", after_serial=too_big),
        "channel too long": lambda: read_entries(stub, "x" * 257),
        # One bad fence spoils the call: the good one before it is not applied either.
        "fence spoilt by a bad one": lambda: stub.Fence(
            store_pb2.FenceRequest(
                fences=[store_pb2.ChannelFence(channel="bad-input", epoch=5), store_pb2.ChannelFence(epoch=5)]
            ),
            timeout=call_timeout_s,
        ),
        "too many fences": lambda: stub.Fence(
            store_pb2.FenceRequest(
                fences=[store_pb2.ChannelFence(channel="bad-input", epoch=5)] * (store_requests.fence_channels_max + 1)
            ),
            timeout=call_timeout_s,
        ),
        "too many reads": lambda: stub.Read(
            store_pb2.ReadRequest(
                reads=[store_pb2.ChannelRead(channel="bad-input")] * (store_requests.read_channels_max + 1)
            ),
            timeout=call_timeout_s,
        ),
        # One bad append spoils the call: the good one before it is not applied either.
        "append without channel": lambda: stub.Append(
            store_pb2.AppendRequest(
                appends=[
                    channel_append("bad-input", 1, ORIGIN, make_entries(1, [1])),
                    channel_append("", 1, ORIGIN, make_entries(1, [1])),
                ]
            ),
            timeout=call_timeout_s,
        ),
        "too many appends": lambda: stub.Append(
            store_pb2.AppendRequest(
                appends=[channel_append("bad-input", 1, ORIGIN, [])] * (store_requests.append_channels_max + 1)
            ),
            timeout=call_timeout_s,
        ),
    }
    expected_reasons = {
        "read without channel": "CHANNEL_NAME_EMPTY",
        "fence without channel": "CHANNEL_NAME_EMPTY",
        "fence epoch too big": "VALUE_OUT_OF_RANGE",
        "read after too big": "VALUE_OUT_OF_RANGE",
        "channel too long": "CHANNEL_NAME_TOO_LONG",
        "fence spoilt by a bad one": "CHANNEL_NAME_EMPTY",
        "too many fences": "TOO_MANY_FENCES",
        "too many reads": "TOO_MANY_READS",
        "append without channel": "CHANNEL_NAME_EMPTY",
        "too many appends": "TOO_MANY_APPENDS",
    }
    for name, operation in refusals.items():
        assert refusal_of(failure_of(operation)) == (grpc.StatusCode.INVALID_ARGUMENT, expected_reasons[name]), name
    fence = fence_one(stub, "bad-input", 0)
    assert (fence.fence_epoch, fence.last.serial) == (0, 0)


# --------------------------------------------------------------------------------- group commit


def _database(data_dir: Path) -> Path:
    return data_dir / store_server.database_file_name


@contextlib.contextmanager
def _stalled_writer(database: Path) -> Iterator[None]:
    """Hold SQLite's write lock from outside, as a slow disk would hold up a commit.

    The store's writer waits for the lock (its busy timeout is far longer), and every write request
    that arrives meanwhile queues behind it: what group commit must then commit together.
    """
    connection = sqlite3.connect(database, timeout=call_timeout_s, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def _small_appends(stub: store_grpc.StoreServiceStub, prefix: str, count: int) -> list[grpc.Future]:
    return [
        stub.Append.future(
            store_pb2.AppendRequest(appends=[channel_append(f"{prefix}-{index}", 1, ORIGIN, make_entries(1, [1]))]),
            timeout=call_timeout_s,
        )
        for index in range(count)
    ]


def test_concurrent_appends_share_commits(processes: ServiceProcesses, tmp_path: Path) -> None:
    """50 concurrent appends while a commit is held up: far fewer commits than calls.

    A store that committed each request on its own would show 50 distinct commit ids.
    """
    process = start_store(processes, tmp_path / "data")
    channel, stub = stub_of(process)
    with channel:
        with _stalled_writer(_database(tmp_path / "data")):
            calls = _small_appends(stub, "group", 50)
            stall_s = 0.5  # long enough for every call to reach the store's queue
            time.sleep(stall_s)
            assert not any(call.done() for call in calls), "answered while the commit could not happen"
        commits: dict[str, int] = {}
        replies_per_commit: dict[str, int] = {}
        for call in calls:
            [result] = call.result().results
            assert result.status == store_pb2.APPEND_STATUS_OK
            metadata = dict(call.trailing_metadata())
            commit_id = metadata[COMMIT_ID_KEY]
            commits[commit_id] = int(metadata[COMMIT_REQUESTS_KEY])
            replies_per_commit[commit_id] = replies_per_commit.get(commit_id, 0) + 1
    # The first request may have been taken alone before the stall; the rest wait in one queue.
    assert len(commits) <= 3, f"50 appends took {len(commits)} commits: {sorted(commits.values())}"
    # Each commit says how many requests it carried: exactly the replies that name it.
    assert replies_per_commit == commits
    assert process.stop() == 0
    [summary] = [line for line in process.output().splitlines() if "group commits" in line]
    words = summary.split()
    total_commits, total_requests = int(words[words.index("group") - 1]), int(words[words.index("requests") - 1])
    assert (total_commits, total_requests) == (len(commits), 50), summary


# --------------------------------------------------------------------------------- corruption at rest


def test_a_corrupt_stored_entry_is_never_served(stub: store_grpc.StoreServiceStub, store: ServiceProcess) -> None:
    append_one(stub, channel_append("rot", 1, ORIGIN, make_entries(1, [1, 1, 1])))
    database = _database(store.log_path.parent.parent / "data")
    with sqlite3.connect(database, timeout=call_timeout_s) as connection:
        connection.execute("UPDATE entries SET checksum = checksum + 1 WHERE channel = 'rot' AND serial = 2")
    corrupt = read_result(stub, "rot")
    # Only the intact run before it, and where it broke; the store drops the corrupt entry, which
    # leaves serial 2 missing until its owner writes it again.
    assert (corrupt.damaged_serial, [e.serial for e in corrupt.entries], corrupt.last.serial) == (2, [1], 3)
    assert [entry.serial for entry in read_entries(stub, "rot", limit=1)] == [1]
    assert [entry.serial for entry in read_entries(stub, "rot", after_serial=2)] == [3]
    deadline = time.monotonic() + 10
    while read_result(stub, "rot", after_serial=1).damaged_serial != 2 or serials_in(database, "rot") != [1, 3]:
        assert time.monotonic() < deadline, "the corrupt entry was not dropped"
        time.sleep(0.05)
    repaired = append_one(stub, channel_append("rot", 1, Position(1, 1), make_entries(2, [1])))
    assert (repaired.status, repaired.damaged_serial) == (store_pb2.APPEND_STATUS_OK, 0)
    assert serials_in(database, "rot") == [1, 2, 3]
