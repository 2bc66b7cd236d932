"""ringcast as a bench target: a cluster of its own (or a running one) through the Python SDK."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from pathlib import Path

import ringcast
from ringcast_tools.cluster import tokens
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology


class RingcastTarget:
    """The SDK, as an application would use it: concurrent publishes coalesce per channel."""

    name = "ringcast"

    def __init__(self, gateways: list[str], launcher: Launcher | None = None) -> None:
        self.gateways = gateways
        self.launcher = launcher
        tls_dir = Path(launcher.topology.tls_dir) if launcher is not None and launcher.topology.tls_dir else None
        self.ca: bytes | None = None  # what a plain client of the same cluster needs (bench/raw.py)
        self.token: str | None = None
        if tls_dir is None:
            self.client = ringcast.Client(gateways, timeout_s=30.0)
        else:  # TLS to the gateways and a token on every call, as a client of a secure cluster
            # A rate of its own far above the gateway's default: the bench measures the platform, not its limiter.
            limits = {"publish_rate": 1e9}
            token = tokens.mint(
                tls_dir / tokens.SIGNING_FILE, "bench", tokens.ADMIN_CAPABILITY, 6 * 3600, limits=limits
            )
            self.client = ringcast.Client(gateways, timeout_s=30.0, ca=str(tls_dir / "ca.pem"), token=token)
            self.ca, self.token = (tls_dir / "ca.pem").read_bytes(), token
        self.killed: str | None = None

    @classmethod
    def own_cluster(
        cls, root: Path, *, lease_ttl_s: float, engine: str = "sqlite", secure: bool = False
    ) -> RingcastTarget:
        """A cluster of its own; `secure`: as `ringcast up` makes it (mTLS, TLS, tokens)."""
        topology = local_topology(
            root / "data", lease_ttl_s=lease_ttl_s, engine=engine, tls_dir=root / "tls" if secure else None
        )
        launcher = Launcher(topology, root)
        launcher.start_all()
        return cls(launcher.topology.gateways, launcher)

    async def close(self) -> None:
        await self.client.close()

    def stop(self) -> None:
        if self.launcher is not None:
            self.launcher.stop_all()

    async def publish(self, channel: str, data: bytes) -> None:
        await self.client.publish(channel, data)

    async def publish_batch(self, channel: str, datas: list[bytes]) -> None:
        await self.client.publish_many(channel, datas)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        async with self.client.subscribe(channel) as subscription:
            async for message in subscription:
                yield message.data

    async def kill_busiest(self, channels: list[str]) -> str:
        """SIGKILL the channel node that owns the most of `channels`."""
        if self.launcher is None:
            raise RuntimeError("killing needs a cluster of the bench's own (no --gateway)")
        owners = collections.Counter([(await self.client.get_channel(channel)).owner for channel in channels])
        victim = owners.most_common(1)[0][0]
        self.launcher.kill(victim)
        self.killed = victim
        return victim

    async def restore(self) -> None:
        if self.launcher is not None and self.killed is not None:
            self.launcher.restart(self.killed)
            self.killed = None
