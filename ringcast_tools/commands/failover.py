"""`ringcast bench --failover`: how long a channel is unavailable when its owner dies.

It starts its own cluster (so it can kill and restart processes), then, per trial: a publisher
publishes to one channel in a loop; the channel's owner is killed with SIGKILL; the gap is the time
from the kill to the first publish acknowledged after it. The killed node is restarted before the
next trial. Then the relocation measurement: `--moved-channels` channels that one node owns are made
active (a publish each), that node is killed, and two clocks run: until the surviving nodes serve
every one of them (the gateways prepare the moved channels in use; no client request is needed),
and until a publish to each of them, issued at the kill through the SDK, is acknowledged.
Numbers are printed with the conditions; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

import ringcast
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology
from services.core.ring import Ring
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc

publish_timeout_s = 20.0

concurrency_max = 512
"""Publishes the relocation run keeps in flight (10,000 first publishes at once, each a takeover,
time out and retry faster than the owners can take them over)."""


async def _owner(api: realtime_grpc.RealtimeServiceStub, channel: str) -> str:
    state = await api.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=publish_timeout_s)
    return str(state.owner)


async def _publish(api: realtime_grpc.RealtimeServiceStub, channel: str, message_id: str) -> None:
    request = realtime_pb2.PublishRequest(channel=channel, messages=[message_pb2.Message(id=message_id, data=b"x")])
    await api.Publish(request, timeout=publish_timeout_s)


async def failover_trial(launcher: Launcher, api: realtime_grpc.RealtimeServiceStub, channel: str) -> float:
    """Seconds from SIGKILL of the channel's owner to the first acknowledged publish after it."""
    owner = await _owner(api, channel)
    killed_at: float | None = None
    first_ack_after: float | None = None
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal first_ack_after
        count = 0
        while not stop.is_set():
            count += 1
            invoked = time.monotonic()
            try:
                await _publish(api, channel, f"{channel}-{uuid.uuid4().hex}-{count}")
            except grpc.RpcError:
                continue
            # Only a publish sent after the kill counts: one sent before may have committed already.
            if killed_at is not None and invoked >= killed_at and first_ack_after is None:
                first_ack_after = time.monotonic()
                stop.set()

    task = asyncio.create_task(publisher())
    await asyncio.sleep(1.0)  # steady state first
    killed_at = time.monotonic()
    launcher.kill(owner, signal.SIGKILL)
    try:
        await asyncio.wait_for(stop.wait(), publish_timeout_s * 2)
    finally:
        stop.set()
        await task
    launcher.restart(owner)
    assert first_ack_after is not None
    return first_ack_after - killed_at


async def relocation(launcher: Launcher, count: int) -> dict[str, object]:
    """Make `count` channels owned by one node active, kill it, and time what users feel: publishes
    to every moved channel start at the kill (through the SDK, which retries until acked), and
    the clock stops when the last of them is acknowledged. Also reported: when the survivors serve
    every moved channel (the platform's clock), and how long the same round of publishes takes with
    no fault (the client's own share of the time)."""
    members = sorted(p.spec.name for p in launcher.running.values() if p.spec.role == "channel")
    victim = members[0]
    ring = Ring(1, members)
    run = uuid.uuid4().hex[:6]
    names = (f"reloc-{run}-{index}" for index in itertools.count())
    channels = list(itertools.islice((name for name in names if ring.owner(name) == victim), count))
    client = ringcast.Client(launcher.topology.gateways, timeout_s=publish_timeout_s * 3)
    gate = asyncio.Semaphore(concurrency_max)

    async def round_of_publishes(since: float) -> list[float]:
        """One publish to every channel at once; each one's seconds from `since` to its ack."""

        async def one(channel: str) -> float:
            async with gate:
                await client.publish(channel, b"x")
            return time.monotonic() - since

        return await asyncio.gather(*(one(channel) for channel in channels))

    print(f"relocation: making {count} channels owned by {victim} active", flush=True)
    try:
        started = time.monotonic()
        warm_s = max(await round_of_publishes(started))
        started = time.monotonic()
        round_s = max(await round_of_publishes(started))  # no fault: the client's share
        survivors = [launcher.running[member].spec.address for member in members if member != victim]
        async with contextlib.AsyncExitStack() as stack:
            nodes = [
                channel_grpc.ChannelServiceStub(await stack.enter_async_context(grpc.aio.insecure_channel(address)))
                for address in survivors
            ]
            before = await _serving(nodes)
            print(
                f"relocation: {count} channels active; a round of publishes takes {round_s:.1f} s; killing {victim}",
                flush=True,
            )
            killed_at = time.monotonic()
            launcher.kill(victim, signal.SIGKILL)
            acked = asyncio.ensure_future(round_of_publishes(killed_at))
            # The platform's own clock: until the survivors serve every moved channel.
            while await _serving(nodes) < before + count and time.monotonic() - killed_at < publish_timeout_s * 3:
                await asyncio.sleep(0.05)
            ready_s = time.monotonic() - killed_at
            acked_after = sorted(await acked)
    finally:
        await client.close()
    launcher.restart(victim)
    return {
        "moved": count,
        "warm_s": round(warm_s, 2),
        "round_without_fault_s": round(round_s, 2),
        "all_moved_serving_again_s": round(ready_s, 2),
        "all_moved_acked_again_s": round(acked_after[-1], 2),
        "acked_again_median_s": round(statistics.median(acked_after), 2),
        "client": f"Python SDK, one publish per channel, {concurrency_max} in flight",
    }


async def _serving(nodes: list[channel_grpc.ChannelServiceStub]) -> int:
    """Channels the nodes serve now (a node that does not answer counts none)."""
    total = 0
    for node in nodes:
        with contextlib.suppress(grpc.RpcError):
            status = await node.GetNode(channel_pb2.GetNodeRequest(), timeout=5.0)
            total += status.channels_serving
    return total


async def run_failover(trials: int, moved_channels: int, lease_ttl_s: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ringcast-failover-") as directory:
        state = Path(directory)
        launcher = Launcher(local_topology(state / "data", lease_ttl_s=lease_ttl_s), state)
        launcher.start_all()
        try:
            async with grpc.aio.insecure_channel(launcher.topology.gateways[0]) as link:
                api = realtime_grpc.RealtimeServiceStub(link)
                gaps = []
                for trial in range(trials):
                    gaps.append(await failover_trial(launcher, api, f"failover-{trial}"))
                    print(f"failover trial {trial + 1}/{trials}: {gaps[-1]:.2f} s", flush=True)
                result: dict[str, object] = {
                    "trials": trials,
                    "failover_median_s": round(statistics.median(gaps), 2),
                    "failover_min_s": round(min(gaps), 2),
                    "failover_max_s": round(max(gaps), 2),
                    "lease_ttl_s": lease_ttl_s,
                    "cpus": os.cpu_count(),
                }
                if moved_channels:
                    result["relocation"] = await relocation(launcher, moved_channels)
                return result
        finally:
            launcher.stop_all()


def run(trials: int, moved_channels: int, lease_ttl_s: float, as_json: bool) -> int:
    result = asyncio.run(run_failover(trials, moved_channels, lease_ttl_s))
    if as_json:
        print(json.dumps(result))
    else:
        print(
            f"failover median={result['failover_median_s']} s min={result['failover_min_s']} s "
            f"max={result['failover_max_s']} s over {trials} trials "
            f"(SIGKILL of the owner → first ack; lease ttl {lease_ttl_s} s; "
            f"3 channel nodes, 3 stores, 2 gateways, {result['cpus']} cpus)"
        )
        if "relocation" in result:
            relocation_result = result["relocation"]
            print(f"relocation {json.dumps(relocation_result)}")
    return 0
