"""The gateway's router gives up on a call to an owner the ring no longer names (OwnerRouter), with a
real RingWatcher fed rings the way placement's stream would, and the calls made by the test."""

from __future__ import annotations

import asyncio

import pytest

from services.common.ring_watch import RingWatcher
from services.gateway.router import OwnerLink, OwnerRouter
from services.internal.v1 import placement_service_pb2 as placement_pb2


def ring(version: int, *members: str) -> placement_pb2.Ring:
    return placement_pb2.Ring(
        version=version,
        members=[
            placement_pb2.Member(id=member, address=f"127.0.0.1:{9_000 + index}")
            for index, member in enumerate(members)
        ],
    )


def a_channel_owned_by(watcher: RingWatcher, owner: str) -> str:
    view = watcher.ring
    assert view is not None
    return next(f"ch-{n}" for n in range(1_000) if view.ring.owner(f"ch-{n}") == owner)


def test_a_call_to_an_owner_the_ring_moved_the_channel_off_is_given_up_and_sent_to_the_new_one() -> None:
    async def main() -> None:
        watcher = RingWatcher(["127.0.0.1:1"])  # never started: the test hands it rings
        router = OwnerRouter(watcher)
        watcher._apply(ring(1, "n1", "n2"))
        channel = a_channel_owned_by(watcher, "n2")
        asked: list[str] = []

        async def attempt(link: OwnerLink, timeout: float) -> str:
            asked.append(link.address)
            if len(asked) == 1:
                watcher._apply(ring(2, "n1"))  # n2 left: the stuck call must not wait for its timeout
                await asyncio.Event().wait()
            return link.address

        answered_by = await asyncio.wait_for(router.call(channel, asyncio.get_running_loop().time() + 30, attempt), 10)
        assert asked == ["127.0.0.1:9001", "127.0.0.1:9000"] and answered_by == "127.0.0.1:9000"
        assert router._watching == {}
        await router.close()

    asyncio.run(main())


def test_a_caller_cancelled_while_its_channel_moves_is_still_cancelled() -> None:
    """The router's own cancellation becomes a retry; anyone else's stays a cancellation."""

    async def main() -> None:
        watcher = RingWatcher(["127.0.0.1:1"])
        router = OwnerRouter(watcher)
        watcher._apply(ring(1, "n1", "n2"))
        channel = a_channel_owned_by(watcher, "n2")
        calling = asyncio.Event()

        async def attempt(link: OwnerLink, timeout: float) -> str:
            calling.set()
            await asyncio.Event().wait()
            return link.address

        call = asyncio.ensure_future(router.call(channel, asyncio.get_running_loop().time() + 30, attempt))
        await calling.wait()
        call.cancel()
        watcher._apply(ring(2, "n1"))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 10)
        assert router._watching == {}
        await router.close()

    asyncio.run(main())
