"""The TCP fault proxy as a real process (`python -m ringcast_tools.chaos.proxy`), at the TCP and gRPC level.

Two proxies for the whole module: one in front of a tiny echo server in this process (raw bytes),
one in front of a real `python -m services.store` (gRPC: health Check and the Watch stream). Each
test starts from `pass` and changes modes through the control port, never restarting a proxy.
Timing assertions are lower bounds only (a delay adds at least what it says), or generous.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ringcast_tools.chaos.proxy import LinkFault, Mode, ProxyControl
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import ProcessSpec, Topology, free_ports
from tests.integration.procs import ServiceProcess, ServiceProcesses, free_port

pytestmark = pytest.mark.timeout(120)

PROXY = "ringcast_tools.chaos.proxy"
socket_timeout_s = 10.0
"""How long a test waits for bytes it expects (far beyond any delay the tests set)."""


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Link:
    """A proxy process and its control."""

    def __init__(self, process: ServiceProcess, control: ProxyControl) -> None:
        self.process, self.control = process, control

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.process.address.rsplit(":", 1)
        return host, int(port)


def start_proxy(processes: ServiceProcesses, target: str, *, grpc_target: bool) -> Link:
    control = ProxyControl(f"127.0.0.1:{free_port()}")
    process = processes.start(
        PROXY,
        ["--target", target, "--control", control.address, "--seed", "7"],
        wait=grpc_target,  # a gRPC health check through the proxy reaches the store behind it
    )
    deadline = time.monotonic() + 20
    while not control.healthy():
        assert process.running() and time.monotonic() < deadline, process.output()
        time.sleep(0.05)
    return Link(process, control)


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    with ServiceProcesses(tmp_path_factory.mktemp("proxy") / "logs") as started:
        yield started


@pytest.fixture(scope="module")
def echo_link(processes: ServiceProcesses) -> Iterator[Link]:
    with EchoServer(("127.0.0.1", 0), EchoHandler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield start_proxy(processes, f"127.0.0.1:{server.server_address[1]}", grpc_target=False)
        finally:
            server.shutdown()


@pytest.fixture(scope="module")
def store_link(processes: ServiceProcesses, tmp_path_factory: pytest.TempPathFactory) -> Link:
    data = tmp_path_factory.mktemp("store")
    store = processes.start("services.store", ["--id", "store-p", "--zone", "p", "--data-dir", str(data)])
    return start_proxy(processes, store.address, grpc_target=True)


@pytest.fixture(autouse=True)
def back_to_pass(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("echo_link", "store_link"):
        if name in request.fixturenames:
            request.getfixturevalue(name).control.set("pass")


def connect(link: Link) -> socket.socket:
    connection = socket.create_connection(link.address, timeout=socket_timeout_s)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def receive_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def round_trip_s(connection: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    connection.sendall(payload)
    assert receive_exactly(connection, len(payload)) == payload
    return time.monotonic() - started


def check(channel: grpc.Channel, timeout_s: float, *, wait_for_ready: bool = False) -> int:
    request = health_pb2.HealthCheckRequest()
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(request, timeout=timeout_s, wait_for_ready=wait_for_ready).status)


SERVING = health_pb2.HealthCheckResponse.SERVING


def grpc_channel(link: Link) -> grpc.Channel:
    """A channel with its own connection: by default gRPC shares one among channels to an address."""
    return grpc.insecure_channel(link.process.address, options=[("grpc.use_local_subchannel_pool", 1)])


def test_pass_forwards_bytes_both_ways(echo_link: Link, store_link: Link) -> None:
    payload = os.urandom(512 * 1024)  # many chunks, both ways at once
    with connect(echo_link) as connection:
        sender = threading.Thread(target=connection.sendall, args=(payload,))
        sender.start()
        assert receive_exactly(connection, len(payload)) == payload
        sender.join()
        connection.shutdown(socket.SHUT_WR)  # a half-close goes through too: the echo server ends
        assert connection.recv(1) == b""
    with grpc_channel(store_link) as channel:
        assert check(channel, 5.0) == SERVING


def test_delay_adds_the_delay_each_way_and_keeps_order(echo_link: Link) -> None:
    delay_ms = 150
    state = echo_link.control.set("delay", ms=delay_ms)
    assert (state.mode, state.ms) == ("delay", delay_ms)
    with connect(echo_link) as connection:
        assert round_trip_s(connection) >= 2 * delay_ms / 1000
        # Many small writes in a row: each is held, none overtakes another, and they wait side by
        # side (not one after another, which would take 50 × the delay).
        pieces = [f"<{index}>".encode() for index in range(50)]
        started = time.monotonic()
        for piece in pieces:
            connection.sendall(piece)
        expected = b"".join(pieces)
        assert receive_exactly(connection, len(expected)) == expected
        elapsed_s = time.monotonic() - started
        assert 2 * delay_ms / 1000 <= elapsed_s < 50 * delay_ms / 1000


def test_mode_changes_apply_to_a_live_connection_without_restarting_the_proxy(echo_link: Link) -> None:
    pid = echo_link.process.pid
    with connect(echo_link) as connection:
        round_trip_s(connection)
        echo_link.control.set("delay", ms=300)
        assert round_trip_s(connection) >= 0.6
        echo_link.control.set("blackhole")
        connection.sendall(b"held")
        connection.settimeout(0.5)
        with pytest.raises(TimeoutError):
            connection.recv(4)
        connection.settimeout(socket_timeout_s)
        echo_link.control.set("pass")
        assert receive_exactly(connection, 4) == b"held"  # held, not lost: delivered once healed
        echo_link.control.set("reset")
        with pytest.raises(ConnectionResetError):
            round_trip_s(connection)
    echo_link.control.set("pass")
    with connect(echo_link) as connection:
        round_trip_s(connection)
    assert echo_link.process.pid == pid and echo_link.process.running()


def test_blackhole_times_out_grpc_calls_and_heals(store_link: Link) -> None:
    with grpc_channel(store_link) as channel:
        assert check(channel, 5.0) == SERVING
        store_link.control.set("blackhole")
        with pytest.raises(grpc.RpcError) as live:
            check(channel, 0.5)
        assert live.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with grpc_channel(store_link) as fresh:  # new connections stall too
            with pytest.raises(grpc.RpcError) as new:
                check(fresh, 0.5, wait_for_ready=True)
            assert new.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert store_link.control.get().connections >= 2
            store_link.control.set("pass")
            assert check(fresh, 10.0, wait_for_ready=True) == SERVING
        assert check(channel, 10.0, wait_for_ready=True) == SERVING


def test_reset_breaks_a_live_stream_with_unavailable_and_refuses_new_connections(store_link: Link) -> None:
    with grpc_channel(store_link) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        store_link.control.set("reset")
        with pytest.raises(grpc.RpcError) as broken:
            next(watch)
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc_channel(store_link) as fresh:
        with pytest.raises(grpc.RpcError) as refused:
            check(fresh, 5.0)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    store_link.control.set("pass")
    with grpc_channel(store_link) as healed:
        assert check(healed, 10.0, wait_for_ready=True) == SERVING


def test_drop_holds_a_fraction_of_chunks_long_enough_for_deadlines(echo_link: Link, store_link: Link) -> None:
    # Every chunk lost: a call with a deadline shorter than the hold fails, though nothing is refused.
    store_link.control.set("drop", probability=1.0, ms=500)
    with grpc_channel(store_link) as channel:
        with pytest.raises(grpc.RpcError) as lost:
            check(channel, 0.3, wait_for_ready=True)
        assert lost.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # A deadline longer than the hold sees the call through: the bytes were held, not thrown away.
        assert check(channel, 10.0, wait_for_ready=True) == SERVING
    # Half the chunks lost: some round trips take the hold, others do not.
    hold_ms = 60
    state = echo_link.control.set("drop", probability=0.5, ms=hold_ms)
    assert (state.mode, state.probability, state.ms) == ("drop", 0.5, hold_ms)
    with connect(echo_link) as connection:
        times_s = [round_trip_s(connection) for _ in range(20)]
    held = sum(1 for seconds in times_s if seconds >= hold_ms / 1000)
    assert 0 < held < len(times_s), times_s
    after = echo_link.control.get()
    assert 0 < after.chunks_dropped - state.chunks_dropped < 2 * len(times_s) + 1


def test_the_control_port_refuses_bad_requests_and_keeps_the_mode(echo_link: Link) -> None:
    echo_link.control.set("delay", ms=20)
    with pytest.raises(ValueError, match="unknown mode"):
        echo_link.control.set("sideways")
    with pytest.raises(ValueError, match="delay takes ms"):
        echo_link.control.set("delay", probability=0.5)
    with pytest.raises(ValueError, match="probability must be within"):
        echo_link.control.set("drop", probability=2.0)
    assert (echo_link.control.get().mode, echo_link.control.get().ms) == ("delay", 20)


def test_link_fault_decides_when_a_chunk_goes_out() -> None:
    assert LinkFault().release_at_s(10.0, dropped=False) == 10.0
    assert LinkFault(Mode.DELAY, ms=250).release_at_s(10.0, dropped=False) == 10.25
    assert LinkFault(Mode.DROP, ms=1000, probability=0.5).release_at_s(10.0, dropped=True) == 11.0
    assert LinkFault(Mode.DROP, ms=1000, probability=0.5).release_at_s(10.0, dropped=False) == 10.0
    assert LinkFault(Mode.BLACKHOLE).release_at_s(10.0, dropped=False) is None
    assert LinkFault.parse("drop") == LinkFault(Mode.DROP, ms=1000, probability=0.5)
    assert LinkFault.parse("delay", ms="5") == LinkFault(Mode.DELAY, ms=5)


def test_the_launcher_starts_pauses_restarts_and_faults_a_proxy(echo_link: Link, tmp_path: Path) -> None:
    """A proxy as a `Launcher` process: health through its control port, pause/resume, proxy(), restart."""
    echo_target = echo_link.process.address  # the echo proxy in `pass` is as good a target as any
    listen, control = (f"127.0.0.1:{port}" for port in free_ports(2))
    flags = ("--listen", listen, "--target", echo_target, "--control", control)
    spec = ProcessSpec(
        name="proxy-test", role="proxy", address=listen, control=control, argv=(sys.executable, "-m", PROXY, *flags)
    )
    launcher = Launcher(Topology((spec,)), tmp_path)
    launcher.start_all()
    try:
        state = json.loads((tmp_path / "cluster.json").read_text())
        assert state["processes"][0]["control"] == control and "control" not in state
        link = launcher.proxy("proxy-test")
        assert link.set("delay", ms=10).mode == "delay"
        pid = launcher.running["proxy-test"].process.pid
        launcher.pause("proxy-test")
        deadline = time.monotonic() + 5.0  # the kernel stops it soon after the signal, not at once
        while _state_letter(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state_letter(pid) == "T" and not ProxyControl(control, timeout_s=0.3).healthy()
        launcher.resume("proxy-test")
        assert link.healthy() and link.get().mode == "delay"
        launcher.restart("proxy-test")
        assert launcher.running["proxy-test"].process.pid != pid and link.get().mode == "pass"
        launcher.kill("proxy-test")
        assert not launcher.alive("proxy-test")
    finally:
        launcher.stop_all()


def _state_letter(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return "?"
