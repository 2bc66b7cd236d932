"""Damage at rest on one replica, against real processes: nothing acknowledged is hidden or lost.

The cluster publishes, stops, and has one store's SQLite file damaged behind its back, as a disk or
an operator would (a row deleted, a bit flipped in a row's serial, a bit flipped high in a channel's
fence), then starts again. `PRAGMA integrity_check` says ok to all of it, so SQLite will not notice:
ringcast must. Readers get every serial in order (reads are checked and go to a replica that
matches), the owner serves although one replica's fence is absurd, and the damaged replica is
rewritten from a good one, counted in metrics on both sides.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringcast
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology
from services.store.server import database_file_name
from tests.integration.procs import scrape_metrics

HOLE = "hole"
"""Store a loses serial 20 of this channel (the row is deleted)."""
FLIPPED = "flipped"
"""Store a's row for serial 20 of this channel has bit 40 of its serial set: a hole at 20, and an
entry that claims to be far beyond the end of the log."""
FENCED = "fenced"
"""Store a's fence for this channel has bit 40 set: far above any epoch an owner will use."""

PUBLISHED = 1_500
DAMAGED_SERIAL = 20
REPAIR_S = 30.0


def _store_a(launcher: Launcher) -> Path:
    return Path(launcher.topology.named("store-a").data_dir) / database_file_name


def _execute(path: Path, statement: str, parameters: tuple[object, ...]) -> int:
    connection = sqlite3.connect(path)
    try:
        with connection:
            changed = connection.execute(statement, parameters).rowcount
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # SQLite sees nothing wrong
        return int(changed)
    finally:
        connection.close()


def _serials(path: Path, channel: str) -> list[int]:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT serial FROM entries WHERE channel = ? ORDER BY serial", (channel,))
        return [int(row[0]) for row in rows]
    finally:
        connection.close()


def _totals(launcher: Launcher) -> dict[str, float]:
    """Every metric sample of the cluster, summed per role, name and label values."""
    totals: dict[str, float] = {}
    for spec in launcher.topology.processes:
        for (name, labels), value in (scrape_metrics(spec.metrics) if spec.metrics else {}).items():
            key = f"{spec.role}:{name}" + "".join(f"[{v}]" for _, v in labels)
            totals[key] = totals.get(key, 0.0) + value
    return totals


@pytest.fixture(scope="module")
def damaged_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    state = tmp_path_factory.mktemp("damage")
    launcher = Launcher(local_topology(state / "data"), state)
    launcher.start_all()
    try:

        async def publish() -> None:
            async with ringcast.Client(launcher.topology.gateways) as client:
                for channel in (HOLE, FLIPPED, FENCED):
                    for first in range(0, PUBLISHED, 100):
                        await client.publish_many(channel, [f"{channel}-{n}" for n in range(first, first + 100)])

        asyncio.run(publish())
        launcher.stop_all()
        path = _store_a(launcher)
        where = "channel = ? AND serial = ?"
        assert _execute(path, f"DELETE FROM entries WHERE {where}", (HOLE, DAMAGED_SERIAL)) == 1
        assert _execute(
            path, f"UPDATE entries SET serial = serial | (1 << 40) WHERE {where}", (FLIPPED, DAMAGED_SERIAL)
        )
        assert _execute(path, "UPDATE fences SET epoch = epoch | (1 << 40) WHERE channel = ?", (FENCED,)) == 1
        launcher.start_all()
        yield launcher
    finally:
        launcher.stop_all()


async def _history(client: ringcast.Client, channel: str, after: int) -> list[int]:
    serials: list[int] = []
    while True:
        page = await client.history(channel, after=after, limit=100)
        assert page.gap_next_serial == 0, f"{channel}: a gap where retention made none: {page}"
        if not page.messages:
            return serials
        serials += [message.serial for message in page.messages]
        after = page.messages[-1].serial


@pytest.mark.parametrize("channel", [HOLE, FLIPPED])
def test_history_and_subscriptions_never_skip_a_serial_one_replica_lost(
    damaged_cluster: Launcher, channel: str
) -> None:
    async def scenario() -> None:
        async with ringcast.Client(damaged_cluster.topology.gateways) as client:
            assert await _history(client, channel, after=15) == list(range(16, PUBLISHED + 1))
            assert await _history(client, channel, after=0) == list(range(1, PUBLISHED + 1))
            received = []
            subscription = client.subscribe(channel, after=0)
            async for message in subscription:
                received.append(message.serial)
                if message.serial == PUBLISHED:
                    break
            await subscription.close()
            assert received == list(range(1, PUBLISHED + 1))
            assert await client.publish(channel, "after the damage") == PUBLISHED + 1

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize("channel", [HOLE, FLIPPED])
def test_the_damaged_replica_is_rewritten_from_a_good_one(damaged_cluster: Launcher, channel: str) -> None:
    path = _store_a(damaged_cluster)

    async def use() -> None:  # an owner repairs what it finds while serving the channel: serve it
        async with ringcast.Client(damaged_cluster.topology.gateways) as client:
            served = await _history(client, channel, after=0)  # the test before may have published one more
            assert served[:PUBLISHED] == list(range(1, PUBLISHED + 1))

    asyncio.run(asyncio.wait_for(use(), 60))  # not left to the test before (they may run apart)
    deadline = time.monotonic() + REPAIR_S
    while True:
        held = _serials(path, channel)
        if held[:PUBLISHED] == list(range(1, PUBLISHED + 1)) and held[-1] < 1 << 40:
            break
        assert time.monotonic() < deadline, f"store-a still holds {held[15:25]}...{held[-3:]} of {channel}"
        time.sleep(0.2)
    totals = _totals(damaged_cluster)
    # Counted once per channel and owner; the other parameter's channel may not have been served yet.
    assert totals["store:ringcast_store_damaged_entries_total[missing]"] >= 1
    assert totals["channel:ringcast_replica_faults_total[damaged][a]"] >= 1


def test_one_replica_with_an_absurd_fence_cannot_take_a_channel_down(damaged_cluster: Launcher) -> None:
    async def scenario() -> None:
        async with ringcast.Client(damaged_cluster.topology.gateways, timeout_s=10) as client:
            started = time.monotonic()
            serial = await client.publish(FENCED, "after the fence was corrupted")
            assert serial == PUBLISHED + 1, serial
            assert time.monotonic() - started < 10
            assert await _history(client, FENCED, after=0) == list(range(1, PUBLISHED + 2))

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert _totals(damaged_cluster)["channel:ringcast_replica_faults_total[fenced_out][a]"] >= 1
