"""python -m services.placement --id placement-1 --listen 127.0.0.1:7001 --etcd 127.0.0.1:2379"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

import grpc

from services.common import probes, tls
from services.common.etcd import Etcd
from services.common.server import env_default, run_service, serve
from services.internal.v1 import placement_service_pb2, placement_service_pb2_grpc
from services.placement.server import PlacementServicer, RingBroadcast, follow_membership

log = logging.getLogger("ringcast.placement")


async def main(arguments: argparse.Namespace) -> None:
    broadcast = RingBroadcast()
    probes.set_readiness(lambda: "" if broadcast.current is not None else "membership not read from etcd yet")
    etcd = await Etcd.connect(arguments.etcd)
    following: asyncio.Task[None] | None = None
    failed = False

    def on_following_done(task: asyncio.Task[None]) -> None:
        # follow_membership only ends by cancellation; anything else is a bug, and a placement
        # process that no longer follows membership must not go on serving an old ring.
        nonlocal failed
        if not task.cancelled() and task.exception() is not None:
            failed = True
            log.critical("following membership failed; stopping", exc_info=task.exception())
            os.kill(os.getpid(), signal.SIGTERM)

    def register(server: grpc.aio.Server) -> list[str]:
        placement_service_pb2_grpc.add_PlacementServiceServicer_to_server(PlacementServicer(broadcast, etcd), server)
        return [placement_service_pb2.DESCRIPTOR.services_by_name["PlacementService"].full_name]

    async def ready() -> None:
        # Serving starts at once: until membership is read, calls answer RING_UNKNOWN.
        nonlocal following
        following = asyncio.create_task(follow_membership(etcd, broadcast), name="follow-membership")
        following.add_done_callback(on_following_done)

    async def stopping() -> None:
        broadcast.close()  # End the WatchRing streams, so watchers move on now, not after the grace period.
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    try:
        await serve(arguments.listen, register, ready=ready, stopping=stopping, admission=tls.PLACEMENT)
    finally:
        await etcd.close()
    if failed:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.placement", description=__doc__)
    parser.add_argument("--id", default=env_default("ID", "placement-1"))
    parser.add_argument("--listen", default=env_default("LISTEN", "127.0.0.1:7001"))
    parser.add_argument("--etcd", default=env_default("ETCD", "127.0.0.1:2379"), help="host:port[,host:port...]")
    return parser


if __name__ == "__main__":
    run_service(build_parser, main)
