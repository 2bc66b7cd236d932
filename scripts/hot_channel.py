"""One hot channel, plain unary publishes: throughput, latency and CPU per message of every process.

    python scripts/hot_channel.py                 # 1, 16 and 256 publishes in flight, 8 s each
    python scripts/hot_channel.py --inflight 256 --seconds 20 --profile /tmp/spy

Starts a local cluster of its own (insecure, as `ringcast bench` does), publishes one 128-byte
message per `RealtimeService.Publish` call with the generated stubs to one channel through the first
gateway, and prints, per level of concurrency, msgs/s, latency and the CPU time each process spent per
message (from /proc/PID/stat: user + system, so fsync's kernel time counts too). `--profile DIR`:
also record each busy process with py-spy (`pip install py-spy`; not a project dependency) in the
middle of the last run, one raw folded-stack file per process (open them with speedscope or
flamegraph.pl). How docs/benchmarks.md "Speed for every client" was measured. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import uvloop

import ringcast
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


Publish = Callable[[str, str], Awaitable[object]]


def plain(stub: realtime_grpc.RealtimeServiceStub) -> Publish:
    async def publish(channel: str, message_id: str) -> object:
        message = message_pb2.Message(id=message_id, data=b"x" * 128)
        return await stub.Publish(realtime_pb2.PublishRequest(channel=channel, messages=[message]), timeout=30)

    return publish


def sdk(client: ringcast.Client) -> Publish:
    async def publish(channel: str, message_id: str) -> object:
        return await client.publish(channel, b"x" * 128, id=message_id)

    return publish


async def publishers(
    publish: Publish, inflight: int, seconds: float, tag: str, channels: int
) -> tuple[int, list[float]]:
    count, latencies = 0, []
    stop_at = time.monotonic() + seconds

    async def publisher(index: int) -> None:
        nonlocal count
        sent = 0
        while time.monotonic() < stop_at:
            channel = "hot" if channels == 1 else f"ch-{(index + sent * inflight) % channels}"
            started = time.perf_counter()
            await publish(channel, f"{tag}-{index}-{sent}")
            latencies.append(time.perf_counter() - started)
            sent += 1
            count += 1

    await asyncio.gather(*(publisher(index) for index in range(inflight)))
    return count, sorted(latencies)


async def warm(publish: Publish, channels: int) -> None:
    """One publish to every channel (each one taken over), 512 at a time."""
    gate = asyncio.Semaphore(512)

    async def one(index: int) -> None:
        async with gate:
            await publish("hot" if channels == 1 else f"ch-{index}", f"warm-{index}")

    await asyncio.gather(*(one(index) for index in range(channels)))


def profile(pids: dict[str, int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy on PATH (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(seconds)),
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
        if name.startswith(("gateway-1", "channel", "store"))
    ]


async def main(arguments: argparse.Namespace, launcher: Launcher) -> None:
    pids = {name: process.process.pid for name, process in launcher.running.items()}
    pids["client"] = os.getpid()
    async with contextlib.AsyncExitStack() as stack:
        if arguments.client == "sdk":
            client = ringcast.Client(launcher.topology.gateways[:1])
            stack.push_async_callback(client.close)
            publish = sdk(client)
        else:
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(launcher.topology.gateways[0]))
            publish = plain(realtime_grpc.RealtimeServiceStub(channel))
        await warm(publish, arguments.channels)
        for index, inflight in enumerate(arguments.inflight):
            spies = []
            if arguments.profile and index == len(arguments.inflight) - 1:
                spies = profile(pids, arguments.seconds / 2, Path(arguments.profile))
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            started = time.monotonic()
            count, latencies = await publishers(
                publish, inflight, arguments.seconds, f"c{inflight}", arguments.channels
            )
            elapsed = time.monotonic() - started
            spent = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
            for spy in spies:
                spy.wait()
            p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
            print(
                f"in_flight={inflight} msgs_per_s={count / elapsed:.0f} p50_ms={p50 * 1000:.2f} p99_ms={p99 * 1000:.2f}"
            )
            busy = {name: value for name, value in spent.items() if value > 0.01 * elapsed}
            print(
                "  cpu_us_per_msg "
                + " ".join(f"{name}={value / count * 1e6:.0f}" for name, value in busy.items())
                + f" total={sum(spent.values()) / count * 1e6:.0f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 16, 256], help="publishes in flight")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level of concurrency")
    parser.add_argument("--channels", type=int, default=1, help="publish to this many channels in turn")
    parser.add_argument("--client", choices=["plain", "sdk"], default="plain", help="plain unary calls or the SDK")
    parser.add_argument("--profile", help="directory for py-spy recordings of the last run")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringcast-hot-") as directory:
        root = Path(directory)
        cluster = Launcher(local_topology(root / "data"), root)
        cluster.start_all()
        try:
            uvloop.run(main(options, cluster))
        finally:
            cluster.stop_all()
