"""Placement as real processes (`python -m services.placement`) over a real etcd, and RingWatcher on top.

Members are registered from the test with the etcd adapter, as channel and store nodes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from services.common.errors import reason_of
from services.common.etcd import Etcd, MemberRecord
from services.common.registration import Registration
from services.common.ring_watch import RingView, RingWatcher
from services.core.ring import Ring
from services.internal.v1 import placement_service_pb2 as placement_pb2
from services.internal.v1 import placement_service_pb2_grpc as placement_grpc
from services.placement.server import PlacementServicer, RingBroadcast, ring_from_members
from tests.integration.etcd import EtcdServer
from tests.integration.procs import ServiceProcess, ServiceProcesses, free_port

T = TypeVar("T")

test_timeout_s = 20.0
poll_interval_s = 0.01
CHANNELS = [f"channel-name-{index}" for index in range(50)]


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), test_timeout_s)

    return asyncio.run(bounded())


def start_placement(processes: ServiceProcesses, name: str, etcd_endpoint: str) -> ServiceProcess:
    return processes.start("services.placement", ["--id", name, "--etcd", etcd_endpoint])


@contextlib.asynccontextmanager
async def placement_stub(address: str) -> AsyncIterator[placement_grpc.PlacementServiceStub]:
    async with grpc.aio.insecure_channel(address) as link:
        yield placement_grpc.PlacementServiceStub(link)


async def ring_at_least(address: str, version: int, timeout_s: float = 5.0) -> placement_pb2.Ring:
    """GetRing from `address` until its version reaches `version`."""
    deadline = time.monotonic() + timeout_s
    async with placement_stub(address) as stub:
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                ring: placement_pb2.Ring = await stub.GetRing(placement_pb2.GetRingRequest(), timeout=1.0)
                if ring.version >= version:
                    return ring
            assert time.monotonic() < deadline, f"{address} did not reach ring version {version}"
            await asyncio.sleep(poll_interval_s)


def summary(ring: placement_pb2.Ring) -> tuple[int, list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    return (
        ring.version,
        [(m.id, m.address, m.zone) for m in ring.members],
        [(s.id, s.address, s.zone) for s in ring.stores],
    )


def channel_node(index: int) -> MemberRecord:
    return MemberRecord(kind="channel", id=f"channel-{index}", address=f"127.0.0.1:{7200 + index}")


STORES = [
    MemberRecord(kind="store", id=f"store-{zone}", address=f"127.0.0.1:710{n}", zone=zone)
    for n, zone in ((3, "c"), (1, "a"), (2, "b"))
]


def test_two_placement_processes_agree_on_versions_and_owners(tmp_path: Path, etcd_endpoint: str) -> None:
    with ServiceProcesses(tmp_path / "logs") as processes:
        first = start_placement(processes, "placement-1", etcd_endpoint)
        second = start_placement(processes, "placement-2", etcd_endpoint)

        async def scenario() -> None:
            etcd = await Etcd.connect(etcd_endpoint)
            registrations = [await Registration.start(etcd, record, ttl_s=1) for record in STORES]
            registrations += [await Registration.start(etcd, channel_node(index), ttl_s=1) for index in (2, 1, 3)]
            version = registrations[-1].revision
            rings = [await ring_at_least(process.address, version) for process in (first, second)]
            assert summary(rings[0]) == summary(rings[1])
            ring = rings[0]
            assert ring.version == version
            assert [m.id for m in ring.members] == ["channel-1", "channel-2", "channel-3"]
            assert [(s.zone, s.id) for s in ring.stores] == [("a", "store-a"), ("b", "store-b"), ("c", "store-c")]
            reference = Ring(version, ["channel-1", "channel-2", "channel-3"])
            for process in (first, second):
                async with placement_stub(process.address) as stub:
                    for name in CHANNELS:
                        answer = await stub.Lookup(placement_pb2.LookupRequest(channel=name), timeout=1.0)
                        assert answer.ring_version == version
                        assert answer.owner.id == reference.owner(name)
                        assert answer.owner.address == channel_node(int(answer.owner.id[-1])).address
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.Lookup(placement_pb2.LookupRequest(channel=""), timeout=1.0)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            for registration in registrations:
                await registration.stop()
            await etcd.close()

        run(scenario)
        assert "ring version=" in first.output()


def test_watch_ring_follows_joins_and_leaves_with_growing_versions(tmp_path: Path, etcd_endpoint: str) -> None:
    with ServiceProcesses(tmp_path / "logs") as processes:
        placement = start_placement(processes, "placement-1", etcd_endpoint)

        async def scenario() -> None:
            etcd = await Etcd.connect(etcd_endpoint)
            one = await Registration.start(etcd, channel_node(1), ttl_s=1)
            await ring_at_least(placement.address, one.revision)
            received: list[placement_pb2.Ring] = []

            async def next_ring(stream: AsyncIterator[placement_pb2.Ring]) -> placement_pb2.Ring:
                ring = await anext(stream)
                received.append(ring)
                return ring

            async with placement_stub(placement.address) as stub:
                stream = stub.WatchRing(placement_pb2.WatchRingRequest(known_version=0)).__aiter__()
                assert (await next_ring(stream)).version >= one.revision  # The current ring comes first.
                two = await Registration.start(etcd, channel_node(2), ttl_s=1)
                ring = await next_ring(stream)
                assert ring.version == two.revision and [m.id for m in ring.members] == ["channel-1", "channel-2"]
                await one.stop()
                ring = await next_ring(stream)
                assert [m.id for m in ring.members] == ["channel-2"]
                # A re-registration leaves the member set as it was, and is still a new version.
                two_again = await Registration.start(etcd, channel_node(2), ttl_s=1)
                ring = await next_ring(stream)
                assert ring.version == two_again.revision and [m.id for m in ring.members] == ["channel-2"]
                await two.stop()
                await two_again.stop()
                assert [m.id for m in (await next_ring(stream)).members] == []
                versions = [ring.version for ring in received]
                assert versions == sorted(set(versions))
                # A watcher that already has the newest version is sent nothing until the next change.
                quiet = stub.WatchRing(placement_pb2.WatchRingRequest(known_version=versions[-1])).__aiter__()
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(anext(quiet), 0.3)
                # Lookup with no channel nodes: no owner, still a version.
                answer = await stub.Lookup(placement_pb2.LookupRequest(channel="x"), timeout=1.0)
                assert answer.ring_version == versions[-1] and not answer.HasField("owner")
            await etcd.close()

        run(scenario)


def test_ring_versions_keep_growing_when_etcd_loses_its_data(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """etcd is killed, its data directory deleted, and it starts again: its revisions start again
    from 1. Placement must not wait for them to catch up, nor keep the old member set: it follows the
    new etcd at once, with versions above every one it served (and above the floors the members
    registered with), and a member that leaves afterwards leaves the ring."""
    with ServiceProcesses(tmp_path / "logs") as processes:
        placement = start_placement(processes, "placement-1", etcd_server.endpoint)

        async def scenario() -> None:
            etcd = await Etcd.connect(etcd_server.endpoint)
            one = await Registration.start(etcd, channel_node(1), ttl_s=1, floor=lambda: 0)
            for index in range(40):  # history to lose: the wiped etcd restarts far below this
                etcd_server.put(f"/ringcast/noise/{index}", b"x")
            before = await ring_at_least(placement.address, one.revision + 40)
            await asyncio.to_thread(etcd_server.wipe)
            # The registration finds its lease gone and registers on the new etcd, at a low revision.
            two = await Registration.start(etcd, channel_node(2), ttl_s=1, floor=lambda: before.version + 5)
            assert two.revision < before.version
            deadline = time.monotonic() + 10
            async with placement_stub(placement.address) as stub:
                while True:
                    ring = await stub.GetRing(placement_pb2.GetRingRequest(), timeout=1.0)
                    if {m.id for m in ring.members} == {"channel-1", "channel-2"} and ring.revision >= two.revision:
                        break
                    assert time.monotonic() < deadline, f"no ring of the new etcd with both members: {ring}"
                    await asyncio.sleep(poll_interval_s)
                # Above what was served, and above the floor channel-2 registered with.
                assert ring.version > before.version + 5 and ring.revision < before.revision
                await two.stop()  # and a member leaving now leaves the ring
                while [m.id for m in ring.members] != ["channel-1"]:
                    assert time.monotonic() < deadline, f"channel-2 never left the ring: {ring}"
                    await asyncio.sleep(poll_interval_s)
                    ring = await stub.GetRing(placement_pb2.GetRingRequest(), timeout=1.0)
            await one.stop()
            await etcd.close()

        run(scenario)
        assert "lost its data or was replaced" in placement.output()


def test_placement_answers_ring_unknown_until_it_has_read_etcd(tmp_path: Path) -> None:
    etcd_server = EtcdServer(tmp_path / "etcd")  # Not started yet.
    try:
        with ServiceProcesses(tmp_path / "logs") as processes:
            placement = start_placement(processes, "placement-1", etcd_server.endpoint)

            async def before_etcd() -> None:
                async with placement_stub(placement.address) as stub:
                    calls = [
                        stub.GetRing(placement_pb2.GetRingRequest(), timeout=1.0),
                        stub.Lookup(placement_pb2.LookupRequest(channel="x"), timeout=1.0),
                        anext(stub.WatchRing(placement_pb2.WatchRingRequest(), timeout=1.0).__aiter__()),
                    ]
                    for call in calls:
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            await call
                        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                        assert reason_of(refused.value) == "RING_UNKNOWN"

            run(before_etcd)
            etcd_server.start()
            began = time.monotonic()
            ring = run(lambda: ring_at_least(placement.address, 1, timeout_s=5.0))
            print(f"\nfirst ring {time.monotonic() - began:.2f} s after etcd was up")
            assert ring.members == []
    finally:
        etcd_server.stop()


def test_ring_watcher_follows_and_fails_over(tmp_path: Path, etcd_endpoint: str) -> None:
    with ServiceProcesses(tmp_path / "logs") as processes:
        first = start_placement(processes, "placement-1", etcd_endpoint)
        second = start_placement(processes, "placement-2", etcd_endpoint)

        async def scenario() -> None:
            etcd = await Etcd.connect(etcd_endpoint)
            registrations = [await Registration.start(etcd, channel_node(1), ttl_s=1)]
            watcher = RingWatcher([first.address, second.address])
            assert watcher.ring is None
            views: list[RingView] = []
            unsubscribe = watcher.subscribe(views.append)
            watcher.start()
            view = await watcher.wait_ready(5.0)
            assert watcher.address == first.address

            async def until(predicate: Callable[[RingView], bool], what: str) -> RingView:
                deadline = time.monotonic() + 5.0
                while watcher.ring is None or not predicate(watcher.ring):
                    assert time.monotonic() < deadline, f"the watcher never saw {what}"
                    await asyncio.sleep(poll_interval_s)
                return watcher.ring

            view = await until(lambda v: "channel-1" in v.members, "channel-1")
            registrations.append(await Registration.start(etcd, channel_node(2), ttl_s=1))
            view = await until(lambda v: v.version >= registrations[-1].revision, "channel-2 join")
            assert view.members == {"channel-1": "127.0.0.1:7201", "channel-2": "127.0.0.1:7202"}
            assert view.owner("some-channel") == (
                view.ring.owner("some-channel"),
                view.members[view.ring.owner("some-channel") or ""],
            )
            first.kill()
            killed_at = time.monotonic()
            registrations.append(await Registration.start(etcd, channel_node(3), ttl_s=1))
            view = await until(lambda v: v.version >= registrations[-1].revision, "channel-3 join after failover")
            print(f"\nring watcher: newest ring {time.monotonic() - killed_at:.3f} s after its placement was killed")
            assert watcher.address == second.address
            assert set(view.members) == {"channel-1", "channel-2", "channel-3"}
            # refresh() goes to a live placement and never moves backwards.
            refreshed = await watcher.refresh()
            assert refreshed is not None and refreshed.version == view.version
            versions = [v.version for v in views]
            assert versions == sorted(set(versions)) and versions[-1] == view.version
            # A late subscriber hears the current ring at once; an unsubscribed one hears nothing more.
            late: list[RingView] = []
            watcher.subscribe(late.append)
            assert [v.version for v in late] == [view.version]
            unsubscribe()
            count = len(views)
            await registrations[0].stop()
            await until(lambda v: "channel-1" not in v.members, "channel-1 leave")
            assert len(views) == count and len(late) == 2
            await watcher.stop()
            for registration in registrations[1:]:
                await registration.stop()
            await etcd.close()

        run(scenario)


def test_a_slow_watcher_is_sent_the_newest_ring_and_skips_the_ones_between() -> None:
    """In-process: the servicer over a broadcast that the test publishes to directly."""

    async def scenario() -> None:
        broadcast = RingBroadcast()
        server = grpc.aio.server()
        placement_grpc.add_PlacementServiceServicer_to_server(PlacementServicer(broadcast), server)
        address = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(address)
        await server.start()
        try:
            records = [channel_node(1)]
            broadcast.publish(ring_from_members(10, records))
            async with placement_stub(address) as stub:
                streams = [stub.WatchRing(placement_pb2.WatchRingRequest()).__aiter__() for _ in range(20)]
                assert [(await anext(stream)).version for stream in streams] == [10] * 20
                # Many versions while nobody reads: each watcher then gets only the newest.
                for version in range(11, 200):
                    broadcast.publish(ring_from_members(version, records))
                assert not broadcast.publish(ring_from_members(150, records))  # Never backwards.
                assert [(await anext(stream)).version for stream in streams] == [199] * 20
                broadcast.close()  # Stopping ends every stream cleanly.
                for stream in streams:
                    with pytest.raises(StopAsyncIteration):
                        await anext(stream)
        finally:
            await server.stop(0)

    run(scenario)
