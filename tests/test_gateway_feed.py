"""The gateway's owner-stream reads (services/gateway/feed.py) against grpc.aio's ways of ending."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import grpc
import pytest

from services.gateway import feed


class EndedWhileCancelled(grpc.RpcError):
    """What grpc.aio raises from a read cancelled while its call was ending: the call's status."""


class EndingCall:
    """An owner stream whose pending read, when cancelled, ends with the call's error instead of
    CancelledError (grpc.aio's `read` does this when the status arrives as it is cancelled)."""

    def __init__(self) -> None:
        self.gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def read(self) -> Any:
        try:
            await self.gate
        except asyncio.CancelledError:
            raise EndedWhileCancelled() from None


def test_a_read_abandoned_when_the_ring_moves_the_channel_is_never_left_unretrieved() -> None:
    unretrieved: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unretrieved.append(context))
        moved = asyncio.Event()
        moved.set()
        with pytest.raises(feed._OwnerSilent):
            await feed._next(EndingCall(), moved)  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    asyncio.run(scenario())
    gc.collect()
    assert not unretrieved, [context.get("message") for context in unretrieved]


def test_a_read_that_failed_as_the_follower_was_cancelled_is_never_left_unretrieved() -> None:
    """The owner's socket closes (the read fails) in the same turn as the ring moves the channel
    and the follower is cancelled: nobody reads the failed read's result, and asyncio must not log it."""
    unretrieved: list[dict[str, Any]] = []

    class FailingCall:
        async def read(self) -> Any:
            raise EndedWhileCancelled()

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unretrieved.append(context))
        follower = asyncio.create_task(feed._next(FailingCall(), asyncio.Event()))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the follower starts its read and waits
        follower.cancel()  # ...and is cancelled in the turn the read fails
        with pytest.raises(asyncio.CancelledError):
            await follower
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    asyncio.run(scenario())
    gc.collect()
    assert not unretrieved, [context.get("message") for context in unretrieved]
