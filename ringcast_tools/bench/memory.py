"""Memory at scale: how much each process holds per active channel.

`active_channels` makes `count` channels active — one publish each through the SDK, 512 in flight,
so the ring spreads them over the channel nodes — and reads every process's resident memory
(VmRSS) before and after. A channel node keeps, per channel it took over, its role: the tail of
recent entries, the dedup window's ids, replica views; a gateway keeps the channels it routed
lately. Bytes per channel = the growth of a role's processes / the channels. Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import ringcast
from ringcast_tools.cluster.launcher import Launcher

publishes_inflight_max = 512
"""Publishes kept in flight while channels are made active."""


def resident_mib(launcher: Launcher) -> dict[str, float]:
    """VmRSS of every running process of the cluster, MiB (a process that just exited: left out)."""
    found: dict[str, float] = {}
    for name, running in launcher.running.items():
        try:
            status = Path(f"/proc/{running.process.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                found[name] = round(int(line.split()[1]) / 1024, 1)
    return found


async def active_channels(launcher: Launcher, count: int, say: Callable[[str], None]) -> dict[str, object]:
    before = resident_mib(launcher)
    client = ringcast.Client(launcher.topology.gateways, timeout_s=60.0)
    gate = asyncio.Semaphore(publishes_inflight_max)
    run = uuid.uuid4().hex[:6]
    done = 0

    async def touch(index: int) -> None:
        nonlocal done
        async with gate:
            await client.publish(f"mem-{run}-{index}", b"x" * 100)
        done += 1
        if done % 20_000 == 0:
            say(f"memory: {done} of {count} channels active")

    say(f"memory: making {count} channels active ({publishes_inflight_max} publishes in flight)")
    started = time.monotonic()
    try:
        await asyncio.gather(*(touch(index) for index in range(count)))
    finally:
        await client.close()
    took_s = time.monotonic() - started
    after = resident_mib(launcher)

    def per_channel(role: str) -> int:
        names = [spec.name for spec in launcher.topology.by_role(role) if spec.name in before and spec.name in after]
        grown_mib = sum(after[name] - before[name] for name in names)
        return round(grown_mib * 1024 * 1024 / count)

    return {
        "active_channels": count,
        "channel_nodes": len(launcher.topology.by_role("channel")),
        "seconds": round(took_s, 1),
        "channels_per_s": round(count / took_s),
        "rss_mib_before": before,
        "rss_mib_after": after,
        "channel_node_bytes_per_channel": per_channel("channel"),
        "gateway_bytes_per_channel": per_channel("gateway"),
        "store_bytes_per_channel": per_channel("store"),
        "largest_channel_node_mib": max(after[spec.name] for spec in launcher.topology.by_role("channel")),
    }
