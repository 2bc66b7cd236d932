"""A whole cluster of real processes on loopback: etcd, placement, 3 stores, 3 channel nodes, 2 gateways."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from services.common.errors import error_info
from services.core.ring import Ring
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc
from tests.integration.procs import free_port_run, scrape_metrics

ROOT = Path(__file__).resolve().parents[2]
CHANNELS = 20
MESSAGES = 500
BATCH = 5


def stub(address: str) -> realtime_grpc.RealtimeServiceStub:
    return realtime_grpc.RealtimeServiceStub(grpc.aio.insecure_channel(address))


async def follow(address: str, channel: str, after: int, count: int) -> list[tuple[int, str]]:
    received: list[tuple[int, str]] = []
    async with grpc.aio.insecure_channel(address) as link:
        call = realtime_grpc.RealtimeServiceStub(link).Subscribe(
            realtime_pb2.SubscribeRequest(channel=channel, after_serial=after)
        )
        async for response in call:
            received.append((response.message.serial, response.message.id))
            if len(received) == count:
                call.cancel()
                break
    return received


async def history(address: str, channel: str) -> list[tuple[int, str]]:
    messages: list[tuple[int, str]] = []
    async with grpc.aio.insecure_channel(address) as link:
        api = realtime_grpc.RealtimeServiceStub(link)
        while True:
            page = await api.History(
                realtime_pb2.HistoryRequest(channel=channel, after_serial=len(messages), limit=1000), timeout=30
            )
            if not page.messages:
                return messages
            messages.extend((m.serial, m.id) for m in page.messages)


def test_publish_subscribe_history_through_two_gateways(cluster: Launcher) -> None:
    gateways = cluster.topology.gateways
    channels = [f"it-{index}" for index in range(CHANNELS)]

    async def scenario() -> tuple[dict[str, dict[int, str]], dict[str, list[tuple[int, str]]]]:
        subscribers = {
            channel: asyncio.create_task(follow(gateways[1], channel, 0, MESSAGES), name=channel)
            for channel in channels
        }
        await asyncio.sleep(1.0)  # let every subscription reach its owner before the first publish
        acked: dict[str, dict[int, str]] = {channel: {} for channel in channels}
        links = [grpc.aio.insecure_channel(address) for address in gateways]
        apis = [realtime_grpc.RealtimeServiceStub(link) for link in links]

        async def publisher(index: int, channel: str) -> None:
            for first in range(0, MESSAGES, BATCH):
                ids = [f"{channel}-m{n}" for n in range(first, first + BATCH)]
                request = realtime_pb2.PublishRequest(
                    channel=channel, messages=[message_pb2.Message(id=i, data=i.encode()) for i in ids]
                )
                response = await apis[(index + first) % 2].Publish(request, timeout=30)
                assert list(response.duplicates) == [False] * BATCH
                acked[channel].update(zip(response.serials, ids, strict=True))

        await asyncio.gather(*(publisher(index, channel) for index, channel in enumerate(channels)))
        delivered = {channel: await asyncio.wait_for(task, 60) for channel, task in subscribers.items()}
        for link in links:
            await link.close()
        return acked, delivered

    acked, delivered = asyncio.run(scenario())
    for channel in channels:
        expected = [(serial, acked[channel][serial]) for serial in range(1, MESSAGES + 1)]
        assert sorted(acked[channel]) == list(range(1, MESSAGES + 1)), channel
        assert asyncio.run(history(gateways[0], channel)) == expected, channel
        assert delivered[channel] == expected, channel
        # The ids were published in order by one publisher, so serial order is publish order.
        assert [message_id for _, message_id in expected] == [f"{channel}-m{n}" for n in range(MESSAGES)]
    middle = asyncio.run(follow(gateways[0], channels[0], 250, MESSAGES - 250))
    assert [serial for serial, _ in middle] == list(range(251, MESSAGES + 1))


def test_a_retried_publish_is_stored_once(cluster: Launcher) -> None:
    async def scenario() -> list[tuple[list[int], list[bool]]]:
        results = []
        for address in cluster.topology.gateways:
            async with grpc.aio.insecure_channel(address) as link:
                request = realtime_pb2.PublishRequest(
                    channel="retried", messages=[message_pb2.Message(id="once", data=b"x")]
                )
                response = await realtime_grpc.RealtimeServiceStub(link).Publish(request, timeout=30)
                results.append((list(response.serials), list(response.duplicates)))
        return results

    assert asyncio.run(scenario()) == [([1], [False]), ([1], [True])]
    assert asyncio.run(history(cluster.topology.gateways[0], "retried")) == [(1, "once")]


@pytest.mark.parametrize(
    ("channel", "messages", "reason"),
    [
        ("", [message_pb2.Message(id="a")], "CHANNEL_NAME_EMPTY"),
        ("bad name!", [message_pb2.Message(id="a")], "CHANNEL_NAME_INVALID"),
        (":leading", [message_pb2.Message(id="a")], "CHANNEL_NAME_INVALID"),
        ("x" * 257, [message_pb2.Message(id="a")], "CHANNEL_NAME_TOO_LONG"),
        ("valid", [message_pb2.Message(id="a", data=b"x" * (64 * 1024 + 1))], "MESSAGE_TOO_LARGE"),
        ("valid", [message_pb2.Message(id=f"m{i}") for i in range(101)], "BATCH_TOO_MANY_MESSAGES"),
        ("valid", [message_pb2.Message(id=f"m{i}", data=b"x" * 60_000) for i in range(20)], "BATCH_TOO_LARGE"),
        ("valid", [message_pb2.Message(data=b"no id")], "MESSAGE_ID_MISSING"),
        ("valid", [], "BATCH_EMPTY"),
    ],
)
def test_bad_input_is_refused_with_a_reason_and_changes_nothing(
    cluster: Launcher, channel: str, messages: list[message_pb2.Message], reason: str
) -> None:
    gateway = cluster.topology.gateways[0]

    async def scenario() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(gateway) as link:
            api = realtime_grpc.RealtimeServiceStub(link)
            await api.Publish(
                realtime_pb2.PublishRequest(channel="valid", messages=[message_pb2.Message(id="keep")]), timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await api.Publish(realtime_pb2.PublishRequest(channel=channel, messages=messages), timeout=30)
            return raised.value

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info is not None and info.reason == reason and info.domain == "ringcast"
    assert asyncio.run(history(gateway, "valid")) == [(1, "keep")]


def test_acknowledged_messages_survive_sigkill_of_every_store(cluster: Launcher) -> None:
    gateway = cluster.topology.gateways[0]

    async def publish() -> list[int]:
        async with grpc.aio.insecure_channel(gateway) as link:
            request = realtime_pb2.PublishRequest(
                channel="durable", messages=[message_pb2.Message(id=f"d{i}") for i in range(3)]
            )
            response = await realtime_grpc.RealtimeServiceStub(link).Publish(request, timeout=30)
            return list(response.serials)

    serials = asyncio.run(publish())
    for zone in "abc":
        cluster.kill(f"store-{zone}", signal.SIGKILL)  # right after the ack: nothing may be lost
    for zone in "abc":
        cluster.restart(f"store-{zone}")
    assert asyncio.run(history(gateway, "durable")) == [(s, f"d{i}") for i, s in enumerate(serials)]


async def _serving(addresses: list[str]) -> int:
    total = 0
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as link:
            node = channel_grpc.ChannelServiceStub(link)
            total += (await node.GetNode(channel_pb2.GetNodeRequest(), timeout=5)).channels_serving
    return total


def test_a_killed_nodes_channels_in_use_serve_again_before_any_request(cluster: Launcher) -> None:
    """Relocation does not wait for clients: gateways prepare the moved channels at their new owners."""
    gateways = cluster.topology.gateways
    nodes = {p.name: p.address for p in cluster.topology.processes if p.role == "channel"}
    victim = sorted(nodes)[0]
    survivors = [address for name, address in nodes.items() if name != victim]
    ring = Ring(1, sorted(nodes))
    channels = [name for name in (f"moved-{index}" for index in range(2_000)) if ring.owner(name) == victim][:200]

    async def publish_all(tag: str) -> None:
        links = [grpc.aio.insecure_channel(address) for address in gateways]
        try:
            apis = [realtime_grpc.RealtimeServiceStub(link) for link in links]
            await asyncio.gather(
                *(
                    apis[index % 2].Publish(
                        realtime_pb2.PublishRequest(channel=channel, messages=[message_pb2.Message(id=tag)]), timeout=60
                    )
                    for index, channel in enumerate(channels)
                )
            )
        finally:
            for link in links:
                await link.close()

    asyncio.run(publish_all("before"))
    baseline = asyncio.run(_serving(survivors))
    cluster.kill(victim, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 60  # a liveness bound, not a measurement (see `ringcast bench --failover`)
        while (serving := asyncio.run(_serving(survivors))) < baseline + len(channels):
            assert time.monotonic() < deadline, f"{serving - baseline} of {len(channels)} moved channels serve"
            time.sleep(0.1)
        asyncio.run(publish_all("after"))
        for channel in channels[:20]:
            assert asyncio.run(history(gateways[0], channel)) == [(1, "before"), (2, "after")]
    finally:
        cluster.restart(victim)


def test_prepare_refuses_bad_input_and_get_node_tells_the_state(cluster: Launcher) -> None:
    address = next(p.address for p in cluster.topology.processes if p.role == "channel")

    async def scenario() -> tuple[list[str], channel_pb2.GetNodeResponse]:
        async with grpc.aio.insecure_channel(address) as link:
            node = channel_grpc.ChannelServiceStub(link)
            reasons = []
            for channels in (["ok"] * 1_001, ["ok", ""], ["bad name!"]):
                try:
                    await node.Prepare(channel_pb2.PrepareRequest(channels=channels), timeout=5)
                except grpc.aio.AioRpcError as error:
                    info = error_info(error)
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and info is not None
                    reasons.append(info.reason)
            return reasons, await node.GetNode(channel_pb2.GetNodeRequest(), timeout=5)

    reasons, state = asyncio.run(scenario())
    assert reasons == ["TOO_MANY_CHANNELS", "CHANNEL_NAME_EMPTY", "CHANNEL_NAME_INVALID"]
    assert state.serving and state.ring_version > 0 and state.node_id.startswith("channel-")


def test_every_service_serves_prometheus_metrics(cluster: Launcher) -> None:
    """A publish to a new channel (a takeover) and a subscription to it: each process reports its part."""
    gateway = cluster.topology.gateways[0]

    async def traffic() -> list[tuple[int, str]]:
        async with grpc.aio.insecure_channel(gateway) as link:
            api = realtime_grpc.RealtimeServiceStub(link)
            request = realtime_pb2.PublishRequest(
                channel="metered", messages=[message_pb2.Message(id=f"m{i}") for i in range(3)]
            )
            await api.Publish(request, timeout=30)
        return await follow(gateway, "metered", 0, 3)

    assert [serial for serial, _ in asyncio.run(traffic())] == [1, 2, 3]
    totals: dict[str, float] = {}
    for spec in cluster.topology.processes:
        if not spec.metrics:
            continue
        for (name, labels), value in scrape_metrics(spec.metrics).items():
            key = f"{spec.role}:{name}" + "".join(f"[{v}]" for k, v in labels if k in ("outcome", "state"))
            totals[key] = totals.get(key, 0.0) + value
    assert totals["gateway:ringcast_publish_seconds_count[ok]"] > 0
    assert totals["gateway:ringcast_ring_version"] > 0 and totals["channel:ringcast_ring_version"] > 0
    assert totals["channel:ringcast_takeovers_total[serving]"] > 0
    assert totals["channel:ringcast_takeover_seconds_count"] > 0
    assert totals["channel:ringcast_channels[serving]"] > 0
    assert totals["channel:ringcast_deliveries_total"] > 0
    assert totals["channel:ringcast_replica_behind_entries_count"] > 0
    assert totals["store:ringcast_store_commit_seconds_count"] > 0
    assert (
        totals["store:ringcast_store_commit_requests_sum"] >= totals["store:ringcast_store_commit_requests_count"] > 0
    )
    assert any(key.startswith("placement:") for key in totals)  # it serves the process metrics at least


def test_ringcast_up_serves_and_stops_with_no_process_left(tmp_path: Path) -> None:
    base = free_port_run(64)  # `up --base-port` takes the ports after it in turn
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    up = subprocess.Popen(
        [sys.executable, "-m", "ringcast_tools", "up", "--base-port", str(base)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = time.monotonic()
    lines = []
    assert up.stdout is not None
    for line in up.stdout:
        lines.append(line)
        if "Ctrl-C stops" in line or up.poll() is not None:
            break
    assert "Ctrl-C stops" in lines[-1], "".join(lines)
    ready_s = time.monotonic() - started
    state = json.loads((tmp_path / ".ringcast" / "cluster.json").read_text())
    names = [process["name"] for process in state["processes"]]
    assert names[0] == "etcd" and len(names) == 10
    assert {p["role"] for p in state["processes"]} == {"etcd", "placement", "store", "channel", "gateway"}
    published = subprocess.run(
        [sys.executable, "-m", "ringcast_tools", "publish", "hello", "world", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["serial"] == 1
    up.send_signal(signal.SIGINT)
    stopping = time.monotonic()
    up.wait(timeout=15)
    assert time.monotonic() - stopping < 10
    for process in state["processes"]:
        assert not _alive(process["pid"]), process
    print(f"ringcast up ready in {ready_s:.1f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that its parent has not reaped yet counts as gone.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()
