"""`ringcast bench`: the benchmark suite, optionally side by side with NATS JetStream.

Every workload (`ringcast_tools/bench/workloads.py`) runs against ringcast through the Python SDK and,
with `--compare nats`, against a 3-replica JetStream cluster through nats-py, in the same run and
process. Results go to a JSON file and a PNG plot next to it; the printed lines carry their
conditions. Nothing is asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from ringcast_tools.bench import workloads
from ringcast_tools.bench.memory import active_channels
from ringcast_tools.bench.raw import RawTarget
from ringcast_tools.bench.target import RingcastTarget
from ringcast_tools.bench.workloads import Target

T = TypeVar("T")

samples_kept_max = 2_000
"""Latency samples kept per workload in the JSON (evenly spaced quantiles of the sorted samples)."""


@dataclass
class Options:
    publishers: list[int] = field(default_factory=lambda: [1, 16, 256])
    seconds: float = 10.0
    size: int = 100
    batch: int = 100
    channels: int = 16
    sequential_count: int = 1_000
    rate_per_s: int = 1_000
    end_to_end_s: float = 10.0
    moved_channels: int = 10_000
    active_channels: int = 100_000
    """Channels made active for the memory measurement (0: none)."""
    presence_members: int = 900
    """Members entered into one channel for the presence measurement (0: none)."""
    lease_ttl_s: float = 2.0
    compare: str | None = None
    gateways: list[str] | None = None
    secure: bool = False
    """Run the bench's own cluster secure (mTLS, TLS to the gateways, a token per call)."""
    clients: list[str] = field(default_factory=lambda: ["sdk"])
    """Which ringcast clients to measure: "sdk" (the Python SDK), "raw" (generated stubs, unary
    Publish, one message per call), "stream" (generated stubs, one message per PublishStream request)."""
    out: Path = Path("bench-results")


def machine() -> dict[str, object]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_kib = int(meminfo.read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "note": "every process (cluster and client) on this one machine, over loopback",
        "client_event_loop": "uvloop (both systems' clients, one after the other, in this process)",
    }


def _thin(result: dict[str, object]) -> dict[str, object]:
    samples = result.get("samples_ms")
    if isinstance(samples, list) and len(samples) > samples_kept_max:
        step = len(samples) / samples_kept_max
        result = {**result, "samples_ms": [samples[int(index * step)] for index in range(samples_kept_max)]}
    return result


def line(system: str, result: dict[str, object]) -> str:
    shown = {key: value for key, value in result.items() if key not in ("samples_ms", "workload")}
    return f"{system} {result['workload']} " + " ".join(f"{key}={value}" for key, value in shown.items())


async def run_workloads(
    target: Target, options: Options, *, can_kill: bool, say: Callable[[str], None], client: str = "sdk"
) -> list[dict[str, object]]:
    """Every workload against `target`. `client` "sdk" (and NATS): the whole suite; a plain client
    ("raw", "stream"): one message per publish only (no batches, no faults)."""
    run = uuid.uuid4().hex[:6]
    channels = [f"bench-{run}-{index}" for index in range(options.channels)]
    hot = [f"bench-{run}-hot"]
    for channel in [*channels, *hot]:  # warm up: every channel active (ringcast: taken over) before any clock
        await target.publish(channel, b"warm")
    results: list[dict[str, object]] = []
    whole = client not in ("raw", "stream")

    def done(result: dict[str, object]) -> None:
        result = {"workload": result["workload"], "client": client, **result}
        results.append(_thin(result))
        say(line(target.name, result))

    for publishers in options.publishers:
        done(
            await workloads.throughput(
                target, publishers=publishers, seconds=options.seconds, channels=channels, size=options.size
            )
        )
    done(  # one hot channel: a big room, a ticker
        await workloads.throughput(
            target, publishers=max(options.publishers), seconds=options.seconds, channels=hot, size=options.size
        )
    )
    for publishers in options.publishers if whole else []:
        done(
            await workloads.throughput(
                target,
                publishers=publishers,
                seconds=options.seconds,
                channels=channels,
                size=options.size,
                batch=options.batch,
            )
        )
    done(await workloads.sequential(target, count=options.sequential_count, channel=channels[0], size=options.size))
    done(
        await workloads.end_to_end(
            target,
            rate_per_s=options.rate_per_s,
            seconds=options.end_to_end_s,
            channel=f"bench-{run}-e2e",
            size=options.size,
        )
    )
    if can_kill and whole:
        done(await workloads.failover(target, channels=channels))
    return results


def _find(results: list[dict[str, object]], workload: str, **match: object) -> dict[str, object] | None:
    for result in results:
        if result["workload"] == workload and all(result.get(key) == value for key, value in match.items()):
            return result
    return None


def ratios(
    ours: list[dict[str, object]], theirs: list[dict[str, object]], publishers: int, channels: int
) -> dict[str, object]:
    """ringcast / NATS, for throughput (higher is better) and latencies (lower is better). The plain
    keys compare the Python SDK; `raw_*` and `hot_channel_ratio` a plain gRPC client, one message per
    unary Publish (NATS: one js.publish per message either way)."""

    def ratio(workload: str, key: str, *, client: str = "sdk", **match: object) -> float | None:
        mine, other = _find(ours, workload, client=client, **match), _find(theirs, workload, **match)
        if mine is None or other is None:
            return None
        numerator, denominator = mine.get(key), other.get(key)
        if not isinstance(numerator, int | float) or not isinstance(denominator, int | float) or not denominator:
            return None
        return round(numerator / denominator, 3)

    failover_ours, failover_theirs = _find(ours, "failover"), _find(theirs, "failover")
    return {
        "throughput_ratio": ratio("throughput", "msgs_per_s", publishers=publishers, channels=channels),
        "throughput_batch_ratio": ratio("throughput_batch", "msgs_per_s", publishers=publishers, channels=channels),
        "seq_ack_p50_ratio": ratio("sequential", "p50_ms"),
        "seq_ack_p99_ratio": ratio("sequential", "p99_ms"),
        "e2e_p50_ratio": ratio("end_to_end", "p50_ms"),
        "e2e_p99_ratio": ratio("end_to_end", "p99_ms"),
        "failover_s": failover_ours["gap_s"] if failover_ours else None,
        "nats_failover_s": failover_theirs["gap_s"] if failover_theirs else None,
        "sdk_hot_channel_ratio": ratio("throughput", "msgs_per_s", publishers=publishers, channels=1),
        "raw_throughput_ratio": ratio(
            "throughput", "msgs_per_s", client="raw", publishers=publishers, channels=channels
        ),
        "hot_channel_ratio": ratio("throughput", "msgs_per_s", client="raw", publishers=publishers, channels=1),
        "raw_seq_ack_p50_ratio": ratio("sequential", "p50_ms", client="raw"),
        "raw_e2e_p99_ratio": ratio("end_to_end", "p99_ms", client="raw"),
        "stream_throughput_ratio": ratio(
            "throughput", "msgs_per_s", client="stream", publishers=publishers, channels=channels
        ),
        "stream_hot_channel_ratio": ratio(
            "throughput", "msgs_per_s", client="stream", publishers=publishers, channels=1
        ),
    }


def _nats_version() -> str:
    try:
        return subprocess.run(["nats-server", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "not installed"


async def _ringcast_extras(target: RingcastTarget, options: Options, say: Callable[[str], None]) -> dict[str, object]:
    """What only ringcast has: relocation of many channels, and the ring's balance."""
    from services.core.ring import simulate

    extras: dict[str, object] = {}
    balance = [dataclasses.asdict(simulate(nodes, 100_000)) for nodes in (3, 10)]
    extras["ring"] = balance
    for stats in balance:
        say("ringcast ring " + " ".join(f"{key}={value}" for key, value in stats.items()))
    if target.launcher is not None and options.active_channels and not target.launcher.topology.tls_dir:
        memory = await active_channels(target.launcher, options.active_channels, say)
        extras["memory"] = memory
        say("ringcast memory " + " ".join(f"{key}={value}" for key, value in memory.items() if "rss" not in key))
        say(f"ringcast memory rss_mib_after={memory['rss_mib_after']}")
    if target.launcher is not None and options.presence_members and not target.launcher.topology.tls_dir:
        from ringcast_tools.bench.presence import presence_room

        room = await presence_room(target.launcher, options.presence_members, say)
        extras["presence"] = room
        say("ringcast presence " + " ".join(f"{key}={value}" for key, value in room.items()))
    if target.launcher is not None and options.moved_channels and not target.launcher.topology.tls_dir:
        from ringcast_tools.commands.failover import relocation

        result = await relocation(target.launcher, options.moved_channels)
        extras["takeover"] = result
        say("ringcast takeover " + " ".join(f"{key}={value}" for key, value in result.items()))
    return extras


async def _run_ringcast(options: Options, root: Path, say: Callable[[str], None]) -> dict[str, object]:
    if options.gateways:
        target = RingcastTarget(options.gateways)
    else:
        security = "secure: mTLS, TLS and tokens" if options.secure else "insecure: plaintext, no tokens"
        say(f"starting a ringcast cluster of the bench's own (lease TTL {options.lease_ttl_s} s; {security})")
        target = RingcastTarget.own_cluster(root / "ringcast", lease_ttl_s=options.lease_ttl_s, secure=options.secure)
    try:
        results: list[dict[str, object]] = []
        if "sdk" in options.clients:
            results += await run_workloads(target, options, can_kill=target.launcher is not None, say=say)
        for client in [client for client in options.clients if client != "sdk"]:
            raw = RawTarget(target.gateways, "unary" if client == "raw" else "stream", ca=target.ca, token=target.token)
            try:
                results += await run_workloads(raw, options, can_kill=False, say=say, client=client)
            finally:
                await raw.close()
        extras = await _ringcast_extras(target, options, say)
        return {"results": results, **extras, "client_stats": dataclasses.asdict(target.client.stats)}
    finally:
        await target.close()
        target.stop()


async def _run_nats(options: Options, root: Path, say: Callable[[str], None]) -> dict[str, object]:
    from ringcast_tools.bench.nats import NatsCluster, NatsTarget

    cluster = NatsCluster(root / "nats")
    say(f"starting a 3-node NATS JetStream cluster ({_nats_version()}), stream R3 on file storage")
    cluster.start()
    target = NatsTarget(cluster)
    try:
        await target.start()
        results = await run_workloads(target, options, can_kill=True, say=say, client="nats-py")
        return {"results": results}
    finally:
        await target.close()
        cluster.stop()


def _on_uvloop(work: Coroutine[Any, Any, T]) -> T:
    """Run a system's client on uvloop, as the services run (and as a user after speed would)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(work)


def _rows(section: dict[str, object]) -> list[dict[str, object]]:
    results = section["results"]
    assert isinstance(results, list)
    return results


def run(options: Options, say: Callable[[str], None] = print) -> dict[str, object]:
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report: dict[str, object] = {
        "started": started,
        "machine": machine(),
        "conditions": {
            key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(options).items()
        },
    }
    with tempfile.TemporaryDirectory(prefix="ringcast-bench-") as directory:
        root = Path(directory)
        ours = report["ringcast"] = _on_uvloop(_run_ringcast(options, root, say))
        theirs = None
        if options.compare == "nats":
            theirs = report["nats"] = _on_uvloop(_run_nats(options, root, say))
            report["nats_server"] = _nats_version()
    if theirs is not None:
        report["ratios"] = ratios(_rows(ours), _rows(theirs), max(options.publishers), options.channels)
        say(
            "note: NATS JetStream acknowledges once a quorum has the message in memory (it fsyncs every 2 min); "
            "ringcast acknowledges after a quorum of zones fsynced it"
        )
        found = report["ratios"]
        assert isinstance(found, dict)
        say(
            f"vs_nats throughput_ratio={found['throughput_ratio']} seq_ack_p50_ratio={found['seq_ack_p50_ratio']} "
            f"e2e_p99_ratio={found['e2e_p99_ratio']} failover_s={found['failover_s']} "
            f"nats_failover_s={found['nats_failover_s']} raw_throughput_ratio={found['raw_throughput_ratio']} "
            f"hot_channel_ratio={found['hot_channel_ratio']}"
        )
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / f"bench-{started}.json"
    json_path.write_text(json.dumps(report, indent=1))
    png_path = json_path.with_suffix(".png")
    try:
        from ringcast_tools.bench.plot import plot

        plot(report, png_path)
        say(f"wrote {json_path} and {png_path}")
    except ImportError as error:
        say(f"wrote {json_path} (no plot: {error})")
    sys.stdout.flush()
    return report
