"""`ringcast bench`: the benchmark suite (ringcast_tools/bench/), optionally side by side with NATS JetStream.

It reports numbers with the conditions they were measured under; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ringcast


def run(arguments: argparse.Namespace) -> int:
    if arguments.failover:
        from ringcast_tools.commands import failover

        return failover.run(arguments.trials, arguments.moved_channels, arguments.lease_ttl, arguments.json)
    try:
        from ringcast_tools.bench import suite
    except ImportError as error:  # the bench extras (nats-py, matplotlib) are missing
        print(f"ringcast bench needs the bench extras: pip install -e '.[bench]' ({error})", file=sys.stderr)
        return 2
    options = suite.Options(
        publishers=arguments.publishers,
        seconds=arguments.seconds,
        size=arguments.size,
        batch=arguments.batch,
        channels=arguments.channels,
        sequential_count=arguments.sequential,
        rate_per_s=arguments.rate,
        end_to_end_s=arguments.e2e_seconds,
        moved_channels=arguments.moved_channels,
        active_channels=arguments.active_channels,
        presence_members=arguments.presence_members,
        lease_ttl_s=arguments.lease_ttl,
        compare=arguments.compare,
        gateways=arguments.gateway,
        secure=arguments.secure,
        clients=arguments.client or (["sdk", "raw", "stream"] if arguments.compare else ["sdk"]),
        out=Path(arguments.out),
    )

    def say(text: str) -> None:
        print(text, file=sys.stderr if arguments.json else sys.stdout, flush=True)

    try:
        report = suite.run(options, say)
    except ringcast.RingcastError as error:  # warming up failed: no cluster there, or it cannot serve
        where = ", ".join(arguments.gateway or [])
        print(
            f"error: {error.code.name} {error.reason}: {error.message}\n"
            f"no cluster answered at {where}: start one with `ringcast up`, or leave out --gateway "
            "(the bench then starts a cluster of its own)",
            file=sys.stderr,
        )
        return 1
    if arguments.json:
        summary = {key: value for key, value in report.items() if key not in ("ringcast", "nats")}
        for system in ("ringcast", "nats"):
            section = report.get(system)
            if isinstance(section, dict):
                summary[system] = [
                    {key: value for key, value in result.items() if key != "samples_ms"}
                    for result in section["results"]
                ]
        print(json.dumps(summary))
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "bench", help="the benchmark suite: throughput, latencies, failover, takeover (--compare nats)"
    )
    command.add_argument(
        "--gateway", action="append", help="bench a running cluster (repeatable); default: start one of its own"
    )
    command.add_argument("--compare", choices=["nats"], help="also run every workload on a 3-node NATS JetStream")
    command.add_argument("--publishers", type=int, nargs="+", default=[1, 16, 256], help="concurrent publishers")
    command.add_argument(
        "--client",
        nargs="+",
        choices=["sdk", "raw", "stream"],
        help="ringcast clients to measure: sdk (the Python SDK), raw (generated stubs, one message per unary "
        "Publish), stream (generated stubs, one message per PublishStream request); "
        "default: sdk, or all three with --compare",
    )
    command.add_argument("--seconds", type=float, default=10.0, help="per throughput workload")
    command.add_argument("--size", type=int, default=100, help="message data bytes")
    command.add_argument("--batch", type=int, default=100, help="messages per publish in the batched workload")
    command.add_argument("--channels", type=int, default=16)
    command.add_argument("--sequential", type=int, default=1_000, help="publishes in the sequential workload")
    command.add_argument("--rate", type=int, default=1_000, help="msgs/s of the publish→deliver workload")
    command.add_argument("--e2e-seconds", type=float, default=10.0, help="length of the publish→deliver workload")
    command.add_argument("--out", default="bench-results", help="directory for the JSON and PNG of each run")
    command.add_argument("--json", action="store_true", help="progress on stderr; one JSON summary on stdout")
    command.add_argument(
        "--secure",
        action="store_true",
        help="run the bench's own cluster secure, as `ringcast up` does (mTLS, TLS, a token per call); "
        "the relocation workload is left out",
    )
    command.add_argument(
        "--failover", action="store_true", help="only: failover trials and the relocation run, on a cluster of its own"
    )
    command.add_argument("--trials", type=int, default=5, help="with --failover: owners to kill, one at a time")
    command.add_argument(
        "--moved-channels", type=int, default=10_000, help="active channels of the killed node in the takeover run"
    )
    command.add_argument(
        "--active-channels",
        type=int,
        default=100_000,
        help="channels made active for the memory measurement (RSS per process, bytes per channel); 0: none",
    )
    command.add_argument(
        "--presence-members",
        type=int,
        default=900,
        help="members entered into one channel for the presence measurement (enter/leave rates, a sync); 0: none",
    )
    command.add_argument(
        "--lease-ttl", type=float, default=2.0, help="the bench's own cluster: channel nodes' lease TTL"
    )
    command.set_defaults(handler=run)
