"""Retention against real processes: stores trim old entries, readers from before get told so.

A cluster whose stores keep each channel's newest 10 entries (and trim every 0.2 s): old messages go
from disk, a subscription from before the retained range raises ContinuityLost (with the serial to
resume at), history says where the retained range begins, `rewind` gives what is left without an
error, and a takeover by a new owner after a SIGKILL starts from the trimmed log and goes on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import ringcast
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology
from services.common import namespaces
from services.common.etcd import Etcd
from services.core.namespaces import NamespaceOptions
from services.store.server import database_file_name
from tests.integration.procs import scrape_metrics

kept = 10
channel = "retained"


@pytest.fixture(scope="module")
def trimming_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    state = tmp_path_factory.mktemp("retention")
    env = dict(os.environ)
    env.update(
        RINGCAST_RETENTION_ENTRIES=str(kept), RINGCAST_RETENTION_KEEP_RECENT_S="0.001", RINGCAST_TRIM_EVERY_S="0.2"
    )
    launcher = Launcher(local_topology(state / "data"), state, env=env)
    launcher.start_all()
    try:
        yield launcher
    finally:
        launcher.stop_all()


def stored_serials(launcher: Launcher, name: str = channel) -> dict[str, list[int]]:
    """What each store holds of channel `name`, read from its SQLite file."""
    held = {}
    for spec in launcher.topology.processes:
        if spec.name.startswith("store"):
            connection = sqlite3.connect(f"file:{Path(spec.data_dir) / database_file_name}?mode=ro", uri=True)
            try:
                rows = connection.execute("SELECT serial FROM entries WHERE channel = ? ORDER BY serial", (name,))
                held[spec.name] = [int(row[0]) for row in rows]
            finally:
                connection.close()
    return held


async def publish_numbered(client: ringcast.Client, prefix: str, count: int) -> None:
    for index in range(count):
        await client.publish(channel, f"{prefix}{index}".encode(), id=f"{prefix}{index}")


async def trimmed_history(client: ringcast.Client, beyond: int) -> ringcast.HistoryPage:
    """Publish until the owner has heard from a replica that it trimmed past serial `beyond` (appends'
    replies carry the replica's base), then the first history page from serial 0."""
    deadline = time.monotonic() + 30
    poke = 0
    while True:
        page = await client.history(channel, after=0, limit=5)
        if page.gap_next_serial > beyond or time.monotonic() > deadline:
            return page
        poke += 1
        await client.publish(channel, b"poke", id=f"poke-{poke}")
        await asyncio.sleep(0.3)


def test_old_entries_are_trimmed_and_readers_from_before_are_told(trimming_cluster: Launcher) -> None:
    gateways = trimming_cluster.topology.gateways

    async def scenario() -> None:
        async with ringcast.Client(gateways) as client:
            await publish_numbered(client, "m", 40)
            page = await trimmed_history(client, beyond=40 - kept)
            first = page.gap_next_serial
            assert first > 40 - kept, f"the newest {kept} of 40+ entries are kept, not from {first}"
            assert [message.serial for message in page.messages] == list(range(first, first + 5))

            # A subscription from before the retained range is told, with where to resume.
            subscription = client.subscribe(channel, after=0)
            with pytest.raises(ringcast.ContinuityLost) as lost:
                async for _ in subscription:
                    pass
            assert lost.value.next_serial >= first and lost.value.reason == "RETENTION_EXPIRED"
            # Accepting the gap: everything retained, in order, from there.
            resumed = client.subscribe(channel, after=lost.value.next_serial - 1)
            received = []
            async for message in resumed:
                received.append(message.serial)
                if len(received) == 3:
                    break
            await resumed.close()
            assert received == [lost.value.next_serial + n for n in range(3)]
            # `rewind` asks for the last N still retained: a gap at its start is no error.
            rewound = client.subscribe(channel, rewind=1_000)
            async for message in rewound:
                assert message.serial >= first
                break
            await rewound.close()

        # The raw stream says it with the gap item, before any message.
        async with grpc.aio.insecure_channel(gateways[0]) as link:
            stream = realtime_grpc.RealtimeServiceStub(link).Subscribe(
                realtime_pb2.SubscribeRequest(channel=channel, after_serial=3)
            )
            item = await asyncio.wait_for(stream.read(), 30)
            stream.cancel()
            assert item.WhichOneof("item") == "gap" and item.gap.reason == "RETENTION_EXPIRED"
            assert item.gap.next_serial >= first

    asyncio.run(scenario())
    # On disk, each store keeps about `kept` entries (a few more: what it is yet to hear committed).
    held = stored_serials(trimming_cluster)
    assert all(0 < len(serials) <= kept + 5 for serials in held.values()), held
    assert all(serials == list(range(serials[0], serials[-1] + 1)) for serials in held.values()), held
    # And ops can see it: entries trimmed per store, readers told per kind of reader.
    totals: dict[str, float] = {}
    for spec in trimming_cluster.topology.processes:
        for (name, labels), value in (scrape_metrics(spec.metrics) if spec.metrics else {}).items():
            key = f"{spec.role}:{name}" + "".join(f"[{v}]" for _, v in labels)
            totals[key] = totals.get(key, 0.0) + value
    assert totals["store:ringcast_store_trimmed_entries_total[default]"] >= 3 * (40 - kept)
    # Owners count gaps per stream they serve: a gateway follows a channel with one stream, shared by
    # its subscribers (the SDK's and the raw one above each saw the gap, as asserted there).
    assert totals["channel:ringcast_continuity_lost_total[subscription]"] >= 1
    assert totals["channel:ringcast_continuity_lost_total[history]"] >= 1


def test_a_new_owner_takes_a_trimmed_channel_over_and_goes_on(trimming_cluster: Launcher) -> None:
    gateways = trimming_cluster.topology.gateways

    async def scenario() -> None:
        async with ringcast.Client(gateways) as client:
            await publish_numbered(client, "t", 30)
            last = (await client.get_channel(channel)).last_serial
            before = await trimmed_history(client, beyond=last - kept)
            state = await client.get_channel(channel)
            owner, last = state.owner, state.last_serial
            trimming_cluster.kill(owner, signal.SIGKILL)
            serial = await client.publish(channel, b"after", id="after-kill")
            assert serial == last + 1
            assert (await client.get_channel(channel)).owner != owner
            # A retry of a message still retained is found, not stored twice.
            assert await client.publish(channel, b"after", id="after-kill") == serial
            after = await client.history(channel, after=0, limit=5)
            assert after.gap_next_serial >= before.gap_next_serial
            assert after.messages[0].serial == after.gap_next_serial
            trimming_cluster.restart(owner)

    asyncio.run(scenario())


def test_a_namespace_keeps_its_own_number_of_entries_and_the_rest_keep_the_store_s(trimming_cluster: Launcher) -> None:
    """`short` keeps 3 entries per channel and `long` 1,000 (above the stores' 10): set in etcd while
    the cluster runs, applied by every store's next pass; a channel in no namespace keeps the stores'
    10; the trimmed entries are counted by namespace."""
    etcd = trimming_cluster.topology.named("etcd").address

    async def scenario() -> None:
        client = await Etcd.connect(etcd)
        try:
            await namespaces.put(client, "short", NamespaceOptions(retention_entries=3))
            await namespaces.put(client, "long", NamespaceOptions(retention_entries=1_000))
        finally:
            await client.close()
        await asyncio.sleep(2 * namespaces.poll_interval_s + 0.5)  # every store has read them
        async with ringcast.Client(trimming_cluster.topology.gateways) as publisher:
            for name in ("short:a", "long:a", "plain-a"):
                for index in range(30):
                    await publisher.publish(name, b"x", id=f"{name}-{index}")
            # Each store trims only what it knows is committed: later appends tell it.
            deadline = time.monotonic() + 30
            while True:
                held = {name: stored_serials(trimming_cluster, name) for name in ("short:a", "long:a", "plain-a")}
                short = [len(serials) for serials in held["short:a"].values()]
                plain = [len(serials) for serials in held["plain-a"].values()]
                if max(short) <= 3 + 5 and max(plain) <= kept + 5 or time.monotonic() > deadline:
                    break
                for name in ("short:a", "long:a", "plain-a"):
                    await publisher.publish(name, b"poke", id=f"{name}-poke-{time.monotonic_ns()}")
                await asyncio.sleep(0.3)
        assert all(0 < len(serials) <= 3 + 5 for serials in held["short:a"].values()), held["short:a"]
        assert all(len(serials) <= kept + 5 for serials in held["plain-a"].values()), held["plain-a"]
        assert all(serials[0] == 1 for serials in held["long:a"].values()), held["long:a"]

    asyncio.run(scenario())
    trimmed: dict[str, float] = {}
    for spec in trimming_cluster.topology.by_role("store"):
        for (name, labels), value in scrape_metrics(spec.metrics).items():
            if name == "ringcast_store_trimmed_entries_total":
                trimmed[dict(labels)["namespace"]] = trimmed.get(dict(labels)["namespace"], 0.0) + value
    assert trimmed.get("short", 0) >= 3 * (30 - 3 - 5) and "long" not in trimmed, trimmed
