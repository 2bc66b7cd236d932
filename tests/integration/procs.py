"""Real service processes for integration tests: `python -m services.X` on a free loopback port.

    with ServiceProcesses(tmp_path) as processes:
        store = processes.start("services.store", ["--id", "store-a", "--data-dir", str(tmp_path / "a")])
        ...  # talk to store.address over gRPC
        store.kill()  # SIGKILL, like a machine dying
        store = processes.start("services.store", [...], address=store.address)  # same port again

`start` passes `--listen 127.0.0.1:<port>` itself (another flag name with `listen_flag`, none with
`listen_flag=None`), and returns once the process answers grpc.health.v1 Check with SERVING; if the
process exits first or never gets there, it fails with the process's own output. Every process runs
in its own process group, dies with the test process (PR_SET_PDEATHSIG on Linux), and is killed
(the whole group) when the `ServiceProcesses` block ends, so a failing test leaves no orphan.

The kernel's death signal follows the parent *thread*: start processes from a thread that outlives
them (the test's main thread), never from `asyncio.to_thread` or a pool thread.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ringcast_tools.cluster.launcher import pdeathsig_prefix
from ringcast_tools.cluster.topology import free_ports, listen_port_low

REPOSITORY = Path(__file__).resolve().parents[2]

ready_timeout_s = 20.0
"""How long a process may take to answer SERVING."""

stop_timeout_s = 5.0
"""How long a process may take to exit after SIGTERM before it is killed."""

health_poll_interval_s = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, below the ephemeral range and reserved for a while
    (`free_ports`: no outgoing connection or other test takes it before it is used)."""
    return free_ports(1, host)[0]


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """A first port such that it and the `count - 1` after it can all be bound right now, below the
    kernel's ephemeral range: the OS never hands those out for port 0 or outgoing connections, so a
    test running beside this one (which gets its ports that way) cannot take one before it is used."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    chooser = random.Random()
    for _ in range(200):
        base = chooser.randrange(10_000, min(low, listen_port_low) - count)  # not where free_ports hands out
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found below {low}")


class ServiceProcess:
    """One running service process."""

    def __init__(self, module: str, address: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.module = module
        self.address = address
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.process.poll() is None

    def signal(self, number: int) -> None:
        """Send a signal to the process (SIGSTOP / SIGCONT to pause and resume it, for instance)."""
        if self.running():
            self.process.send_signal(number)

    def kill(self) -> int:
        """SIGKILL the process group at once, like a machine losing power; return the exit code."""
        # Only while the process is not yet reaped: until then its pid (the group id) cannot be reused.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def stop(self, timeout_s: float = stop_timeout_s) -> int:
        """SIGTERM (graceful), then SIGKILL if it is still running after `timeout_s`; return the exit code."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def wait_healthy(self, timeout_s: float = ready_timeout_s, service: str = "") -> None:
        """Return once grpc.health.v1 says SERVING for `service` ("" is the whole server)."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if not self.running():
                    raise RuntimeError(
                        f"{self.module} exited with {self.process.returncode} before it was healthy:\n{self.output()}"
                    )
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.module} not SERVING after {timeout_s} s:\n{self.output()}")
                time.sleep(health_poll_interval_s)


class ServiceProcesses:
    """Starts service processes and kills every one of them (with its group) when the block ends."""

    def __init__(self, log_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.started: list[ServiceProcess] = []

    def start(
        self,
        module: str,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        address: str | None = None,
        listen_flag: str | None = "--listen",
        wait: bool = True,
        health_service: str = "",
        timeout_s: float = ready_timeout_s,
    ) -> ServiceProcess:
        """Run `python -m <module> [listen_flag address] <args>` and wait until it is healthy."""
        address = address or f"127.0.0.1:{free_port()}"
        prefix = pdeathsig_prefix()
        command = [*prefix, sys.executable, "-m", module, *([listen_flag, address] if listen_flag else []), *args]
        process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{module.rsplit('.', 1)[-1]}-{len(self.started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=REPOSITORY,
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so kill() reaches any children too
            )
        started = ServiceProcess(module, address, process, log_path)
        self.started.append(started)
        if wait:
            started.wait_healthy(timeout_s, health_service)
        return started

    def close(self) -> None:
        for started in self.started:
            started.kill()

    def __enter__(self) -> ServiceProcesses:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def scrape_metrics(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at a Prometheus endpoint (HOST:PORT): (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
