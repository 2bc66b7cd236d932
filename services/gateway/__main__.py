"""python -m services.gateway --id gateway-1 --listen 127.0.0.1:7301 --placement 127.0.0.1:7001"""

from __future__ import annotations

import argparse

import grpc

from ringcast.v1 import realtime_service_pb2, realtime_service_pb2_grpc
from services.common.ring_watch import RingWatcher
from services.common.server import env_default, run_service, serve, supervise
from services.gateway.server import OwnerRouter, RealtimeServicer


async def main(arguments: argparse.Namespace) -> None:
    watcher = RingWatcher([address for address in arguments.placement.split(",") if address])
    router = OwnerRouter(watcher)

    servicer = RealtimeServicer(router)

    def register(server: grpc.aio.Server) -> list[str]:
        realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(servicer, server)
        return [realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name]

    async def ready() -> None:
        supervise(watcher.start(), "the ring watcher")
        await watcher.wait_ready(arguments.ring_wait)

    async def closed() -> None:
        await servicer.feeds.close()
        await watcher.stop()
        await router.close()

    await serve(arguments.listen, register, ready=ready, closed=closed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
    parser.add_argument("--id", default=env_default("ID", "gateway-1"))
    parser.add_argument("--listen", default=env_default("LISTEN", "127.0.0.1:7301"))
    parser.add_argument("--placement", default=env_default("PLACEMENT", "127.0.0.1:7001"))
    parser.add_argument(
        "--ring-wait", type=float, default=30.0, help="seconds to wait for the first ring before serving"
    )
    return parser


if __name__ == "__main__":
    run_service(build_parser, main)
