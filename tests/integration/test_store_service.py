"""The store replica as a real OS process: `python -m services.store` on loopback (etcd only where named).

Over gRPC: batched Fence, Append and Read map the replica log rules to the protos, each channel of
a call judged on its own; bad input gets INVALID_ARGUMENT with a reason and changes nothing; writes
that arrive while a commit is held up share the next commit (group commit); a corrupt stored entry
is never served. And the
durability promise: every append acknowledged before a SIGKILL is there after a restart. Last, with
--etcd, the store's membership: registered while it serves, gone when it stops, and an unreachable
etcd never keeps it from serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ringcast.v1 import store_service_pb2 as store_pb2
from ringcast.v1 import store_service_pb2_grpc as store_grpc
from services.common.convert import entry_from_proto, entry_to_proto, position_to_proto
from services.common.errors import error_info
from services.core.entries import ORIGIN, Entry, Message, Position
from services.store import redis_engine
from services.store import server as store_server
from services.store.redis_engine import open_redis
from tests.integration.procs import ServiceProcess, ServiceProcesses, free_port
from tests.redis_server import RedisServer

call_timeout_s = 10.0


def _start_store(processes: ServiceProcesses, data_dir: Path, address: str | None = None) -> ServiceProcess:
    return processes.start(
        "services.store", ["--id", "store-t", "--zone", "t", "--data-dir", str(data_dir)], address=address
    )


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ServiceProcesses]:
    with ServiceProcesses(tmp_path / "logs") as started:
        yield started


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One store process shared by the tests that only talk to it (each uses its own channels)."""
    directory = tmp_path_factory.mktemp("store")
    with ServiceProcesses(directory / "logs") as started:
        yield _start_store(started, directory / "data")


def _stub(process: ServiceProcess) -> tuple[grpc.Channel, store_grpc.StoreServiceStub]:
    channel = grpc.insecure_channel(process.address)
    return channel, store_grpc.StoreServiceStub(channel)


@pytest.fixture
def stub(store: ServiceProcess) -> Iterator[store_grpc.StoreServiceStub]:
    channel, stub = _stub(store)
    with channel:
        yield stub


def _entries(first_serial: int, epochs: Sequence[int], tag: str = "m") -> list[Entry]:
    return [
        Entry.make(first_serial + index, epoch, Message(f"{tag}-{first_serial + index}", data=b"payload"))
        for index, epoch in enumerate(epochs)
    ]


def _append(name: str, epoch: int, prev: Position, entries: Sequence[Entry]) -> store_pb2.ChannelAppend:
    return store_pb2.ChannelAppend(
        channel=name, epoch=epoch, prev=position_to_proto(prev), entries=[entry_to_proto(e) for e in entries]
    )


def _append_one(stub: store_grpc.StoreServiceStub, append: store_pb2.ChannelAppend) -> store_pb2.ChannelAppendResult:
    response = stub.Append(store_pb2.AppendRequest(appends=[append]), timeout=call_timeout_s)
    [result] = response.results
    return result


def _fence(stub: store_grpc.StoreServiceStub, name: str, epoch: int) -> store_pb2.ChannelFenceResult:
    request = store_pb2.FenceRequest(fences=[store_pb2.ChannelFence(channel=name, epoch=epoch)])
    [result] = stub.Fence(request, timeout=call_timeout_s).results
    return result


def _read_result(
    stub: store_grpc.StoreServiceStub, name: str, after_serial: int = 0, limit: int = 0
) -> store_pb2.ChannelReadResult:
    request = store_pb2.ReadRequest(reads=[store_pb2.ChannelRead(channel=name, after_serial=after_serial, limit=limit)])
    [result] = stub.Read(request, timeout=call_timeout_s).results
    return result


def _serials(database: Path, name: str) -> list[int]:
    """The serials of `name`'s rows in the store's SQLite file, read past the store."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=call_timeout_s) as connection:
        rows = connection.execute("SELECT serial FROM entries WHERE channel = ? ORDER BY serial", (name,))
        return [int(row[0]) for row in rows]


def _read(stub: store_grpc.StoreServiceStub, name: str, after_serial: int = 0, limit: int = 0) -> list[Entry]:
    return [entry_from_proto(entry) for entry in _read_result(stub, name, after_serial, limit).entries]


def _refusal(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a call expected to fail."""
    assert isinstance(call, grpc.RpcError)
    info = error_info(call)
    assert info is not None and info.domain == "ringcast"
    return call.code(), info.reason  # type: ignore[attr-defined]


def _fails(operation: object) -> grpc.RpcError:
    assert callable(operation)
    with pytest.raises(grpc.RpcError) as failure:
        operation()
    return failure.value


# --------------------------------------------------------------------------------- serving


def test_health_says_serving_for_the_server_and_the_store_service(store: ServiceProcess) -> None:
    with grpc.insecure_channel(store.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ringcast.v1.StoreService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=call_timeout_s)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_fence_append_read_round_trip(stub: store_grpc.StoreServiceStub) -> None:
    fence = _fence(stub, "round-trip", 3)
    assert (fence.fenced, fence.fence_epoch, fence.last.serial) == (False, 3, 0)
    entries = _entries(1, [3, 3, 3])
    result = _append_one(stub, _append("round-trip", 3, ORIGIN, entries))
    assert result.status == store_pb2.APPEND_STATUS_OK
    assert (result.match_serial, result.last.serial, result.last.epoch, result.fence_epoch) == (3, 3, 3, 3)
    assert _read(stub, "round-trip") == entries
    assert _read(stub, "round-trip", after_serial=1, limit=1) == entries[1:2]
    stale = _fence(stub, "round-trip", 2)
    assert (stale.fenced, stale.fence_epoch, stale.last.serial, stale.last.epoch) == (True, 3, 3, 3)


def test_one_append_call_judges_each_channel_on_its_own(stub: store_grpc.StoreServiceStub) -> None:
    _fence(stub, "batch-fenced", 5)
    _append_one(stub, _append("batch-conflict", 2, ORIGIN, _entries(1, [1, 2, 2])))
    good = _entries(1, [4])
    bad_checksum = Entry(1, 4, Message("x"), 12345)
    response = stub.Append(
        store_pb2.AppendRequest(
            appends=[
                _append("batch-ok", 4, ORIGIN, good),
                _append("batch-fenced", 4, ORIGIN, _entries(1, [4])),
                _append("batch-short", 4, Position(7, 4), _entries(8, [4])),
                _append("batch-conflict", 4, Position(3, 3), _entries(4, [4])),
                _append("batch-corrupt", 4, ORIGIN, [bad_checksum]),
                _append("batch-invalid", 4, ORIGIN, _entries(2, [4])),
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
    assert _read(stub, "batch-ok") == good
    assert _read(stub, "batch-corrupt") == [] and _read(stub, "batch-invalid") == []


def test_read_limit_zero_means_the_default_and_large_limits_are_capped(stub: store_grpc.StoreServiceStub) -> None:
    count = store_server.read_entries_max + 50
    _append_one(stub, _append("long", 1, ORIGIN, _entries(1, [1] * count)))
    assert len(_read(stub, "long")) == store_server.read_entries_default
    capped = _read(stub, "long", limit=10 * count)
    assert [entry.serial for entry in capped] == list(range(1, store_server.read_entries_max + 1))
    response = _read_result(stub, "long", after_serial=count - 2)
    assert [entry.serial for entry in response.entries] == [count - 1, count]
    assert (response.last.serial, response.last.epoch) == (count, 1)


def test_one_fence_call_judges_each_channel_on_its_own(stub: store_grpc.StoreServiceStub) -> None:
    _fence(stub, "fences-stale", 9)
    _append_one(stub, _append("fences-held", 2, ORIGIN, _entries(1, [2, 2])))
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
    assert _append_one(stub, _append("fences-held", 3, Position(2, 2), _entries(3, [3]))).status == (
        store_pb2.APPEND_STATUS_FENCED
    )


def test_one_read_call_answers_each_channel_and_keeps_to_its_size_budget(stub: store_grpc.StoreServiceStub) -> None:
    big = b"x" * (64 * 1024)
    count = store_server.read_response_bytes_max // len(big) + 8
    entries = [Entry.make(serial, 1, Message(f"big-{serial}", data=big)) for serial in range(1, count + 1)]
    _append_one(stub, _append("reads-big", 1, ORIGIN, entries))
    _append_one(stub, _append("reads-small", 1, ORIGIN, _entries(1, [1, 1])))
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
    assert len(first.entries) * len(big) <= store_server.read_response_bytes_max + len(big)
    assert [entry.serial for entry in first.entries] == list(range(1, len(first.entries) + 1))
    assert [entry.serial for entry in small.entries] == [1]
    assert (small.last.serial, none.last.serial, len(none.entries)) == (2, 0, 0)
    assert [entry_from_proto(entry) for entry in first.entries] == entries[: len(first.entries)]


# --------------------------------------------------------------------------------- bad input


def test_bad_input_is_invalid_argument_with_a_reason_and_changes_nothing(stub: store_grpc.StoreServiceStub) -> None:
    too_big = store_server.stored_value_max + 1
    refusals = {
        "read without channel": lambda: _read(stub, ""),
        "fence without channel": lambda: _fence(stub, "", 1),
        "fence epoch too big": lambda: _fence(stub, "bad-input", too_big),
        "read after too big": lambda: _read(stub, "bad-input", after_serial=too_big),
        "channel too long": lambda: _read(stub, "x" * 257),
        # One bad fence spoils the call: the good one before it is not applied either.
        "fence spoilt by a bad one": lambda: stub.Fence(
            store_pb2.FenceRequest(
                fences=[store_pb2.ChannelFence(channel="bad-input", epoch=5), store_pb2.ChannelFence(epoch=5)]
            ),
            timeout=call_timeout_s,
        ),
        "too many fences": lambda: stub.Fence(
            store_pb2.FenceRequest(
                fences=[store_pb2.ChannelFence(channel="bad-input", epoch=5)] * (store_server.fence_channels_max + 1)
            ),
            timeout=call_timeout_s,
        ),
        "too many reads": lambda: stub.Read(
            store_pb2.ReadRequest(
                reads=[store_pb2.ChannelRead(channel="bad-input")] * (store_server.read_channels_max + 1)
            ),
            timeout=call_timeout_s,
        ),
        # One bad append spoils the call: the good one before it is not applied either.
        "append without channel": lambda: stub.Append(
            store_pb2.AppendRequest(
                appends=[_append("bad-input", 1, ORIGIN, _entries(1, [1])), _append("", 1, ORIGIN, _entries(1, [1]))]
            ),
            timeout=call_timeout_s,
        ),
        "too many appends": lambda: stub.Append(
            store_pb2.AppendRequest(
                appends=[_append("bad-input", 1, ORIGIN, [])] * (store_server.append_channels_max + 1)
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
        assert _refusal(_fails(operation)) == (grpc.StatusCode.INVALID_ARGUMENT, expected_reasons[name]), name
    fence = _fence(stub, "bad-input", 0)
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
            store_pb2.AppendRequest(appends=[_append(f"{prefix}-{index}", 1, ORIGIN, _entries(1, [1]))]),
            timeout=call_timeout_s,
        )
        for index in range(count)
    ]


def test_concurrent_appends_share_commits(processes: ServiceProcesses, tmp_path: Path) -> None:
    """50 concurrent appends while a commit is held up: far fewer commits than calls.

    A store that committed each request on its own would show 50 distinct commit ids.
    """
    process = _start_store(processes, tmp_path / "data")
    channel, stub = _stub(process)
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
            commit_id = metadata[store_server.COMMIT_ID_KEY]
            commits[commit_id] = int(metadata[store_server.COMMIT_REQUESTS_KEY])
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
    _append_one(stub, _append("rot", 1, ORIGIN, _entries(1, [1, 1, 1])))
    database = _database(store.log_path.parent.parent / "data")
    with sqlite3.connect(database, timeout=call_timeout_s) as connection:
        connection.execute("UPDATE entries SET checksum = checksum + 1 WHERE channel = 'rot' AND serial = 2")
    corrupt = _read_result(stub, "rot")
    # Only the intact run before it, and where it broke; the store drops the corrupt entry, which
    # leaves serial 2 missing until its owner writes it again.
    assert (corrupt.damaged_serial, [e.serial for e in corrupt.entries], corrupt.last.serial) == (2, [1], 3)
    assert [entry.serial for entry in _read(stub, "rot", limit=1)] == [1]
    assert [entry.serial for entry in _read(stub, "rot", after_serial=2)] == [3]
    deadline = time.monotonic() + 10
    while _read_result(stub, "rot", after_serial=1).damaged_serial != 2 or _serials(database, "rot") != [1, 3]:
        assert time.monotonic() < deadline, "the corrupt entry was not dropped"
        time.sleep(0.05)
    repaired = _append_one(stub, _append("rot", 1, Position(1, 1), _entries(2, [1])))
    assert (repaired.status, repaired.damaged_serial) == (store_pb2.APPEND_STATUS_OK, 0)
    assert _serials(database, "rot") == [1, 2, 3]


# --------------------------------------------------------------------------------- durability


def test_an_acknowledged_append_survives_sigkill(processes: ServiceProcesses, tmp_path: Path) -> None:
    process = _start_store(processes, tmp_path / "data")
    entries = _entries(1, [7, 7])
    channel, stub = _stub(process)
    with channel:
        _fence(stub, "durable", 7)
        assert _append_one(stub, _append("durable", 7, ORIGIN, entries)).status == store_pb2.APPEND_STATUS_OK
        process.kill()

    restarted = _start_store(processes, tmp_path / "data")
    channel, stub = _stub(restarted)
    with channel:
        assert _read(stub, "durable") == entries
        fence = _fence(stub, "durable", 6)
        assert (fence.fenced, fence.fence_epoch, fence.last.serial) == (True, 7, 2)


def test_every_append_acknowledged_before_a_sigkill_mid_stream_is_kept(
    processes: ServiceProcesses, tmp_path: Path
) -> None:
    process = _start_store(processes, tmp_path / "data")
    acknowledged: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    channel_count, kill_after = 300, 30

    def on_done(name: str, call: grpc.Future) -> None:
        if call.exception() is None and call.result().results[0].status == store_pb2.APPEND_STATUS_OK:
            with lock:
                acknowledged.append(name)
                if len(acknowledged) >= kill_after:
                    enough.set()

    entries_by_channel = {f"crash-{index}": _entries(1, [1, 1], tag=f"crash-{index}") for index in range(channel_count)}
    channel, stub = _stub(process)
    with channel:
        calls = []
        for name, entries in entries_by_channel.items():
            call = stub.Append.future(
                store_pb2.AppendRequest(appends=[_append(name, 1, ORIGIN, entries)]), timeout=call_timeout_s
            )
            call.add_done_callback(lambda done, name=name: on_done(name, done))  # type: ignore[misc]
            calls.append(call)
        assert enough.wait(call_timeout_s)
        process.kill()
        for call in calls:
            call.exception()  # wait until every call has an outcome
    with lock:
        kept = list(acknowledged)
    assert len(kept) >= kill_after

    restarted = _start_store(processes, tmp_path / "data")
    channel, stub = _stub(restarted)
    with channel:
        for name in kept:
            assert _read(stub, name) == entries_by_channel[name], f"{name} was acknowledged, then lost"


def test_a_second_store_on_the_same_data_dir_refuses_to_start(processes: ServiceProcesses, tmp_path: Path) -> None:
    first = _start_store(processes, tmp_path / "data")
    second = processes.start("services.store", ["--id", "store-u", "--data-dir", str(tmp_path / "data")], wait=False)
    assert second.process.wait(call_timeout_s) != 0
    assert "in use by another store process" in second.output()
    assert first.running()


# --------------------------------------------------------------------------------- membership in etcd


async def _store_members(endpoint: str) -> list[tuple[str, str, str]]:
    from services.common.etcd import Etcd

    etcd = await Etcd.connect(endpoint)
    try:
        members = (await etcd.members()).members
    finally:
        await etcd.close()
    return [(member.id, member.address, member.zone) for member in members if member.kind == "store"]


def test_with_etcd_the_store_registers_while_it_serves_and_leaves_when_it_stops(
    processes: ServiceProcesses, tmp_path: Path, etcd_endpoint: str
) -> None:
    process = processes.start(
        "services.store",
        ["--id", "store-e", "--zone", "e", "--data-dir", str(tmp_path / "data"), "--etcd", etcd_endpoint],
    )
    deadline = time.monotonic() + call_timeout_s
    while not asyncio.run(_store_members(etcd_endpoint)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert asyncio.run(_store_members(etcd_endpoint)) == [("store-e", process.address, "e")]
    assert process.stop() == 0
    # A graceful stop revokes the lease: the member is gone at once, not after its TTL.
    assert asyncio.run(_store_members(etcd_endpoint)) == []


def test_an_unreachable_etcd_does_not_keep_the_store_from_serving(processes: ServiceProcesses, tmp_path: Path) -> None:
    process = processes.start(
        "services.store",
        ["--data-dir", str(tmp_path / "data"), "--etcd", f"127.0.0.1:{free_port()}"],
    )
    channel, stub = _stub(process)
    with channel:
        assert _append_one(stub, _append("no-etcd", 1, ORIGIN, _entries(1, [1]))).status == store_pb2.APPEND_STATUS_OK
    assert process.stop() == 0


# --------------------------------------------------------------------------------- the Redis engine


def test_over_redis_an_acknowledged_append_survives_sigkill_of_store_and_redis(
    processes: ServiceProcesses, tmp_path: Path
) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        flags = ["--id", "store-r", "--zone", "r", "--data-dir", str(tmp_path / "lock"), "--redis", redis_server.url]
        process = processes.start("services.store", flags)
        entries = _entries(1, [7, 7])
        channel, stub = _stub(process)
        with channel:
            assert _fence(stub, "durable", 7).fence_epoch == 7
            assert _append_one(stub, _append("durable", 7, ORIGIN, entries)).status == store_pb2.APPEND_STATUS_OK
            too_big = redis_engine.value_max + 1
            refused = _fails(lambda: _fence(stub, "durable", too_big))
            assert _refusal(refused) == (grpc.StatusCode.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE")
        process.kill()
        redis_server.stop()  # SIGKILL: only what the append-only file synced remains
        redis_server.start()
        restarted = processes.start("services.store", flags, address=process.address)
        channel, stub = _stub(restarted)
        with channel:
            assert _read(stub, "durable") == entries
            assert _fence(stub, "durable", 6).fenced


def test_a_store_refuses_a_redis_that_does_not_sync_every_write(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis_server:
        open_redis(redis_server.url).config_set("appendfsync", "everysec")
        result = subprocess.run(
            [sys.executable, "-m", "services.store", "--data-dir", str(tmp_path / "lock"), "--redis", redis_server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "appendfsync always" in result.stderr


# --------------------------------------------------------------------------------- retention


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_the_store_trims_committed_entries_in_the_background(
    processes: ServiceProcesses, tmp_path: Path, engine: str
) -> None:
    retention = ["--retention-entries", "3", "--retention-keep-recent-s", "0.001", "--trim-every-s", "0.1"]
    with contextlib.ExitStack() as stack:
        flags = ["--id", "store-k", "--zone", "k", "--data-dir", str(tmp_path / "data"), *retention]
        if engine == "redis":
            flags += ["--redis", stack.enter_context(RedisServer(tmp_path / "redis")).url]
        channel, stub = _stub(processes.start("services.store", flags))
        stack.enter_context(channel)
        now_ms = int(time.time() * 1000)  # young entries: only the count (3) trims them
        entries = [Entry.make(serial, 7, Message(f"k-{serial}", timestamp_ms=now_ms)) for serial in range(1, 11)]
        _fence(stub, "kept", 7)
        append = _append("kept", 7, ORIGIN, entries)
        append.commit = 8  # the owner's commit point: 9 and 10 are not known committed yet
        append.owner_now_ms = now_ms  # the owner's clock: the store trims nothing before it knows one
        assert _append_one(stub, append).status == store_pb2.APPEND_STATUS_OK
        deadline = time.monotonic() + 30
        while (result := _read_result(stub, "kept")).base.serial < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (result.base.serial, result.base.epoch) == (7, 7)  # the newest 3 stay
        assert [entry_from_proto(entry) for entry in result.entries] == entries[7:]
        # Appends from below the base skip what was trimmed; the reply tells the base.
        again = _append_one(stub, _append("kept", 7, entries[1].position, entries[2:]))
        assert again.status == store_pb2.APPEND_STATUS_OK and again.match_serial == 10 and again.base.serial == 7


def test_one_bad_clock_cannot_make_a_store_drop_young_entries(processes: ServiceProcesses, tmp_path: Path) -> None:
    """Retention by age (1 hour here) judges by the earlier of the store's clock and its owners':
    an owner whose clock is 80 days ahead does not make its young entries look old, and before any
    owner has said the time the store trims nothing at all."""
    retention = ["--retention-hours", "1", "--retention-keep-recent-s", "0.001", "--trim-every-s", "0.1"]
    flags = ["--id", "store-t", "--zone", "t", "--data-dir", str(tmp_path / "data"), *retention]
    channel, stub = _stub(processes.start("services.store", flags))
    with channel:
        now_ms = int(time.time() * 1000)
        day_ms = 86_400_000
        entries = [Entry.make(serial, 7, Message(f"t-{serial}", timestamp_ms=now_ms)) for serial in range(1, 6)]
        old = [Entry.make(serial, 7, Message(f"o-{serial}", timestamp_ms=now_ms - 2 * day_ms)) for serial in (1, 2)]
        _fence(stub, "young", 7)
        _fence(stub, "old", 7)
        for name, held in (("young", entries), ("old", old)):
            append = _append(name, 7, ORIGIN, held)
            append.commit = len(held)  # all committed
            assert _append_one(stub, append).status == store_pb2.APPEND_STATUS_OK
        time.sleep(0.6)  # several passes: no owner clock yet, so nothing is trimmed, even the old ones
        assert len(_read(stub, "old")) == 2
        ahead = _append("young", 7, entries[-1].position, [])
        ahead.commit, ahead.owner_now_ms = 5, now_ms + 80 * day_ms  # an owner 80 days ahead
        assert _append_one(stub, ahead).status == store_pb2.APPEND_STATUS_OK
        deadline = time.monotonic() + 20
        while _read(stub, "old") and time.monotonic() < deadline:  # two days old by both clocks: it goes
            time.sleep(0.05)
        assert _read(stub, "old") == []
        assert [entry.serial for entry in _read(stub, "young")] == [1, 2, 3, 4, 5]  # young by ours


def test_a_store_refuses_a_retention_that_keeps_nothing(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "services.store", "--data-dir", str(tmp_path), "--retention-entries", "0"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2 and "--retention-entries: 0 is not above 0" in finished.stderr
