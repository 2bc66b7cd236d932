"""Presence cost: how fast members enter and leave one channel, and what a large room costs.

`presence_room` enters `members` members into one channel with plain gRPC (one EnterPresence
stream per member, held open, spread over the gateways, `inflight` enters at a time), then reads
the set (GetPresence), syncs it (SubscribePresence), reads occupancy (GetChannel), and makes every
member leave (LeavePresence, `inflight` at a time). It reports rates and latencies with the owner's
resident memory; nothing is asserted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import grpc

from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.bench.memory import resident_mib
from ringcast_tools.cluster.launcher import Launcher

enters_inflight_max = 200
"""Enters (and leaves) in flight at once."""

streams_per_connection = 500
"""Members' EnterPresence streams per client connection."""


async def presence_room(
    launcher: Launcher, members: int, say: Callable[[str], None], inflight: int = enters_inflight_max
) -> dict[str, object]:
    gateways = launcher.topology.gateways
    # A connection carries at most 1,000 streams (the gateways' bound): one per 500 members, as
    # many clients would have.
    connections = max(1, -(-members // streams_per_connection))
    links = [
        grpc.aio.insecure_channel(gateways[index % len(gateways)], options=[("grpc.use_local_subchannel_pool", 1)])
        for index in range(max(connections, len(gateways)))
    ]
    stubs = [realtime_grpc.RealtimeServiceStub(link) for link in links]
    channel = f"bench-room-{uuid.uuid4().hex[:6]}"
    gate = asyncio.Semaphore(inflight)
    held: list[grpc.aio.UnaryStreamCall] = []
    enter_ms: list[float] = []

    async def enter(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            call = stubs[index % len(stubs)].EnterPresence(
                realtime_pb2.EnterPresenceRequest(
                    channel=channel, client_id=f"member-{index}", connection_id=f"c{index}", data=b"x" * 32
                )
            )
            first = await call.read()
            assert first is not grpc.aio.EOF and first.serial, f"member {index} was not entered"
            enter_ms.append((time.perf_counter() - started) * 1000)
            held.append(call)

    async def leave(index: int) -> None:
        async with gate:
            await stubs[index % len(stubs)].LeavePresence(
                realtime_pb2.LeavePresenceRequest(
                    channel=channel, client_id=f"member-{index}", connection_id=f"c{index}"
                ),
                timeout=30,
            )

    try:
        say(
            f"presence: {members} members entering {channel} ({inflight} at a time, over {len(gateways)} gateways "
            f"and {len(links)} client connections)"
        )
        before = resident_mib(launcher)
        started = time.monotonic()
        await asyncio.gather(*(enter(index) for index in range(members)))
        entered_s = time.monotonic() - started
        after = resident_mib(launcher)
        api = stubs[0]
        started = time.perf_counter()
        present = await api.GetPresence(realtime_pb2.GetPresenceRequest(channel=channel), timeout=60)
        get_ms = (time.perf_counter() - started) * 1000
        assert len(present.members) == members, (len(present.members), members)
        started = time.perf_counter()
        synced = 0
        watch = api.SubscribePresence(realtime_pb2.SubscribePresenceRequest(channel=channel, sync=True))
        async for response in watch:
            synced += len(response.sync.members)
            if response.sync.complete:
                break
        watch.cancel()
        sync_ms = (time.perf_counter() - started) * 1000
        state = await api.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=30)
        started = time.monotonic()
        await asyncio.gather(*(leave(index) for index in range(members)))
        left_s = time.monotonic() - started
        owner = state.owner
        enter_ms.sort()
        return {
            "members": members,
            "inflight": inflight,
            "enters_per_s": round(members / entered_s),
            "enter_p50_ms": round(enter_ms[len(enter_ms) // 2], 1),
            "enter_p99_ms": round(enter_ms[int(len(enter_ms) * 0.99)], 1),
            "get_presence_ms": round(get_ms, 1),
            "sync_ms": round(sync_ms, 1),
            "synced_members": synced,
            "occupancy_members": int(state.occupancy.members),
            "leaves_per_s": round(members / left_s),
            "owner": owner,
            "owner_bytes_per_member": round((after.get(owner, 0) - before.get(owner, 0)) * 1024 * 1024 / members),
            "gateway_bytes_per_member": round(
                sum(after.get(spec.name, 0) - before.get(spec.name, 0) for spec in launcher.topology.by_role("gateway"))
                * 1024
                * 1024
                / members
            ),
        }
    finally:
        for call in held:
            call.cancel()
        for link in links:
            await link.close()
