"""python -m services.gateway --id gateway-1 --listen 127.0.0.1:7301 --placement 127.0.0.1:7001
[--token-keys FILE --etcd HOST:PORT]

With --token-keys every call needs a bearer token signed by one of those keys (services/gateway/auth.py),
and with --etcd the gateway follows the revocations kept there. With --etcd it follows the
namespaces' options too (largest message, publish rate per channel, history on or off), applied
without a restart. Without --token-keys anyone may do anything: an insecure cluster, said loudly in
the log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import grpc

from ringcast.v1 import realtime_service_pb2, realtime_service_pb2_grpc
from services.common import namespaces, probes, revocations
from services.common.ring_watch import RingWatcher
from services.common.server import env_default, run_service, serve, supervise
from services.gateway.auth import Authenticator, load_keys
from services.gateway.limits import GatewayLimits, Limiter
from services.gateway.router import OwnerRouter
from services.gateway.server import RealtimeServicer

log = logging.getLogger("ringcast.gateway")


async def main(arguments: argparse.Namespace) -> None:
    watcher = RingWatcher([address for address in arguments.placement.split(",") if address])
    router = OwnerRouter(watcher)
    probes.set_readiness(router.readiness)
    auth: Authenticator | None = None
    if arguments.token_keys:
        auth = Authenticator(load_keys(arguments.token_keys))
        log.info("tokens required (%d keys: %s)", len(auth.keys), ", ".join(sorted(auth.keys)))
    else:
        log.warning("INSECURE: no --token-keys, every caller may publish, subscribe and read every channel")
    limits = GatewayLimits(
        client_publish_rate=arguments.client_publish_rate,
        channel_publish_rate=arguments.channel_publish_rate,
        client_subscriptions=arguments.client_subscriptions,
    )
    servicer = RealtimeServicer(router, auth=auth, limiter=Limiter(limits))
    etcd = None
    following: list[asyncio.Task[None]] = []

    def register(server: grpc.aio.Server) -> list[str]:
        realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(servicer, server)
        return [realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name]

    async def ready() -> None:
        nonlocal etcd
        supervise(watcher.start(), "the ring watcher")
        if arguments.etcd:
            from services.common.etcd import Etcd

            etcd = await Etcd.connect(arguments.etcd)
            following.append(
                supervise(
                    asyncio.create_task(namespaces.follow(etcd, servicer.set_namespaces), name="namespaces"),
                    "following the namespaces",
                )
            )
            if auth is not None:
                following.append(
                    supervise(
                        asyncio.create_task(revocations.follow(etcd, auth.revoked), name="revocations"),
                        "following the revocations",
                    )
                )
        await watcher.wait_ready(arguments.ring_wait)

    async def closed() -> None:
        await servicer.feeds.close()
        await servicer.presence.close_all()
        await watcher.stop()
        await router.close()
        for task in following:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if etcd is not None:
            await etcd.close()

    await serve(arguments.listen, register, ready=ready, closed=closed, client_certificates=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
    parser.add_argument("--id", default=env_default("ID", "gateway-1"))
    parser.add_argument("--listen", default=env_default("LISTEN", "127.0.0.1:7301"))
    parser.add_argument("--placement", default=env_default("PLACEMENT", "127.0.0.1:7001"))
    parser.add_argument(
        "--token-keys",
        default=env_default("TOKEN_KEYS", ""),
        help="the keys tokens are checked with (JSON keyset); empty: no tokens, insecure",
    )
    parser.add_argument(
        "--etcd",
        default=env_default("ETCD", ""),
        help="etcd endpoints, to follow namespaces' options and (with --token-keys) token revocations",
    )
    defaults = GatewayLimits()
    parser.add_argument(
        "--client-publish-rate",
        type=float,
        default=float(env_default("CLIENT_PUBLISH_RATE", str(defaults.client_publish_rate))),
        help="messages per second a client may publish here unless its token says (0: no limit)",
    )
    parser.add_argument(
        "--channel-publish-rate",
        type=float,
        default=float(env_default("CHANNEL_PUBLISH_RATE", str(defaults.channel_publish_rate))),
        help="messages per second one channel may take through this gateway (0: no limit)",
    )
    parser.add_argument(
        "--client-subscriptions",
        type=int,
        default=int(env_default("CLIENT_SUBSCRIPTIONS", str(defaults.client_subscriptions))),
        help="subscriptions a client may hold here at once unless its token says (0: no limit)",
    )
    parser.add_argument(
        "--ring-wait", type=float, default=30.0, help="seconds to wait for the first ring before serving"
    )
    return parser


if __name__ == "__main__":
    run_service(build_parser, main)
