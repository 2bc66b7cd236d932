"""The benchmark workloads, written once against `Target` so that ringcast and the system it is
compared with run exactly the same code, in the same process, with the same kind of client.

Each workload returns a flat dict of numbers with the conditions they were measured under, plus
`samples_ms` (latencies, for the plots). Nothing here asserts anything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import struct
import time
from collections.abc import AsyncIterator
from typing import Protocol

failover_wait_s_max = 60.0
"""How long the failover workload waits for every channel to be acknowledged again."""

inflight_max = 10_000
"""Publishes an open-loop workload may have in flight before it stops issuing (and says so)."""


class Target(Protocol):
    name: str

    async def publish(self, channel: str, data: bytes) -> None: ...

    async def publish_batch(self, channel: str, datas: list[bytes]) -> None: ...

    def subscribe(self, channel: str) -> AsyncIterator[bytes]: ...

    async def kill_busiest(self, channels: list[str]) -> str: ...

    async def restore(self) -> None: ...


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(latencies_s: list[float]) -> dict[str, object]:
    ordered = sorted(value * 1000 for value in latencies_s)
    return {
        "p50_ms": round(percentile(ordered, 0.50), 3),
        "p99_ms": round(percentile(ordered, 0.99), 3),
        "mean_ms": round(statistics.fmean(ordered), 3) if ordered else None,
        "samples_ms": [round(value, 3) for value in ordered],
    }


async def throughput(
    target: Target, *, publishers: int, seconds: float, channels: list[str], size: int, batch: int = 1
) -> dict[str, object]:
    """`publishers` concurrent loops, each publishing `batch` messages and awaiting the ack."""
    payload = b"x" * size
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    stop_at = time.monotonic() + seconds

    async def publisher(index: int) -> None:
        channel = channels[index % len(channels)]
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                if batch == 1:
                    await target.publish(channel, payload)
                else:
                    await target.publish_batch(channel, [payload] * batch)
            except Exception as error:  # counted and reported, never hidden
                errors[type(error).__name__] += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(publisher(index) for index in range(publishers)))
    elapsed = time.monotonic() - started
    return {
        "workload": "throughput" if batch == 1 else "throughput_batch",
        "publishers": publishers,
        "batch": batch,
        "message_bytes": size,
        "channels": len(channels),
        "seconds": round(elapsed, 2),
        "msgs_per_s": round(len(latencies) * batch / elapsed, 1),
        "errors": dict(errors),
        **summary(latencies),
    }


async def sequential(target: Target, *, count: int, channel: str, size: int) -> dict[str, object]:
    """One publisher, one message at a time: each publish→ack on its own."""
    payload = b"x" * size
    latencies: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        await target.publish(channel, payload)
        latencies.append(time.perf_counter() - started)
    return {"workload": "sequential", "publishes": count, "message_bytes": size, **summary(latencies)}


_stamp = struct.Struct("<q")


async def end_to_end(target: Target, *, rate_per_s: int, seconds: float, channel: str, size: int) -> dict[str, object]:
    """Publish→deliver latency at a fixed rate: publishes are issued on a schedule without waiting
    for acks (open loop, so a slow ack does not hide latency), and a subscriber on the same channel
    measures, for each message, the time from its publish call to its delivery."""
    padding = b"x" * max(0, size - _stamp.size)
    latencies: list[float] = []
    received = asyncio.Event()
    measuring = False

    async def subscriber() -> None:
        async for data in target.subscribe(channel):
            sent_ns = _stamp.unpack_from(data)[0]
            received.set()
            if measuring and sent_ns:
                latencies.append((time.perf_counter_ns() - sent_ns) / 1e9)

    following = asyncio.create_task(subscriber())
    # The subscription is in place once a message published now comes through.
    while not received.is_set():
        await target.publish(channel, _stamp.pack(0) + padding)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(received.wait(), 1.0)
    measuring = True
    pending: set[asyncio.Task[None]] = set()
    errors: collections.Counter[str] = collections.Counter()

    def finished(task: asyncio.Task[None]) -> None:
        """Every publish's outcome is counted (an error is retrieved here, not left to the loop's log)."""
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            errors[type(task.exception()).__name__] += 1

    total = int(rate_per_s * seconds)
    skipped = 0
    started = time.perf_counter()
    for index in range(total):
        delay = started + index / rate_per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= inflight_max:
            skipped += 1
            continue
        task = asyncio.create_task(target.publish(channel, _stamp.pack(time.perf_counter_ns()) + padding))
        pending.add(task)
        task.add_done_callback(finished)
    await asyncio.gather(*pending, return_exceptions=True)
    deadline = time.monotonic() + 10.0
    while len(latencies) < total - skipped - sum(errors.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    following.cancel()
    return {
        "workload": "end_to_end",
        "rate_per_s": rate_per_s,
        "seconds": seconds,
        "message_bytes": size,
        "published": total - skipped,
        "delivered": len(latencies),
        "skipped_inflight_max": skipped,
        "errors": dict(errors),
        **summary(latencies),
    }


async def failover(target: Target, *, channels: list[str], steady_s: float = 2.0) -> dict[str, object]:
    """One publisher per channel, publishing in a loop; the node serving the most of them is killed
    (SIGKILL). The gap is, over all channels, the longest time from the kill to the first ack of a
    publish issued after it."""
    killed_at: float | None = None
    recovered: dict[str, float] = {}
    stop = asyncio.Event()

    async def publisher(channel: str) -> None:
        while not stop.is_set():
            invoked = time.monotonic()
            try:
                await target.publish(channel, b"x")
            except Exception:
                continue
            if killed_at is not None and invoked >= killed_at and channel not in recovered:
                recovered[channel] = time.monotonic() - killed_at
                if len(recovered) == len(channels):
                    stop.set()

    tasks = [asyncio.create_task(publisher(channel)) for channel in channels]
    await asyncio.sleep(steady_s)
    victim = await target.kill_busiest(channels)
    killed_at = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), failover_wait_s_max)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await target.restore()
    gaps = sorted(recovered.values())
    return {
        "workload": "failover",
        "killed": victim,
        "channels": len(channels),
        "recovered": len(gaps),
        "gap_s": round(gaps[-1], 3) if len(gaps) == len(channels) else None,
        "gap_median_s": round(statistics.median(gaps), 3) if gaps else None,
    }
