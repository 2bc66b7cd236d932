"""The shape of a ringcast cluster: which processes, with which commands, addresses and settings.

This is the one description of a cluster. `ringcast up` starts it as local processes, the
integration tests start it on free ports, and the compose file is checked against it. A process is
described by its argv and environment only, so what runs locally and what a container would run
are the same command.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ZONES = ("a", "b", "c")


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    role: str  # etcd, placement, store, channel, gateway
    address: str  # host:port it serves on
    argv: tuple[str, ...]
    zone: str = ""
    env: dict[str, str] = field(default_factory=dict)
    data_dir: str = ""


@dataclass(frozen=True, slots=True)
class Topology:
    processes: tuple[ProcessSpec, ...]

    def by_role(self, role: str) -> list[ProcessSpec]:
        return [process for process in self.processes if process.role == role]

    def named(self, name: str) -> ProcessSpec:
        for process in self.processes:
            if process.name == name:
                return process
        raise KeyError(name)

    @property
    def gateways(self) -> list[str]:
        return [process.address for process in self.by_role("gateway")]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now (the OS picks them); good enough for tests and a dev cluster."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def sequential_ports(base: int) -> Iterator[int]:
    port = base
    while True:
        yield port
        port += 1


def local_topology(
    data_root: Path,
    *,
    ports: Iterator[int] | None = None,
    host: str = "127.0.0.1",
    placements: int = 1,
    channels: int = 3,
    gateways: int = 2,
    lease_ttl_s: float = 2.0,
    python: str = sys.executable,
) -> Topology:
    """etcd, placement ×P, store ×3 (zones a, b, c), channel ×C, gateway ×G on one host."""
    port_source = ports if ports is not None else iter(free_ports(4 + placements + 3 + channels + gateways))
    data_root = Path(data_root)

    def address() -> str:
        return f"{host}:{next(port_source)}"

    processes: list[ProcessSpec] = []
    etcd_address, etcd_peer = address(), address()
    etcd_dir = str(data_root / "etcd")
    processes.append(
        ProcessSpec(
            name="etcd",
            role="etcd",
            address=etcd_address,
            data_dir=etcd_dir,
            argv=(
                "etcd",
                "--name=ringcast",
                f"--data-dir={etcd_dir}",
                f"--listen-client-urls=http://{etcd_address}",
                f"--advertise-client-urls=http://{etcd_address}",
                f"--listen-peer-urls=http://{etcd_peer}",
                f"--initial-advertise-peer-urls=http://{etcd_peer}",
                f"--initial-cluster=ringcast=http://{etcd_peer}",
                "--logger=zap",
                "--log-level=warn",
            ),
        )
    )
    placement_addresses = []
    for index in range(1, placements + 1):
        listen = address()
        placement_addresses.append(listen)
        processes.append(
            ProcessSpec(
                name=f"placement-{index}",
                role="placement",
                address=listen,
                argv=(python, "-m", "services.placement"),
                env={"RINGCAST_ID": f"placement-{index}", "RINGCAST_LISTEN": listen, "RINGCAST_ETCD": etcd_address},
            )
        )
    stores = {}
    for zone in ZONES:
        listen = address()
        stores[zone] = listen
        data_dir = str(data_root / f"store-{zone}")
        processes.append(
            ProcessSpec(
                name=f"store-{zone}",
                role="store",
                zone=zone,
                address=listen,
                data_dir=data_dir,
                argv=(python, "-m", "services.store"),
                env={
                    "RINGCAST_ID": f"store-{zone}",
                    "RINGCAST_ZONE": zone,
                    "RINGCAST_LISTEN": listen,
                    "RINGCAST_DATA_DIR": data_dir,
                    "RINGCAST_ETCD": etcd_address,
                },
            )
        )
    store_list = ",".join(f"{zone}={listen}" for zone, listen in stores.items())
    for index in range(1, channels + 1):
        listen = address()
        processes.append(
            ProcessSpec(
                name=f"channel-{index}",
                role="channel",
                address=listen,
                argv=(python, "-m", "services.channel"),
                env={
                    "RINGCAST_ID": f"channel-{index}",
                    "RINGCAST_LISTEN": listen,
                    "RINGCAST_ETCD": etcd_address,
                    "RINGCAST_PLACEMENT": ",".join(placement_addresses),
                    "RINGCAST_STORES": store_list,
                    "RINGCAST_LEASE_TTL": str(lease_ttl_s),
                },
            )
        )
    for index in range(1, gateways + 1):
        listen = address()
        processes.append(
            ProcessSpec(
                name=f"gateway-{index}",
                role="gateway",
                address=listen,
                argv=(python, "-m", "services.gateway"),
                env={
                    "RINGCAST_ID": f"gateway-{index}",
                    "RINGCAST_LISTEN": listen,
                    "RINGCAST_PLACEMENT": ",".join(placement_addresses),
                },
            )
        )
    return Topology(tuple(processes))
