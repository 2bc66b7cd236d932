"""A channel node whose process is gone refuses connections; placement, told so by a gateway and
checking for itself, revokes its lease so its channels move at once. The cluster here has a 30 s
lease, so a channel that serves again within seconds of the SIGKILL can only have moved that way;
a paused node (whose kernel still accepts connections) and a wrong address are left alone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import ringcast
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology
from services.internal.v1 import placement_service_pb2 as placement_pb2
from services.internal.v1 import placement_service_pb2_grpc as placement_grpc
from services.placement.server import connect_refused

lease_ttl_s = 30.0


@pytest.fixture(scope="module")
def long_lease_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    state = tmp_path_factory.mktemp("long-lease")
    launcher = Launcher(local_topology(state / "data", lease_ttl_s=lease_ttl_s), state)
    launcher.start_all()
    try:
        yield launcher
    finally:
        launcher.stop_all()


def test_connect_refused_is_true_only_when_nothing_listens(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        address = f"127.0.0.1:{listening.getsockname()[1]}"
        assert not asyncio.run(connect_refused(address))
    assert asyncio.run(connect_refused(address))  # closed now: refused
    assert not asyncio.run(connect_refused("not-an-address"))


def report(cluster: Launcher, member_id: str, address: str) -> str:
    placement = cluster.topology.by_role("placement")[0].address
    with grpc.insecure_channel(placement) as link:
        answer = placement_grpc.PlacementServiceStub(link).ReportUnreachable(
            placement_pb2.ReportUnreachableRequest(member_id=member_id, address=address), timeout=10
        )
    return str(placement_pb2.UnreachableOutcome.Name(answer.outcome))


def test_a_paused_node_and_a_wrong_address_are_not_removed(long_lease_cluster: Launcher) -> None:
    node = long_lease_cluster.topology.named("channel-1")
    assert report(long_lease_cluster, "channel-1", "127.0.0.1:1") == "UNREACHABLE_OUTCOME_NOT_A_MEMBER"
    long_lease_cluster.pause("channel-1")
    try:
        assert report(long_lease_cluster, "channel-1", node.address) == "UNREACHABLE_OUTCOME_NOT_CONFIRMED"
    finally:
        long_lease_cluster.resume("channel-1")


def test_a_killed_owner_is_replaced_long_before_its_lease_expires(long_lease_cluster: Launcher) -> None:
    async def scenario() -> tuple[str, str, float]:
        async with ringcast.Client(long_lease_cluster.topology.gateways, timeout_s=lease_ttl_s / 2) as client:
            await client.publish("refused-1", "before")
            owner = (await client.get_channel("refused-1")).owner
            long_lease_cluster.kill(owner)
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            # Within half the lease TTL: only the refused-connection path can get there.
            await client.publish("refused-1", "after")
            elapsed = loop.time() - killed_at
            return owner, (await client.get_channel("refused-1")).owner, elapsed

    owner, new_owner, elapsed = asyncio.run(scenario())
    print(f"killed {owner}: the channel served again at {new_owner} {elapsed:.2f} s later (lease {lease_ttl_s} s)")
    try:
        assert new_owner != owner
        placement = long_lease_cluster.topology.by_role("placement")[0].address
        with grpc.insecure_channel(placement) as link:
            ring = placement_grpc.PlacementServiceStub(link).GetRing(placement_pb2.GetRingRequest(), timeout=10)
        assert owner not in [member.id for member in ring.members]
    finally:
        long_lease_cluster.restart(owner)
