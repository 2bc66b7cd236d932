"""The fan-out workload: many subscribers on one channel, one publisher, and a judge of liveness.

Subscribers run in worker processes (a few hundred SDK subscriptions each, spread over the given
gateways), so that what is measured is the platform, not one client process's event loop. The
publisher (in the calling process) publishes batches of messages to one channel at a steady pace;
an optional fault is injected once a share of the messages is acknowledged. Each subscription
records how many messages it received, whether any came twice or out of order (the SDK raises on a
gap), and the longest time it went without a message while a newer serial was already acknowledged
— "stalled": waiting behind with neither data nor an error. At the end every subscription must hold
every acknowledged serial, in order, once.

The run starts with a join: the publisher publishes one batch and waits (up to `join_s_max`) until
every subscriber has it, and stalls are counted only after that. A thousand subscriptions starting
at once on two cores take seconds to get their first message (the client processes are the ones
behind: each reads a quarter of 1,000 copies of every batch); that is reported as `joined_s`, apart
from the stalls the faults under test cause.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.sharedctypes
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ringcast


@dataclass(frozen=True, slots=True)
class FanoutConfig:
    channel: str = "fanout"
    subscribers: int = 1_000
    processes: int = 4
    message_bytes: int = 2_048
    batch: int = 100
    interval_s: tuple[float, float] = (0.3, 0.4)
    messages: int = 3_000
    fault_at: float = 0.34
    """The share of `messages` acknowledged when the fault is injected."""
    catch_up_s: float = 300.0
    """How long subscribers may take, after the last acknowledgement, to reach it."""
    join_s_max: float = 120.0
    """How long the publisher waits, after its first batch, for every subscriber to have it."""


@dataclass(slots=True)
class SubscriberResult:
    last: int = 0
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    stalled_s: float = 0.0
    stalled_from: float = 0.0
    """When the longest stall began (Unix time)."""
    resumes: int = 0
    """How many times the subscription resumed (the SDK's count)."""
    caught_up_s: float | None = None
    """From the last acknowledgement to this subscriber receiving it."""
    error: str = ""


@dataclass(slots=True)
class FanoutReport:
    acked_last: int
    publish_s: float
    fault: str
    joined_s: float
    """From the first batch's acknowledgement to every subscriber having it (or `join_s_max`)."""
    results: list[SubscriberResult] = field(default_factory=list)

    @property
    def incomplete(self) -> list[int]:
        return [index for index, result in enumerate(self.results) if result.last != self.acked_last]

    @property
    def broken(self) -> list[int]:
        return [
            index
            for index, result in enumerate(self.results)
            if result.duplicates or result.out_of_order or result.error or result.received != self.acked_last
        ]

    @property
    def stalled_s_max(self) -> float:
        return max((result.stalled_s for result in self.results), default=0.0)

    @property
    def caught_up_s(self) -> float | None:
        """From the last acknowledgement to the last subscriber having it (None if one never did)."""
        times = [result.caught_up_s for result in self.results]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def summary(self) -> str:
        stall = ""
        if self.results:
            worst = max(range(len(self.results)), key=lambda index: self.results[index].stalled_s)
            result = self.results[worst]
            began = time.strftime("%H:%M:%S", time.gmtime(result.stalled_from)) + f"{result.stalled_from % 1:.3f}"[1:]
            stall = f" (subscriber {worst} from {began} UTC, resumed {result.resumes} times)"
        return (
            f"subscribers={len(self.results)} joined_in={self.joined_s:.1f}s acked={self.acked_last} "
            f"published_in={self.publish_s:.1f}s "
            f"fault={self.fault} incomplete={len(self.incomplete)} broken={len(self.broken)} "
            f"longest_stall={self.stalled_s_max:.1f}s{stall} last_caught_up_after={self.caught_up_s}"
        )


def _worker(
    gateways: Sequence[str],
    config: FanoutConfig,
    first: int,
    count: int,
    acked: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    acked_at: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    final: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    joined: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    joined_at: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    ready: multiprocessing.synchronize.Event,
    results: multiprocessing.queues.Queue[tuple[int, list[SubscriberResult]]],
) -> None:
    async def main() -> list[SubscriberResult]:
        own = [SubscriberResult() for _ in range(count)]
        seen_at = [0.0] * count
        clients = [ringcast.Client(list(gateways[index:]) + list(gateways[:index])) for index in range(len(gateways))]

        async def follow(index: int) -> None:
            result = own[index]
            subscription = clients[(first + index) % len(clients)].subscribe(config.channel, after=0)
            try:
                async for message in subscription:
                    now = time.time()
                    if message.serial <= result.last:
                        result.duplicates += 1
                        continue
                    if message.serial != result.last + 1:
                        result.out_of_order += 1
                    result.last, result.received = message.serial, result.received + 1
                    seen_at[index] = now
                    if result.received == 1:
                        with joined.get_lock():
                            joined.value += 1
                    if final.value and result.last >= final.value and result.caught_up_s is None:
                        result.caught_up_s = max(0.0, now - acked_at.value)
                        return
            except Exception as error:  # noqa: BLE001 - reported, judged by the caller
                result.error = repr(error)[:300]
            finally:
                result.resumes = subscription.resumes
                await subscription.close()

        async def watch() -> None:
            # Stalled: behind the newest acknowledgement, and nothing received since the last receipt
            # or the end of the join, whichever is later (so it may include up to one publishing
            # interval before the next batch).
            while True:
                await asyncio.sleep(0.25)
                now, newest, last, counting_from = time.time(), acked.value, final.value, joined_at.value
                for index, result in enumerate(own):
                    if last and result.last >= last and result.caught_up_s is None:
                        result.caught_up_s = max(0.0, seen_at[index] - acked_at.value)  # before the end was known
                    elif counting_from and result.last < newest and result.caught_up_s is None and not result.error:
                        since = max(seen_at[index], counting_from)
                        if now - since > result.stalled_s:
                            result.stalled_s, result.stalled_from = now - since, since

        tasks = [asyncio.create_task(follow(index)) for index in range(count)]
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.5)
        ready.set()
        deadline = time.time() + 3_600
        while time.time() < deadline:
            if final.value and all(r.caught_up_s is not None or r.error for r in own):
                break
            if final.value and time.time() - acked_at.value > config.catch_up_s:
                break
            await asyncio.sleep(0.2)
        watcher.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close(flush=False)
        return own

    results.put((first, asyncio.run(main())))


def run_fanout(gateways: Sequence[str], config: FanoutConfig, fault: Callable[[], str] | None = None) -> FanoutReport:
    """Run the workload; `fault` (called once, at `config.fault_at`) breaks something and says what."""
    context = multiprocessing.get_context("spawn")
    acked = context.Value("q", 0)
    acked_at = context.Value("d", 0.0)
    final = context.Value("q", 0)
    joined = context.Value("q", 0)
    joined_at = context.Value("d", 0.0)
    results: multiprocessing.queues.Queue[tuple[int, list[SubscriberResult]]] = context.Queue()
    per = -(-config.subscribers // config.processes)
    workers, events = [], []
    for first in range(0, config.subscribers, per):
        ready = context.Event()
        count = min(per, config.subscribers - first)
        process = context.Process(
            target=_worker,
            args=(list(gateways), config, first, count, acked, acked_at, final, joined, joined_at, ready, results),
            daemon=True,
        )
        process.start()
        workers.append(process)
        events.append(ready)
    for ready in events:
        ready.wait(60)
    report = asyncio.run(_publish(gateways, config, fault, acked, acked_at, final, joined, joined_at))
    collected: dict[int, list[SubscriberResult]] = {}
    for _ in workers:
        first, own = results.get(timeout=config.catch_up_s + 120)
        collected[first] = own
    for process in workers:
        process.join(30)
    report.results = [result for first in sorted(collected) for result in collected[first]]
    return report


async def _publish(
    gateways: Sequence[str],
    config: FanoutConfig,
    fault: Callable[[], str] | None,
    acked: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    acked_at: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    final: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    joined: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
    joined_at: multiprocessing.sharedctypes.Synchronized,  # type: ignore[type-arg]
) -> FanoutReport:
    data = os.urandom(config.message_bytes)
    faulted = ""
    started = time.time()
    joined_s = 0.0
    async with ringcast.Client(list(gateways), timeout_s=60) as publisher:
        serial, sequence = 0, 0
        while serial < config.messages:
            sequence += 1
            batch = [ringcast.OutgoingMessage(data, id=f"fanout-{sequence}-{n}") for n in range(config.batch)]
            serial = max(await publisher.publish_many(config.channel, batch))
            acked.value, acked_at.value = serial, time.time()
            if sequence == 1:
                while joined.value < config.subscribers and time.time() - acked_at.value < config.join_s_max:
                    await asyncio.sleep(0.1)
                joined_s, joined_at.value = time.time() - acked_at.value, time.time()
            if fault is not None and not faulted and serial >= config.messages * config.fault_at:
                faulted = await asyncio.to_thread(fault)
            await asyncio.sleep(random.uniform(*config.interval_s))
    final.value = serial
    return FanoutReport(serial, time.time() - started, faulted or "none", joined_s)
