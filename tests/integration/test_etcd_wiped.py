"""etcd loses its data under a running cluster of real processes: the cluster carries on by itself.

`etcd` is SIGKILLed, its data directory deleted, and it starts again: every lease, member key and
revision is gone, and revisions start again from 1. Every process must register again (a revision
lower than its last is no reason to stop), placement must follow the new etcd with ring versions
above all it served, and owners must take channels over again at epochs above the fences the stores
still hold — without anyone restarting a process. Nothing acknowledged may be lost.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringcast
from ringcast_tools.cluster.launcher import Launcher, healthy
from ringcast_tools.cluster.topology import local_topology

CHANNELS = [f"wiped-{index}" for index in range(12)]
SERVED_AGAIN_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(local_topology(tmp_path / "data"), tmp_path / "state")
    launcher.start_all()
    try:
        yield launcher
    finally:
        launcher.stop_all()


def wipe_etcd(cluster: Launcher) -> None:
    spec = cluster.topology.named("etcd")
    cluster.kill("etcd", signal.SIGKILL)
    shutil.rmtree(spec.data_dir)
    cluster.restart("etcd")


async def publish_everywhere(client: ringcast.Client, tag: str) -> dict[str, int]:
    return {channel: await client.publish(channel, f"{tag}-{channel}", id=f"{tag}-{channel}") for channel in CHANNELS}


def test_the_cluster_serves_again_by_itself_after_etcd_lost_its_data(cluster: Launcher) -> None:
    async def scenario() -> None:
        async with ringcast.Client(cluster.topology.gateways, timeout_s=5) as client:
            first = await publish_everywhere(client, "before")
            for round_number in range(2):  # twice: which process registers first is a race
                wipe_etcd(cluster)
                wiped = time.monotonic()
                while True:
                    try:
                        again = await publish_everywhere(client, f"after-{round_number}")
                        break
                    except ringcast.RingcastError as error:
                        assert time.monotonic() - wiped < SERVED_AGAIN_S, f"not served again: {error!r}"
                        await asyncio.sleep(0.5)
                print(f"\nwipe {round_number + 1}: every channel served again {time.monotonic() - wiped:.1f} s later")
                assert all(again[channel] > first[channel] for channel in CHANNELS)
                first = again
            for channel in CHANNELS:
                page = await client.history(channel, after=0, limit=10)
                assert [m.id for m in page.messages] == [f"{tag}-{channel}" for tag in ("before", "after-0", "after-1")]

    asyncio.run(asyncio.wait_for(scenario(), 120))
    for spec in cluster.topology.processes:
        if spec.role in ("placement", "store", "channel", "gateway"):
            assert healthy(spec), f"{spec.name} is not SERVING"
