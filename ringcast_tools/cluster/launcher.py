"""Start a `Topology` as local OS processes, watch them, and stop them all.

Used by `ringcast up` and by the integration tests. Rules:
- processes start in dependency order (etcd, placement, stores, channel nodes, gateways), each only
  once the one before answers its health check, so a cluster that reports ready serves publishes;
- every child inherits the launcher's environment (OTEL_* and friends reach every service) plus its
  own settings, and the kernel kills it if the launcher dies (PR_SET_PDEATHSIG, through setpriv),
  so no process is left behind even when the launcher is killed with SIGKILL;
- stop sends SIGTERM to all, waits, then SIGKILLs stragglers: every child is gone within
  `stop_timeout_s`;
- faults from outside: `kill`, `pause`/`resume` (SIGSTOP/SIGCONT: a slow-but-alive process),
  `restart`, and `proxy(name)` to set the fault on a link that has a fault proxy on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ringcast_tools.chaos.proxy import ProxyControl
from ringcast_tools.cluster import pki
from ringcast_tools.cluster.pki import ADMIN_NAME
from ringcast_tools.cluster.topology import ProcessSpec, Topology, redis_password_file
from services.common.tls import ServiceTLS

start_timeout_s = 30.0
"""How long one process may take to answer its health check after it starts."""

stop_timeout_s = 8.0
"""How long the processes get to exit after SIGTERM before they are killed."""

ROOT = Path(__file__).resolve().parents[2]


def pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL --`: the kernel kills the child when its parent dies.

    Done by util-linux's setpriv rather than a Python preexec_fn: running Python code between fork
    and exec in a process that has gRPC threads can deadlock the child before it ever execs. Note
    that the death signal follows the parent *thread*: start children from a long-lived thread.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def admin_credentials(tls_dir: str) -> grpc.ChannelCredentials:
    """TLS with the admin certificate (what operators' tools present to a secure cluster)."""
    return ServiceTLS.load(tls_dir, ADMIN_NAME).channel_credentials()


def admin_channel(address: str, tls_dir: str) -> grpc.Channel:
    """A blocking channel to a service: mTLS as admin when `tls_dir` is set, else plaintext."""
    if not tls_dir:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, admin_credentials(tls_dir))


def healthy(spec: ProcessSpec, timeout_s: float = 1.0, tls_dir: str = "") -> bool:
    """Does the process answer its health check now? (As admin, in a secure cluster.)"""
    try:
        if spec.role == "proxy":
            return ProxyControl(spec.control, timeout_s=timeout_s).healthy()
        if spec.role == "redis":
            host, port = spec.address.rsplit(":", 1)
            username = password = None
            if tls_dir:
                username = f"store-{spec.zone}"
                password = redis_password_file(Path(tls_dir), username).read_text().strip()
            with redis.Redis(
                host=host, port=int(port), socket_timeout=timeout_s, username=username, password=password
            ) as client:
                return bool(client.ping())
        if spec.role == "etcd":
            scheme, context = "http", None
            if tls_dir:
                directory = Path(tls_dir)
                scheme, context = "https", ssl.create_default_context(cafile=str(directory / "ca.pem"))
                context.load_cert_chain(str(directory / f"{ADMIN_NAME}.pem"), str(directory / f"{ADMIN_NAME}.key"))
            with urllib.request.urlopen(f"{scheme}://{spec.address}/health", timeout=timeout_s, context=context) as got:
                return bool(json.loads(got.read()).get("health") == "true")
        with admin_channel(spec.address, tls_dir) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
    except Exception:
        return False


@dataclass(slots=True)
class Running:
    spec: ProcessSpec
    process: subprocess.Popen[bytes]
    log_path: Path


class Launcher:
    def __init__(
        self,
        topology: Topology,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.topology = topology
        self.state_dir = Path(state_dir)
        self.env = dict(os.environ if env is None else env)
        self.running: dict[str, Running] = {}
        self.on_event = on_event or (lambda text: None)
        # host:port of the control endpoint of the program that owns this launcher (`ringcast up`'s),
        # recorded in cluster.json for `ringcast chaos restart`; "" when there is none.
        self.control = ""

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    def start_all(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.topology.tls_dir:
            made = pki.secure(self.topology)
            if made:
                self.on_event(f"made in {self.topology.tls_dir}: {', '.join(made)}")
        try:
            for spec in self.topology.processes:
                self.start(spec)
                self.wait_healthy(spec)
        except BaseException:
            self.stop_all()
            raise
        self.write_state()

    def start(self, spec: ProcessSpec) -> Running:
        if spec.data_dir:
            Path(spec.data_dir).mkdir(parents=True, exist_ok=True)
        env = dict(self.env)
        env.update(spec.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        log_path = self.log_dir / f"{spec.name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [*pdeathsig_prefix(), *spec.argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        running = self.running[spec.name] = Running(spec, process, log_path)
        self.on_event(f"started {spec.name} pid={process.pid} on {spec.address}")
        return running

    def wait_healthy(self, spec: ProcessSpec, timeout_s: float = start_timeout_s) -> None:
        deadline = time.monotonic() + timeout_s
        running = self.running[spec.name]
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {running.process.returncode}; see {running.log_path}")
            if healthy(spec, timeout_s=0.5, tls_dir=self.topology.tls_dir):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{spec.name} did not become healthy within {timeout_s:.0f} s; see {running.log_path}")

    def kill(self, name: str, signal_number: int = signal.SIGKILL) -> None:
        running = self.running[name]
        if running.process.poll() is None:
            running.process.send_signal(signal_number)
            if signal_number in (signal.SIGKILL, signal.SIGTERM):
                running.process.wait(timeout=stop_timeout_s)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process keeps its sockets and leases but does nothing (a gray failure)."""
        self.kill(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT a paused process."""
        self.kill(name, signal.SIGCONT)

    def proxy(self, name: str) -> ProxyControl:
        """The control of the fault proxy `name` (a process of role "proxy")."""
        spec = self.topology.named(name)
        if spec.role != "proxy":
            raise ValueError(f"{name} is a {spec.role}, not a proxy")
        return ProxyControl(spec.control)

    def restart(self, name: str, *, wait: bool = True) -> None:
        spec = self.running[name].spec
        self.kill(name)
        self.start(spec)
        if wait:
            self.wait_healthy(spec)
        self.write_state()

    def alive(self, name: str) -> bool:
        return self.running[name].process.poll() is None

    def stop_all(self) -> None:
        """SIGTERM every child (gateways first), wait, then SIGKILL what is left."""
        order = list(reversed(list(self.running.values())))
        for running in order:
            if running.process.poll() is None:
                running.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        for running in order:
            try:
                running.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
        self.on_event("stopped every process")

    def write_state(self) -> Path:
        """`cluster.json`: every process with its pid and address, for tools that find and fault them."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "cluster.json"
        processes: list[dict[str, object]] = []
        for running in self.running.values():
            process: dict[str, object] = {
                "name": running.spec.name,
                "role": running.spec.role,
                "zone": running.spec.zone,
                "pid": running.process.pid,
                "address": running.spec.address,
            }
            if running.spec.control:
                process["control"] = running.spec.control
            processes.append(process)
        state: dict[str, object] = {"processes": processes, "gateways": self.topology.gateways}
        if self.topology.tls_dir:
            state["tls_dir"] = self.topology.tls_dir
            state["ca"] = str(Path(self.topology.tls_dir) / "ca.pem")
        if self.control:
            state["control"] = self.control
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        temporary.replace(path)
        return path


def read_state(state_dir: Path) -> dict[str, object]:
    return dict(json.loads((Path(state_dir) / "cluster.json").read_text()))
