"""The shape of a ringcast cluster: which processes, with which commands, addresses and settings.

This is the one description of a cluster. `ringcast up` starts it as local processes, the
integration tests start it on free ports, and the compose file is checked against it. A process is
described by its argv and environment only, so what runs locally and what a container would run
are the same command.

A topology can put a TCP fault proxy (`ringcast_tools.chaos.proxy`) on chosen links; see `local_topology`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import random
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ZONES = ("a", "b", "c")


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str
    role: str  # etcd, placement, store, channel, gateway, proxy
    address: str  # host:port it serves on
    argv: tuple[str, ...]
    zone: str = ""
    env: dict[str, str] = field(default_factory=dict)
    data_dir: str = ""
    control: str = ""  # host:port of its control port (a proxy's HTTP control), else ""
    metrics: str = ""  # host:port of its Prometheus endpoint (/metrics), else ""


@dataclass(frozen=True, slots=True)
class Topology:
    processes: tuple[ProcessSpec, ...]
    tls_dir: str = ""
    """Where the cluster CA and every process's certificate live ("": plaintext, `--insecure`)."""

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


listen_port_low = 20_000
"""The lowest port `free_ports` hands out."""

port_reservation_s = 900.0
"""How long a port `free_ports` handed out is not handed out again, to any process of this machine."""

_RESERVATIONS = Path(tempfile.gettempdir()) / "ringcast-ports.json"


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral ports (outgoing connections' source ports) begin."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now, for processes that will listen on them a little later.

    Not the OS's port 0: that is an ephemeral port, which any outgoing connection may take before
    the process binds it (seen in CI: `Address already in use`). These come from below the
    ephemeral range, and each is reserved for `port_reservation_s` in a file shared by every
    process of the machine (under a lock), so two test workers starting clusters at once never get
    the same one."""
    high = _ephemeral_low() - 1
    with open(_RESERVATIONS.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = time.time()
        try:
            held = {int(port): when for port, when in json.loads(_RESERVATIONS.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            held = {}
        held = {port: when for port, when in held.items() if now - when < port_reservation_s}
        chosen: list[int] = []
        candidates = random.sample(range(listen_port_low, high + 1), high + 1 - listen_port_low)
        for port in candidates:
            if len(chosen) == count:
                break
            if port in held or not _bindable(host, port):
                continue
            chosen.append(port)
            held[port] = now
        if len(chosen) < count:
            raise RuntimeError(f"no {count} free ports in {listen_port_low}..{high}")
        _RESERVATIONS.write_text(json.dumps(held))
        return chosen


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def sequential_ports(base: int) -> Iterator[int]:
    port = base
    while True:
        yield port
        port += 1


PROXY_LINK_FORMS = ("channel-N->store-Z", "channel-N->etcd", "->channel-N")
"""The links a proxy can be put on: one channel node's link to one store or to etcd, or every link to
one channel node (gateways and other nodes dial the address it advertises: the proxy's)."""

_PROXY_LINK = re.compile(r"(?P<source>channel-\d+)?->(?P<destination>store-[a-z]+|etcd|channel-\d+)")


@dataclass(frozen=True, slots=True)
class ProxyLink:
    """A link with a fault proxy on it: `source` dials `destination` through the proxy."""

    source: str  # "channel-N", or "" for everyone that dials `destination`
    destination: str  # "store-Z", "etcd" or "channel-N"

    @classmethod
    def parse(cls, text: str) -> ProxyLink:
        match = _PROXY_LINK.fullmatch(text.strip())
        link = cls(match["source"] or "", match["destination"]) if match else None
        # A channel node as the destination is proxied for everyone (no source); the rest for one node.
        if link is None or (link.source == "") != link.destination.startswith("channel-"):
            raise ValueError(f"proxy link {text!r}: expected one of {', '.join(PROXY_LINK_FORMS)}")
        return link

    @property
    def name(self) -> str:
        """The proxy's process name: proxy-channel-1-store-a, proxy-channel-1-etcd, proxy-to-channel-1."""
        return f"proxy-{self.source}-{self.destination}" if self.source else f"proxy-to-{self.destination}"


def proxy_name(link: str) -> str:
    """The name of the proxy process `local_topology(proxies=[link])` puts on `link`."""
    return ProxyLink.parse(link).name


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
    proxies: Sequence[str] = (),
    engine: str = "sqlite",
    tls_dir: Path | None = None,
) -> Topology:
    """etcd, placement ×P, store ×3 (zones a, b, c), channel ×C, gateway ×G on one host.

    With `engine="redis"` each store keeps its log in a Redis of its own (role "redis", named
    `redis-<zone>`, AOF with `appendfsync always`), started just before the store; the Redis
    processes take their ports after the proxies'. Last come the metrics ports of the ringcast
    services (`metrics`, and RINGCAST_METRICS_LISTEN in their environment).

    `proxies` names links (forms in `PROXY_LINK_FORMS`) to put a fault proxy on. Each proxy is a
    process of role "proxy" named by `ProxyLink.name`, listening on its `address`, with its HTTP
    control port in `control`; it takes its ports after every other process's (so the addresses of
    the rest do not move), and it is started just before the channel node of its link, so it is up
    before anything dials it. It starts in mode `pass`.

    With `tls_dir` the cluster is secure (`with_tls`): mTLS between the services and to etcd, TLS to
    the gateways, an ACL user per store in each Redis. The launcher makes the certificates.
    """
    if engine not in ENGINES:
        raise ValueError(f"store engine {engine!r}: expected one of {', '.join(ENGINES)}")
    links = [ProxyLink.parse(text) for text in proxies]
    services = placements + 3 + channels + gateways
    port_count = 4 + services + 2 * len(links) + (3 if engine == "redis" else 0) + services
    port_source = ports if ports is not None else iter(free_ports(port_count))
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
                    "RINGCAST_ETCD": etcd_address,
                },
            )
        )
    if links:
        processes = _with_proxies(processes, links, address, python)
    if engine == "redis":
        processes = _with_redis(processes, address, data_root)
    processes = _with_metrics(processes, address)
    if tls_dir is not None:
        return with_tls(Topology(tuple(processes)), Path(tls_dir))
    return Topology(tuple(processes))


def with_tls(topology: Topology, tls_dir: Path) -> Topology:
    """`topology` secured: every ringcast service told where its certificate is (RINGCAST_TLS_DIR),
    etcd serving https to clients with certificates only, gateways requiring tokens (checked with the
    public keyset beside the certificates, revocations followed in etcd), and each Redis with its
    default user off and one ACL user for its store, whose password file is beside the certificates."""
    secured = []
    etcd = next((spec.address for spec in topology.processes if spec.role == "etcd"), "")
    for spec in topology.processes:
        if spec.role in METRICS_ROLES:
            env = {**spec.env, "RINGCAST_TLS_DIR": str(tls_dir)}
            if spec.role == "gateway":  # tokens checked with the public keyset; revocations from etcd
                env.update(RINGCAST_TOKEN_KEYS=str(tls_dir / "token-keys.json"), RINGCAST_ETCD=etcd)
            if "RINGCAST_REDIS" in env:
                env["RINGCAST_REDIS_USER"] = spec.name
                env["RINGCAST_REDIS_PASSWORD_FILE"] = str(redis_password_file(tls_dir, spec.name))
            spec = dataclasses.replace(spec, env=env)
        elif spec.role == "etcd":
            spec = dataclasses.replace(spec, argv=_etcd_with_tls(spec.argv, tls_dir))
        elif spec.role == "redis":
            spec = dataclasses.replace(spec, argv=(*spec.argv, "--aclfile", str(redis_acl_file(tls_dir, spec.zone))))
        secured.append(spec)
    return Topology(tuple(secured), tls_dir=str(tls_dir))


def _etcd_with_tls(argv: tuple[str, ...], tls_dir: Path) -> tuple[str, ...]:
    client_urls = ("--listen-client-urls=", "--advertise-client-urls=")
    changed = tuple(item.replace("=http://", "=https://") if item.startswith(client_urls) else item for item in argv)
    return (
        *changed,
        f"--cert-file={tls_dir / 'etcd.pem'}",
        f"--key-file={tls_dir / 'etcd.key'}",
        f"--trusted-ca-file={tls_dir / 'ca.pem'}",
        "--client-cert-auth",
    )


def redis_password_file(tls_dir: Path, store: str) -> Path:
    return tls_dir / f"{store}.redis-password"


def redis_acl_file(tls_dir: Path, zone: str) -> Path:
    return tls_dir / f"redis-{zone}.acl"


METRICS_ROLES = ("placement", "store", "channel", "gateway")
"""Processes that serve Prometheus metrics (the ringcast services)."""


def _with_metrics(processes: list[ProcessSpec], address: Callable[[], str]) -> list[ProcessSpec]:
    """Each ringcast service with a metrics endpoint; these ports come after everyone else's."""
    result = []
    for spec in processes:
        if spec.role in METRICS_ROLES:
            listen = address()
            spec = dataclasses.replace(spec, metrics=listen, env={**spec.env, "RINGCAST_METRICS_LISTEN": listen})
        result.append(spec)
    return result


ENGINES = ("sqlite", "redis")
"""Store engines: SQLite files, or one Redis per zone."""


def redis_argv(address: str, directory: str) -> tuple[str, ...]:
    """A Redis that syncs its append-only file before it answers any write (what a store needs)."""
    host, port = address.rsplit(":", 1)
    return (
        "redis-server",
        "--bind",
        host,
        "--port",
        port,
        "--dir",
        directory,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    )


def _with_redis(processes: list[ProcessSpec], address: Callable[[], str], data_root: Path) -> list[ProcessSpec]:
    """`processes` with a Redis before each store, and each store told to use it."""
    result: list[ProcessSpec] = []
    for spec in processes:
        if spec.role == "store":
            listen = address()
            directory = str(data_root / f"redis-{spec.zone}")
            result.append(
                ProcessSpec(
                    name=f"redis-{spec.zone}",
                    role="redis",
                    zone=spec.zone,
                    address=listen,
                    data_dir=directory,
                    argv=redis_argv(listen, directory),
                )
            )
            spec = dataclasses.replace(spec, env={**spec.env, "RINGCAST_REDIS": f"redis://{listen}/0"})
        result.append(spec)
    return result


def _with_proxies(
    processes: list[ProcessSpec], links: list[ProxyLink], address: Callable[[], str], python: str
) -> list[ProcessSpec]:
    """`processes` with a proxy on each link: the channel node of the link dials (or advertises) the
    proxy, and the proxy comes just before that node in the start order."""
    names = [link.name for link in links]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"proxy links given twice: {', '.join(duplicates)}")
    by_name = {spec.name: spec for spec in processes}
    proxies_before: dict[str, list[ProcessSpec]] = {}
    for link in links:
        channel_name = link.source or link.destination
        if channel_name not in by_name:
            raise ValueError(f"proxy link {link.source}->{link.destination}: there is no {channel_name}")
        if link.destination not in by_name:
            raise ValueError(f"proxy link {link.source}->{link.destination}: there is no {link.destination}")
        listen, control = address(), address()
        target = by_name[link.destination].address
        channel = by_name[channel_name]
        flags = ("--listen", listen, "--target", target, "--control", control)
        by_name[channel_name] = dataclasses.replace(
            channel, env={**channel.env, **_dial_through(link, listen, channel)}
        )
        proxies_before.setdefault(channel_name, []).append(
            ProcessSpec(
                name=link.name,
                role="proxy",
                address=listen,
                control=control,
                argv=(python, "-m", "ringcast_tools.chaos.proxy", *flags),
                env={"RINGCAST_ID": link.name},
            )
        )
    ordered: list[ProcessSpec] = []
    for spec in processes:
        ordered.extend(proxies_before.get(spec.name, []))
        ordered.append(by_name[spec.name])
    return ordered


def _dial_through(link: ProxyLink, proxy_address: str, channel: ProcessSpec) -> dict[str, str]:
    """The settings of the channel node on `link` that make it dial, or advertise, the proxy."""
    if not link.source:
        return {"RINGCAST_ADVERTISE": proxy_address}
    if link.destination == "etcd":
        return {"RINGCAST_ETCD": proxy_address}
    zone = link.destination.removeprefix("store-")
    stores = dict(item.split("=", 1) for item in channel.env["RINGCAST_STORES"].split(","))
    stores[zone] = proxy_address
    return {"RINGCAST_STORES": ",".join(f"{name}={value}" for name, value in stores.items())}
