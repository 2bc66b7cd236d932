"""python -m services.channel --id channel-1 --listen 127.0.0.1:7201 --etcd 127.0.0.1:2379 \\
       --placement 127.0.0.1:7001 --stores a=127.0.0.1:7101,b=127.0.0.1:7102,c=127.0.0.1:7103"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import deque

import grpc

from services.channel.node_adapter import ChannelNodeAdapter
from services.channel.presence import PresenceKeeper
from services.channel.server import ChannelServicer
from services.common import namespaces, probes, tls
from services.common.etcd import Etcd, MemberRecord
from services.common.registration import Registration
from services.common.ring_watch import RingWatcher
from services.common.server import deliberate_bugs, env_default, not_serving, run_service, serve, supervise
from services.internal.v1 import channel_service_pb2, channel_service_pb2_grpc

log = logging.getLogger("ringcast.channel")

quarantine_memory_s = 600.0
"""Quarantines this recent make the next one longer."""

quarantine_doublings_max = 5
"""A quarantine lasts at most 2 ** this times --quarantine."""


def parse_stores(text: str) -> dict[str, str]:
    stores = {}
    for item in filter(None, text.split(",")):
        zone, _, address = item.partition("=")
        if not zone or not address:
            raise SystemExit(f"--stores: expected zone=host:port, got {item!r}")
        stores[zone.strip()] = address.strip()
    if len(stores) < 3:
        raise SystemExit("--stores: three zones are needed (a quorum of 2 out of 3)")
    return stores


async def main(arguments: argparse.Namespace) -> None:
    node = ChannelNodeAdapter(arguments.id, parse_stores(arguments.stores), bugs=deliberate_bugs())
    watcher = RingWatcher([address for address in arguments.placement.split(",") if address])
    probes.set_readiness(node.readiness)
    etcd: Etcd | None = None
    registration: Registration | None = None

    presence = PresenceKeeper(node)
    following: asyncio.Task[None] | None = None

    def register(server: grpc.aio.Server) -> list[str]:
        channel_service_pb2_grpc.add_ChannelServiceServicer_to_server(ChannelServicer(node, presence), server)
        return [channel_service_pb2.DESCRIPTOR.services_by_name["ChannelService"].full_name]

    async def join() -> Registration:
        assert etcd is not None
        return await Registration.start(
            etcd,
            MemberRecord(kind="channel", id=arguments.id, address=arguments.advertise or arguments.listen),
            ttl_s=arguments.lease_ttl,
            on_registered=node.on_registered,
            on_lease=node.on_lease,
            on_lost=node.on_lost,
            floor=node.core.begin_registration,
            on_failed=lambda error: not_serving(f"keeping the etcd registration failed: {error!r}"),
        )

    async def ready() -> None:
        nonlocal etcd, registration, following
        supervise(await node.start(), "the channel node's ticker")
        watcher.subscribe(node.on_ring)
        supervise(watcher.start(), "the ring watcher")
        etcd = await Etcd.connect(arguments.etcd)
        following = supervise(
            asyncio.create_task(namespaces.follow(etcd, presence.set_namespaces), name="namespaces"),
            "following the namespaces",
        )
        registration = await join()

    quarantined = False
    quarantines: deque[float] = deque(maxlen=quarantine_doublings_max)

    async def quarantine(reason: str) -> None:
        """Alive but failing: leave the ring so the channels move elsewhere, then come back later.
        Each quarantine within `quarantine_memory_s` of the last ones lasts twice as long (up to
        2 ** quarantine_doublings_max times the base), so a fault that outlasts it costs the channels
        a shorter and shorter share of their time, instead of a flap every quarantine."""
        nonlocal registration, quarantined
        if registration is None:
            return
        loop = asyncio.get_running_loop()
        while quarantines and loop.time() - quarantines[0] > quarantine_memory_s:
            quarantines.popleft()
        duration_s = arguments.quarantine * 2 ** len(quarantines)
        quarantines.append(loop.time())
        log.warning("unhealthy (%s): leaving the ring for %.0f s", reason, duration_s)
        await registration.stop()
        node.on_lost()
        await asyncio.sleep(duration_s)
        registration = await join()
        quarantined = False
        log.info("rejoined the ring after quarantine")

    def on_unhealthy(reason: str) -> None:
        nonlocal quarantined
        if not quarantined:
            quarantined = True
            asyncio.create_task(quarantine(reason))

    node.on_unhealthy = on_unhealthy

    async def closed() -> None:
        await presence.close()
        if following is not None:
            following.cancel()
        await node.close()
        await watcher.stop()
        if etcd is not None:
            await etcd.close()

    async def stopping() -> None:
        if registration is not None:
            await registration.stop()  # leave the ring first, so the channels move at once
        node.begin_shutdown()

    await serve(arguments.listen, register, ready=ready, stopping=stopping, closed=closed, admission=tls.CHANNEL)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.channel", description=__doc__)
    parser.add_argument("--id", default=env_default("ID", "channel-1"))
    parser.add_argument("--listen", default=env_default("LISTEN", "127.0.0.1:7201"))
    parser.add_argument(
        "--advertise", default=env_default("ADVERTISE", ""), help="address others dial (default: --listen)"
    )
    parser.add_argument("--etcd", default=env_default("ETCD", "127.0.0.1:2379"))
    parser.add_argument("--placement", default=env_default("PLACEMENT", "127.0.0.1:7001"))
    parser.add_argument("--stores", default=env_default("STORES", "a=127.0.0.1:7101,b=127.0.0.1:7102,c=127.0.0.1:7103"))
    parser.add_argument("--lease-ttl", type=float, default=float(env_default("LEASE_TTL", "2.0")))
    parser.add_argument(
        "--quarantine",
        type=float,
        default=float(env_default("QUARANTINE", "10.0")),
        help="seconds an unhealthy node stays out of the ring",
    )
    return parser


if __name__ == "__main__":
    run_service(build_parser, main)
