"""What every ringcast service process shares: logging, the gRPC server, health, reflection, shutdown.

A service module builds its servicers, then calls `serve(...)`, which:
- starts a grpc.aio server on `listen` with standard health checking (grpc.health.v1) and reflection;
- marks every named service SERVING once `ready` has completed;
- on SIGTERM or SIGINT marks them NOT_SERVING, runs `stopping`, and stops the server with a grace
  period (in-flight calls may finish, new ones are refused), then returns.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2  # noqa: F401 - in the descriptor pool: reflection serves ErrorInfo
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from services.common import (
    metrics,  # noqa: F401 - every process serves the families it defines
    probes,
    tls,
    tracing,
)
from services.common.decode_guard import DecodeGuard

log = logging.getLogger("ringcast")

shutdown_grace_s = 3.0
"""How long in-flight calls may run on after a stop signal."""

grpc_message_bytes_max = 8 * 1024 * 1024
"""Largest gRPC message a service accepts or sends (a 1 MiB batch, with room for framing)."""

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", grpc_message_bytes_max),
    ("grpc.max_send_message_length", grpc_message_bytes_max),
    ("grpc.so_reuseport", 0),
    # Bounds per connection: streams open at once, and the metadata of one call (a token is at most
    # 8 KiB; a larger header block is refused before any handler runs).
    ("grpc.max_concurrent_streams", 1_000),
    ("grpc.max_metadata_size", 16 * 1024),
    # Clients ping every 10 s to notice dead peers; without these the server answers GOAWAY
    # "too_many_pings" and long-lived streams (ring watches, subscriptions) break every few minutes.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", grpc_message_bytes_max),
    ("grpc.max_send_message_length", grpc_message_bytes_max),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Without this a stream to a peer that stops answering (blackholed link, SIGSTOPped process)
    # stays open until its own deadline; with it the keepalive ping ends it after ~15 s.
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.enable_retries", 0),
    # A peer dialled by name that comes back at another address (a container started again gets a
    # new IP) is found within a second; gRPC's default waits 30 s between lookups of a name, and the
    # channels a moved-back owner takes over stalled that long (found by the compose tier, #18).
    ("grpc.dns_min_time_between_resolutions_ms", 1_000),
)


def setup_logging(name: str) -> None:
    """One line per notable event, to stderr: time, level, process name, message."""
    level = os.environ.get("RINGCAST_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {name} %(message)s",
    )


def install_event_loop() -> None:
    """uvloop when available: 10-20% more gRPC throughput at high concurrency (DESIGN §8)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        pass


def env_default(name: str, default: str) -> str:
    """Flags default to RINGCAST_<NAME> environment variables, then to `default`."""
    return os.environ.get(f"RINGCAST_{name}", default)


def deliberate_bugs() -> frozenset[str]:
    """RINGCAST_BUGS: deliberate bugs to switch on (comma-separated), for the tests that show a fault
    row can fail; never set in a real deployment, and said loudly when it is."""
    bugs = frozenset(name.strip() for name in os.environ.get("RINGCAST_BUGS", "").split(",") if name.strip())
    if bugs:
        log.warning("DELIBERATE BUGS SWITCHED ON (tests only): %s", ", ".join(sorted(bugs)))
    return bugs


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""Reflection v1, served by the v1alpha servicer: the two protocols' messages are the same on the
wire (v1 only renamed the package), and tools (`buf curl`, grpcurl) ask for v1 first."""


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 with `List` (the package's servicer advertises it and answers UNIMPLEMENTED)."""

    async def List(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status) for name, status in self._server_status.items()
            }
        )


def enable_reflection(names: Sequence[str], server: grpc.aio.Server) -> None:
    """Reflection, v1 and v1alpha, over every service `names` lists (and the error details' types)."""
    listed = [*names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = ReflectionServicer(listed)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


_health: tuple[health.aio.HealthServicer, list[str]] | None = None
"""The serving process's health servicer and service names, once `serve` has made them."""

_failed = ""
"""Why this process can no longer do its job ("" while it can): health says NOT_SERVING for good."""


def not_serving(reason: str) -> None:
    """This process can no longer do its job (a background task it needs has died): health answers
    NOT_SERVING from now on, so its checks and its operators see it, and the log says why. A process
    must never report SERVING when it cannot serve."""
    global _failed
    log.critical("not serving any more: %s", reason)
    _failed = _failed or reason
    probes.set_failed(reason)
    if _health is not None:
        servicer, names = _health
        loop = asyncio.get_running_loop()
        for name in ["", *names]:
            loop.create_task(servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))


def supervise(task: asyncio.Task[Any], what: str) -> asyncio.Task[Any]:
    """`task` runs for the life of the process: if it ever ends but by cancellation, the process is
    not serving any more (`not_serving`), with the task's error in the log."""

    def ended(done: asyncio.Task[Any]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        log.critical("%s ended: %r", what, error, exc_info=error)
        not_serving(f"{what} ended: {error!r}")

    task.add_done_callback(ended)
    return task


async def serve(
    listen: str,
    register: Callable[[grpc.aio.Server], Sequence[str]],
    *,
    ready: Callable[[], Awaitable[None]] | None = None,
    stopping: Callable[[], Awaitable[None]] | None = None,
    closed: Callable[[], Awaitable[None]] | None = None,
    admission: tls.Admission = tls.OPEN,
    client_certificates: bool = True,
) -> None:
    """Run a gRPC server until SIGTERM/SIGINT. `register` adds servicers and returns their full names.

    With a TLS identity (services/common/tls.py) the port serves TLS; `client_certificates` makes
    every caller show a certificate from the cluster CA, and `admission` says which roles may call
    which methods. Without one it serves plaintext.

    On a stop signal: health turns NOT_SERVING, `stopping` runs (leave the ring, refuse new work),
    in-flight calls get `shutdown_grace_s` to finish, and only then `closed` releases what they
    used (outgoing channels), so no call in its grace period finds its links closed.
    """
    global _health
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[DecodeGuard(admission)])
    names = list(register(server))
    health_servicer = HealthServicer()
    _health = (health_servicer, names)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(names, server)
    identity = tls.identity()
    if identity is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, identity.server_credentials(client_certificates=client_certificates))
    if port == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    if ready is not None:
        await ready()
    status = health_pb2.HealthCheckResponse.NOT_SERVING if _failed else health_pb2.HealthCheckResponse.SERVING
    for name in ["", *names]:
        await health_servicer.set(name, status)
    probes.set_serving(True)
    log.info("serving on %s (%s)", listen, "plaintext" if identity is None else "TLS")
    await stop.wait()
    log.info("stopping")
    probes.set_serving(False)
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if stopping is not None:
        await stopping()
    await server.stop(shutdown_grace_s)
    if closed is not None:
        await closed()
    log.info("stopped")


def run_service(
    build_parser: Callable[[], argparse.ArgumentParser],
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """The body of every `python -m services.<name>`: flags, logging, event loop, run until stopped."""
    parser = build_parser()
    parser.add_argument(
        "--metrics-listen",
        default=env_default("METRICS_LISTEN", ""),
        help="serve Prometheus metrics at HOST:PORT/metrics, and the /healthz and /readyz probes (empty: none)",
    )
    parser.add_argument(
        "--tls-dir",
        default=env_default("TLS_DIR", ""),
        help="the cluster CA and this process's certificate (<dir>/ca.pem, <dir>/<id>.pem, <dir>/<id>.key); "
        "empty: plaintext, insecure",
    )
    arguments = parser.parse_args()
    setup_logging(arguments.id)
    tls.configure(arguments.tls_dir, arguments.id)
    tracing.setup(arguments.id)
    probes.serve(arguments.metrics_listen)
    install_event_loop()
    try:
        asyncio.run(_beating(main(arguments)))
    finally:
        tracing.shutdown()


async def _beating(main: Coroutine[Any, Any, None]) -> None:
    """`main`, with the event loop's beat for the probes (services/common/probes.py) beside it."""
    beat = asyncio.create_task(probes.beat_forever(), name="probes-beat")
    try:
        await main
    finally:
        beat.cancel()
