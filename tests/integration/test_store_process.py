"""The store process through failures and around it: an acknowledged append survives SIGKILL (SQLite,
and Redis with its own process killed too), one store per data dir, membership in etcd, and
retention in the background under bad clocks."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from ringcast_tools.cluster import pki
from services.common.convert import entry_from_proto
from services.core.entries import ORIGIN, Entry, Message
from services.internal.v1 import store_service_pb2 as store_pb2
from services.store import redis_engine
from services.store.redis_engine import open_redis
from tests.integration.procs import ServiceProcesses, free_port
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
    start_store,
    stub_of,
)
from tests.redis_server import RedisServer

# --------------------------------------------------------------------------------- durability


def test_an_acknowledged_append_survives_sigkill(processes: ServiceProcesses, tmp_path: Path) -> None:
    process = start_store(processes, tmp_path / "data")
    entries = make_entries(1, [7, 7])
    channel, stub = stub_of(process)
    with channel:
        fence_one(stub, "durable", 7)
        assert append_one(stub, channel_append("durable", 7, ORIGIN, entries)).status == store_pb2.APPEND_STATUS_OK
        process.kill()

    restarted = start_store(processes, tmp_path / "data")
    channel, stub = stub_of(restarted)
    with channel:
        assert read_entries(stub, "durable") == entries
        fence = fence_one(stub, "durable", 6)
        assert (fence.fenced, fence.fence_epoch, fence.last.serial) == (True, 7, 2)


def test_every_append_acknowledged_before_a_sigkill_mid_stream_is_kept(
    processes: ServiceProcesses, tmp_path: Path
) -> None:
    process = start_store(processes, tmp_path / "data")
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

    entries_by_channel = {
        f"crash-{index}": make_entries(1, [1, 1], tag=f"crash-{index}") for index in range(channel_count)
    }
    channel, stub = stub_of(process)
    with channel:
        calls = []
        for name, entries in entries_by_channel.items():
            call = stub.Append.future(
                store_pb2.AppendRequest(appends=[channel_append(name, 1, ORIGIN, entries)]), timeout=call_timeout_s
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

    restarted = start_store(processes, tmp_path / "data")
    channel, stub = stub_of(restarted)
    with channel:
        for name in kept:
            assert read_entries(stub, name) == entries_by_channel[name], f"{name} was acknowledged, then lost"


def test_a_second_store_on_the_same_data_dir_refuses_to_start(processes: ServiceProcesses, tmp_path: Path) -> None:
    first = start_store(processes, tmp_path / "data")
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
    channel, stub = stub_of(process)
    with channel:
        assert (
            append_one(stub, channel_append("no-etcd", 1, ORIGIN, make_entries(1, [1]))).status
            == store_pb2.APPEND_STATUS_OK
        )
    assert process.stop() == 0


# --------------------------------------------------------------------------------- the Redis engine


@pytest.mark.parametrize("logins", ["open", "acl"])
def test_over_redis_an_acknowledged_append_survives_sigkill_of_store_and_redis(
    processes: ServiceProcesses, tmp_path: Path, logins: str
) -> None:
    """Also with the ACL file a secured cluster's Redis loads (`pki.redis_acl`): Redis 7.0 replays its
    append-only file under the default user's rules, and with none it started empty."""
    acl = (pki.redis_acl("store-r", "sesame"), "store-r", "sesame") if logins == "acl" else None
    with RedisServer(tmp_path / "redis", acl=acl) as redis_server:
        flags = ["--id", "store-r", "--zone", "r", "--data-dir", str(tmp_path / "lock"), "--redis", redis_server.url]
        if acl is not None:
            (tmp_path / "password").write_text("sesame")
            flags += ["--redis-user", "store-r", "--redis-password-file", str(tmp_path / "password")]
        process = processes.start("services.store", flags)
        entries = make_entries(1, [7, 7])
        channel, stub = stub_of(process)
        with channel:
            assert fence_one(stub, "durable", 7).fence_epoch == 7
            assert append_one(stub, channel_append("durable", 7, ORIGIN, entries)).status == store_pb2.APPEND_STATUS_OK
            too_big = redis_engine.value_max + 1
            refused = failure_of(lambda: fence_one(stub, "durable", too_big))
            assert refusal_of(refused) == (grpc.StatusCode.INVALID_ARGUMENT, "VALUE_OUT_OF_RANGE")
        process.kill()
        redis_server.stop()  # SIGKILL: only what the append-only file synced remains
        redis_server.start()
        restarted = processes.start("services.store", flags, address=process.address)
        channel, stub = stub_of(restarted)
        with channel:
            assert read_entries(stub, "durable") == entries
            assert fence_one(stub, "durable", 6).fenced


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
        channel, stub = stub_of(processes.start("services.store", flags))
        stack.enter_context(channel)
        now_ms = int(time.time() * 1000)  # young entries: only the count (3) trims them
        entries = [Entry.make(serial, 7, Message(f"k-{serial}", timestamp_ms=now_ms)) for serial in range(1, 11)]
        fence_one(stub, "kept", 7)
        append = channel_append("kept", 7, ORIGIN, entries)
        append.commit = 8  # the owner's commit point: 9 and 10 are not known committed yet
        append.owner_now_ms = now_ms  # the owner's clock: the store trims nothing before it knows one
        assert append_one(stub, append).status == store_pb2.APPEND_STATUS_OK
        deadline = time.monotonic() + 30
        while (result := read_result(stub, "kept")).base.serial < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (result.base.serial, result.base.epoch) == (7, 7)  # the newest 3 stay
        assert [entry_from_proto(entry) for entry in result.entries] == entries[7:]
        # Appends from below the base skip what was trimmed; the reply tells the base.
        again = append_one(stub, channel_append("kept", 7, entries[1].position, entries[2:]))
        assert again.status == store_pb2.APPEND_STATUS_OK and again.match_serial == 10 and again.base.serial == 7


def test_one_bad_clock_cannot_make_a_store_drop_young_entries(processes: ServiceProcesses, tmp_path: Path) -> None:
    """Retention by age (1 hour here) judges by the earlier of the store's clock and its owners':
    an owner whose clock is 80 days ahead does not make its young entries look old, and before any
    owner has said the time the store trims nothing at all."""
    retention = ["--retention-hours", "1", "--retention-keep-recent-s", "0.001", "--trim-every-s", "0.1"]
    flags = ["--id", "store-t", "--zone", "t", "--data-dir", str(tmp_path / "data"), *retention]
    channel, stub = stub_of(processes.start("services.store", flags))
    with channel:
        now_ms = int(time.time() * 1000)
        day_ms = 86_400_000
        entries = [Entry.make(serial, 7, Message(f"t-{serial}", timestamp_ms=now_ms)) for serial in range(1, 6)]
        old = [Entry.make(serial, 7, Message(f"o-{serial}", timestamp_ms=now_ms - 2 * day_ms)) for serial in (1, 2)]
        fence_one(stub, "young", 7)
        fence_one(stub, "old", 7)
        for name, held in (("young", entries), ("old", old)):
            append = channel_append(name, 7, ORIGIN, held)
            append.commit = len(held)  # all committed
            assert append_one(stub, append).status == store_pb2.APPEND_STATUS_OK
        time.sleep(0.6)  # several passes: no owner clock yet, so nothing is trimmed, even the old ones
        assert len(read_entries(stub, "old")) == 2
        ahead = channel_append("young", 7, entries[-1].position, [])
        ahead.commit, ahead.owner_now_ms = 5, now_ms + 80 * day_ms  # an owner 80 days ahead
        assert append_one(stub, ahead).status == store_pb2.APPEND_STATUS_OK
        deadline = time.monotonic() + 20
        while read_entries(stub, "old") and time.monotonic() < deadline:  # two days old by both clocks: it goes
            time.sleep(0.05)
        assert read_entries(stub, "old") == []
        assert [entry.serial for entry in read_entries(stub, "young")] == [1, 2, 3, 4, 5]  # young by ours


def test_a_store_refuses_a_retention_that_keeps_nothing(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "services.store", "--data-dir", str(tmp_path), "--retention-entries", "0"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2 and "--retention-entries: 0 is not above 0" in finished.stderr
