"""NATS JetStream as the system to beat: a 3-node cluster on loopback and the bench target on it.

The cluster is Debian's `nats-server` (2.9), three processes with JetStream on file storage, routes
between all three, and one stream `RINGCAST_BENCH` over `bench.>` with 3 replicas. A channel is a
subject `bench.<channel>`. Note for every comparison: JetStream acknowledges a publish once a quorum
of replicas has it in the OS page cache (it syncs to disk every 2 minutes by default); ringcast
acknowledges only after a quorum of zones has fsynced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StorageType, StreamConfig

from ringcast_tools.cluster.launcher import pdeathsig_prefix
from ringcast_tools.cluster.topology import free_ports

log = logging.getLogger("ringcast_tools.bench")

stream_name = "RINGCAST_BENCH"
ready_timeout_s = 30.0
publish_timeout_s = 20.0
"""How long one publish may take in all, its retries included."""
retry_pause_s = 0.05
publish_attempt_timeout_s = 5.0
"""How long one attempt waits for its ack before it is sent again with the same Nats-Msg-Id: the
ringcast SDK's default attempt timeout. Without retries a publish whose ack died with the stream
leader waits out its whole timeout, and the failover gap measures that timeout, not NATS."""


class NatsCluster:
    """Three nats-server processes with JetStream, on free loopback ports, data under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ports = free_ports(6)
        self.client_ports = ports[:3]
        self.route_ports = ports[3:]
        self.names = [f"nats-{index + 1}" for index in range(3)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    def _config(self, index: int) -> Path:
        name = self.names[index]
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.route_ports)
        text = (
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{self.client_ports[index]}\n"
            f'jetstream {{ store_dir: "{self.root / name}", max_memory_store: 268435456, '
            "max_file_store: 4294967296 }\n"
            f"cluster {{ name: ringcast-bench, listen: 127.0.0.1:{self.route_ports[index]}, routes: [{routes}] }}\n"
        )
        path = self.root / f"{name}.conf"
        path.write_text(text)
        return path

    def start(self) -> None:
        if shutil.which("nats-server") is None:
            raise RuntimeError("nats-server is not installed (./dev setup installs Debian's nats-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        for index in range(3):
            self._start(index)

    def _start(self, index: int) -> None:
        name = self.names[index]
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the process owns it
        self.processes[name] = subprocess.Popen(
            [*pdeathsig_prefix(), "nats-server", "-c", str(self._config(index))],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self, name: str) -> None:
        self.kill(name)
        self._start(self.names.index(name))

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _connection_error(error: Exception) -> None:
    """nats-py reports each refused reconnect (a killed server) here; they are expected."""
    log.debug("nats connection: %s", error)


class NatsTarget:
    """The bench workloads' view of NATS JetStream, through nats-py (the same kind of Python client)."""

    name = "nats"

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self._connection: NatsClient | None = None
        self._jetstream: JetStreamContext | None = None
        self.killed: str | None = None

    @property
    def _js(self) -> JetStreamContext:
        assert self._jetstream is not None, "start() first"
        return self._jetstream

    async def start(self) -> None:
        self._connection = connection = await nats.connect(
            servers=self.cluster.servers,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.05,
            connect_timeout=2,
            pending_size=64 * 1024 * 1024,
            error_cb=_connection_error,
        )
        self._jetstream = js = connection.jetstream(timeout=publish_timeout_s)
        config = StreamConfig(name=stream_name, subjects=["bench.>"], num_replicas=3, storage=StorageType.FILE)
        deadline = time.monotonic() + ready_timeout_s
        while True:  # the meta leader takes a few seconds to be elected
            try:
                await js.add_stream(config)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def publish(self, channel: str, data: bytes) -> None:
        """One publish with a message id (JetStream drops a repeated one within its 2-minute
        duplicate window, as ringcast does), retried like the SDK retries until `publish_timeout_s`."""
        headers = {"Nats-Msg-Id": uuid.uuid4().hex}
        deadline = time.monotonic() + publish_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                await self._js.publish(
                    f"bench.{channel}", data, timeout=min(publish_attempt_timeout_s, remaining), headers=headers
                )
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError):
                if time.monotonic() + retry_pause_s >= deadline:
                    raise
                await asyncio.sleep(retry_pause_s)

    async def publish_batch(self, channel: str, datas: list[bytes]) -> None:
        """JetStream 2.9 has no atomic batch: the batch's publishes go pipelined, and all are awaited."""
        await asyncio.gather(*(self.publish(channel, data) for data in datas))

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        subscription = await self._js.subscribe(
            f"bench.{channel}", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )
        try:
            async for message in subscription.messages:
                yield bytes(message.data)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def kill_busiest(self, channels: list[str]) -> str:
        """Kill the stream's leader: every channel's publishes go through it."""
        info = await self._js.stream_info(stream_name)
        assert info.cluster is not None
        leader = str(info.cluster.leader)
        self.cluster.kill(leader)
        self.killed = leader
        return leader

    async def restore(self) -> None:
        if self.killed is not None:
            self.cluster.restart(self.killed)
            self.killed = None
