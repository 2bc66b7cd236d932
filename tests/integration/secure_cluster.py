"""A secure cluster as `ringcast up` makes it, for the tests that attack or fuzz it: its CA, tokens,
clients presenting any of its processes' certificates, and an honest workload that publishes and
subscribes with 2-second tokens beside the test, judged by the history checker at the end."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import ringcast
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster import tokens
from ringcast_tools.cluster.launcher import Launcher
from services.common.errors import error_info
from services.common.tls import ServiceTLS
from services.core import checker

TARGET = "chat:target"
"""The channel every attack aims at; its history must not change."""

honest_run_s = 15.0
"""The honest workload runs at least this long (its tokens live 2 s: several renewals)."""


class Secure:
    """A running secure cluster (a `Launcher` over `local_topology(..., tls_dir=...)`), from outside."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.tls_dir = Path(launcher.topology.tls_dir)
        self.ca = (self.tls_dir / "ca.pem").read_bytes()
        self.gateway = launcher.topology.gateways[0]
        self.signing = self.tls_dir / tokens.SIGNING_FILE
        self.kid = json.loads(self.signing.read_text())["kid"]

    def token(
        self,
        capability: dict[str, list[str]],
        *,
        sub: str = "tester",
        ttl: float = 60,
        now: float | None = None,
        limits: dict[str, float] | None = None,
    ) -> str:
        return tokens.mint(self.signing, sub, capability, ttl, now=now, limits=limits)

    def tokens_with_limits(self, **limits: float) -> str:
        return tokens.mint(self.signing, "limited", {"chat:*": ["*"]}, 60, limits=limits)

    def realtime(self, token: str | None = None) -> tuple[grpc.Channel, Any, tuple[tuple[str, str], ...]]:
        link = grpc.secure_channel(self.gateway, grpc.ssl_channel_credentials(self.ca))
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return link, realtime_grpc.RealtimeServiceStub(link), metadata

    def as_process(self, name: str, address: str) -> grpc.Channel:
        """A channel to a service presenting `name`'s certificate (a process of the cluster)."""
        return grpc.secure_channel(address, ServiceTLS.load(self.tls_dir, name).channel_credentials())

    def address(self, name: str) -> str:
        return self.launcher.topology.named(name).address

    def history(self, channel: str = TARGET) -> list[tuple[int, str, str]]:
        """Every message the channel holds, page by page: (serial, id, client id)."""
        link, stub, metadata = self.realtime(self.token({"*": ["*"]}, sub="admin"))
        held: list[tuple[int, str, str]] = []
        with link:
            while True:
                request = realtime_pb2.HistoryRequest(channel=channel, after_serial=len(held), limit=1000)
                page = stub.History(request, metadata=metadata, timeout=30)
                if not page.messages:
                    return held
                held.extend((message.serial, message.id, message.client_id) for message in page.messages)


def start(state: Path) -> Secure:
    """A secure cluster under `state`, started (the caller stops `.launcher`)."""
    from ringcast_tools.cluster.topology import local_topology

    launcher = Launcher(local_topology(state / "data", tls_dir=state / "tls"), state)
    launcher.start_all()
    return Secure(launcher)


def refusal(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_refused(error: grpc.RpcError, code: grpc.StatusCode, reason: str | None) -> None:
    assert error.code() == code, (error.code(), error.details())
    if reason is not None:
        info = error_info(error)
        assert info is not None and info.reason == reason, (info, error.details())


class HonestWorkload:
    """Publishes and subscribes on `honest:*` with 2-second tokens for as long as the matrix runs."""

    def __init__(self, secure: Secure, *, run_s: float = honest_run_s, prefix: str = "honest") -> None:
        self.secure = secure
        self.run_s = run_s
        self.prefix = prefix
        self.channels = (f"{prefix}:0", f"{prefix}:1")
        self.history = checker.History()
        self.acked = 0
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="honest", daemon=True)
        self.error: BaseException | None = None
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    async def _provide(self) -> str:
        return self.secure.token({f"{self.prefix}:*": ["*"]}, sub=self.prefix, ttl=2)

    async def _run(self) -> None:
        try:
            async with ringcast.Client(
                self.secure.launcher.topology.gateways, ca=self.secure.ca, token_provider=self._provide
            ) as client:
                followers = [asyncio.create_task(self._follow(client, channel)) for channel in self.channels]
                operation = 0
                while not self._stop.is_set():
                    channel = self.channels[operation % len(self.channels)]
                    message_id = f"honest-{operation}"
                    try:
                        serial = await client.publish(channel, b"x", id=message_id)
                    except ringcast.RingcastError:
                        outcome, serials = checker.Outcome.UNKNOWN, ()
                    else:
                        outcome, serials = checker.Outcome.OK, (serial,)
                        self.acked += 1
                    self.history.publishes.append(
                        checker.PublishOp(operation, channel, (message_id,), outcome, serials)
                    )
                    operation += 1
                    await asyncio.sleep(0.02)
                await asyncio.sleep(2.0)  # the subscribers catch up
                for follower in followers:
                    follower.cancel()
                await asyncio.gather(*followers, return_exceptions=True)
                self.renewals = client.stats.token_renewals
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error

    async def _follow(self, client: ringcast.Client, channel: str) -> None:
        record = checker.SubscriberRecord(f"sub-{channel}", channel, 0)
        self.history.subscribers.append(record)
        async for message in client.subscribe(channel, after=0):
            record.received.append((message.serial, message.id))

    def stop(self) -> None:
        if self._stop.is_set():
            return
        time.sleep(max(0.0, self.run_s - (time.monotonic() - self.started)))  # however few rows ran here
        self._stop.set()
        self._thread.join(timeout=60)
        assert self.error is None, repr(self.error)
        for channel in self.channels:
            self.history.final_logs[channel] = [(serial, ident) for serial, ident, _ in self.secure.history(channel)]
        violations = checker.check(self.history)
        assert not violations, violations[:5]
        assert self.acked > 50
        assert self.renewals >= self.run_s / 5  # its tokens expired under it, again and again
