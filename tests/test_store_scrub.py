"""The store's background scrub keeps to its rate however its entries are spread over channels.

An in-process StoreService over real SQLite; the scrub's pauses are recorded instead of slept.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.core.entries import ORIGIN, Entry, Message
from services.core.replica_log import ReplicaLog
from services.store import server as store_server


def test_a_scrub_over_many_short_channels_keeps_to_its_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    channels, rate = 200, 3_200.0
    paused: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        paused.append(delay)
        await sleep(0)

    async def main() -> int:
        service = store_server.StoreService(str(tmp_path), scrub_entries_per_s=0)
        try:

            def write(replica: ReplicaLog) -> None:
                for index in range(channels):
                    channel = f"short-{index}"
                    replica.fence(channel, 1)
                    replica.append(channel, 1, ORIGIN, [Entry.make(1, 1, Message(id=f"m{index}", data=b"x"))])

            await service.writer.submit(write)
            monkeypatch.setattr(store_server.asyncio, "sleep", recorded)
            return await service.scrub_pass(rate)
        finally:
            monkeypatch.undo()
            await service.close()

    assert asyncio.run(main()) == 0  # nothing damaged
    # One entry per channel is 200 entries, 1/16 s at the rate; but each channel is a read of its
    # own, and a read costs the budget as much as `scrub_read_cost_entries`: 2 s, not a burst.
    assert len(paused) >= channels
    assert sum(paused) >= channels * store_server.scrub_read_cost_entries / rate * 0.99
