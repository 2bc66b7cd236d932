"""Coalescing requests to one peer into few RPCs, without adding delay.

A `Batcher` sends what it is given while fewer than `inflight_max` RPCs are in flight; what arrives
meanwhile waits and goes together in the next RPC (up to `per_call_max` requests). An RPC takes its
requests when its task starts, one turn of the event loop after the first of them was added, so the
requests added in the same turn (the append rounds of every channel a burst of publishes touched)
go together even when nothing is in flight. Under light load every request is its own RPC (no
linger, no timer); under heavy load the batches grow with the round trip, so the RPC rate to a peer
stays bounded while the request rate climbs.
Channel nodes talk to store replicas this way: in Python gRPC a call costs far more than a request
in it. (Publishes, which must not wait for each other, use a stream instead: `ringcast.pipe`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")


class Batcher(Generic[Request]):
    """Coalesces one kind of request to one peer (see the module docstring)."""

    def __init__(self, call: Callable[[list[Request]], Awaitable[None]], per_call_max: int, inflight_max: int) -> None:
        """`call` gets each batch and must settle every request in it."""
        self.call = call
        self.per_call_max = per_call_max
        self.inflight_max = inflight_max
        self.waiting: list[Request] = []
        self.inflight = 0
        self._starting = 0  # RPC tasks created that have not yet taken their requests
        self._tasks: set[asyncio.Task[None]] = set()  # held so a running call is never collected

    def add(self, request: Request) -> None:
        self.waiting.append(request)
        self._flush()

    def _flush(self) -> None:
        while self.inflight < self.inflight_max and len(self.waiting) > self._starting * self.per_call_max:
            self.inflight += 1
            self._starting += 1
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        self._starting -= 1
        batch = self.waiting[: self.per_call_max]
        del self.waiting[: self.per_call_max]
        try:
            if batch:
                await self.call(batch)
        finally:
            self.inflight -= 1
            self._flush()
