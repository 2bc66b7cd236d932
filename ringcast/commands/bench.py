"""`ringcast bench`: concurrent publishers against a running cluster; msgs/s and publish→ack latency.

It reports numbers with the conditions they were measured under; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import grpc

from ringcast.commands import output
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common.errors import reason_of


async def _publisher(
    stub: realtime_grpc.RealtimeServiceStub,
    channel: str,
    batch: int,
    payload: bytes,
    stop_at: float,
    latencies_ms: list[float],
    errors: list[str],
) -> None:
    prefix = uuid.uuid4().hex
    count = 0
    while time.monotonic() < stop_at:
        messages = []
        for _ in range(batch):
            count += 1
            messages.append(message_pb2.Message(id=f"{prefix}-{count}", data=payload))
        started = time.perf_counter()
        try:
            await stub.Publish(realtime_pb2.PublishRequest(channel=channel, messages=messages), timeout=10)
        except grpc.RpcError as error:
            errors.append(error.code().name)
            continue
        latencies_ms.append((time.perf_counter() - started) * 1000)


async def _tick(advance: Callable[[float], None], stop_at: float) -> None:
    """Move the progress bar once a second until the run ends."""
    while time.monotonic() < stop_at:
        await asyncio.sleep(1.0)
        advance(1)


async def bench(
    gateways: list[str],
    publishers: int,
    seconds: float,
    size: int,
    batch: int,
    channels: int,
    show_progress: bool = False,
) -> dict[str, object]:
    links = [grpc.aio.insecure_channel(address) for address in gateways]
    stubs = [realtime_grpc.RealtimeServiceStub(link) for link in links]
    payload = os.urandom(size)
    latencies: list[float] = []
    errors: list[str] = []
    run = uuid.uuid4().hex[:8]
    # Warm up: take every channel over before the clock starts.
    for index in range(channels):
        warm = message_pb2.Message(id=f"warm-{run}-{index}", data=payload)
        await stubs[0].Publish(realtime_pb2.PublishRequest(channel=f"bench-{run}-{index}", messages=[warm]), timeout=30)
    stop_at = time.monotonic() + seconds
    started = time.monotonic()
    with output.progress(f"{publishers} publishers", round(seconds), enabled=show_progress) as advance:
        clock = asyncio.create_task(_tick(advance, stop_at))
        await asyncio.gather(
            *(
                _publisher(
                    stubs[i % len(stubs)], f"bench-{run}-{i % channels}", batch, payload, stop_at, latencies, errors
                )
                for i in range(publishers)
            )
        )
        clock.cancel()
    elapsed = time.monotonic() - started
    for link in links:
        await link.close()
    ordered = sorted(latencies)

    def percentile(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")

    return {
        "publishers": publishers,
        "seconds": round(elapsed, 2),
        "message_bytes": size,
        "batch": batch,
        "channels": channels,
        "gateways": len(gateways),
        "cpus": os.cpu_count(),
        "publishes": len(latencies),
        "msgs_per_s": round(len(latencies) * batch / elapsed, 1),
        "ack_p50_ms": round(percentile(0.50), 2),
        "ack_p99_ms": round(percentile(0.99), 2),
        "ack_mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "errors": len(errors),
    }


def run(arguments: argparse.Namespace) -> int:
    from ringcast.commands.client import default_gateways

    if arguments.failover:
        from ringcast.commands import failover

        return failover.run(arguments.trials, arguments.moved_channels, arguments.lease_ttl, arguments.json)

    gateways = arguments.gateway or default_gateways()
    for publishers in arguments.publishers:
        try:
            result = asyncio.run(
                bench(
                    gateways,
                    publishers,
                    arguments.seconds,
                    arguments.size,
                    arguments.batch,
                    arguments.channels,
                    show_progress=not arguments.json,
                )
            )
        except grpc.RpcError as error:  # warming up failed: no cluster there, or it cannot serve
            print(
                f"error: {error.code().name} {reason_of(error)}: {error.details()}\n"
                f"no cluster answered at {', '.join(gateways)}: start one with `ringcast up`, name gateways "
                "with --gateway, or use --failover (which starts its own)",
                file=sys.stderr,
            )
            return 1
        if arguments.json:
            print(json.dumps(result))
        else:
            print(
                f"publishers={result['publishers']} msgs/s={result['msgs_per_s']} "
                f"ack_p50_ms={result['ack_p50_ms']} ack_p99_ms={result['ack_p99_ms']} errors={result['errors']} "
                f"(size={result['message_bytes']}B batch={result['batch']} channels={result['channels']} "
                f"gateways={result['gateways']} seconds={result['seconds']} cpus={result['cpus']})",
                flush=True,
            )
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("bench", help="publish throughput and publish→ack latency against a cluster")
    command.add_argument("--gateway", action="append", help="gateway address (repeatable; default: all local)")
    command.add_argument("--publishers", type=int, nargs="+", default=[1, 16, 256], help="concurrent publishers")
    command.add_argument("--seconds", type=float, default=10.0)
    command.add_argument("--size", type=int, default=100, help="message data bytes")
    command.add_argument("--batch", type=int, default=1, help="messages per publish")
    command.add_argument("--channels", type=int, default=16)
    command.add_argument("--json", action="store_true")
    command.add_argument(
        "--failover", action="store_true", help="start a cluster of its own; time the gap after killing owners"
    )
    command.add_argument("--trials", type=int, default=5, help="with --failover: owners to kill, one at a time")
    command.add_argument(
        "--moved-channels", type=int, default=10_000, help="with --failover: active channels for the relocation run"
    )
    command.add_argument("--lease-ttl", type=float, default=2.0, help="with --failover: channel nodes' lease TTL")
    command.set_defaults(handler=run)
