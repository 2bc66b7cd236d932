"""Services start in any order and converge: real processes, etcd and Redis started last.

podman-compose ignores `depends_on` conditions, and real restarts ignore start order too. Every
service started before etcd and its Redis must wait for them (saying so in its log), not crash, and
serve once they come.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import ringcast
from ringcast_tools.cluster.compose import readyz_probe
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology

pytestmark = pytest.mark.slow


def wait_logged(launcher: Launcher, name: str, pattern: str, timeout_s: float = 30.0) -> None:
    """Until process `name` has logged a line matching `pattern`, failing the test after `timeout_s`;
    the process must stay alive meanwhile."""
    running = launcher.running[name]
    deadline = time.monotonic() + timeout_s
    while not re.search(pattern, running.log_path.read_text(errors="replace")):
        assert running.process.poll() is None, f"{name} exited with {running.process.returncode}"
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not log /{pattern}/ within {timeout_s:.0f} s")
        time.sleep(0.05)


def probe(address: str, path: str) -> tuple[int, str]:
    """GET http://address/path: the status and the first line (services/common/probes.py)."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode().splitlines()[0]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().splitlines()[0]


def wait_probed(address: str, path: str, status: int, timeout_s: float = 30.0) -> str:
    """Until GET `path` answers `status`; its first line."""
    deadline = time.monotonic() + timeout_s
    while True:
        got, line = probe(address, path)
        if got == status:
            return line
        if time.monotonic() > deadline:
            pytest.fail(f"{address}{path} answered {got} {line!r}, not {status}, for {timeout_s:.0f} s")
        time.sleep(0.1)


def compose_healthy(address: str) -> bool:
    """What the compose file's healthcheck of a ringcast service says (bash alone, no Python)."""
    port = int(address.rsplit(":", 1)[1])
    return subprocess.run(["bash", "-c", readyz_probe(port)], timeout=10, check=False).returncode == 0


def test_services_started_before_etcd_and_redis_wait_for_them_and_then_serve(tmp_path: Path) -> None:
    topology = local_topology(tmp_path / "data", engine="redis")
    launcher = Launcher(topology, tmp_path)
    launcher.log_dir.mkdir(parents=True, exist_ok=True)
    later = [spec for spec in topology.processes if spec.role in ("etcd", "redis")]
    first = [spec for spec in reversed(topology.processes) if spec not in later]  # gateways first
    waiting = {
        "store": r"redis at \S+ is not answering yet .*; waiting for it",
        "channel": r"registering \S+ failed",
        "placement": r"reading membership failed",
    }
    try:
        for spec in first:
            launcher.start(spec)
        for spec in first:
            if spec.role in waiting:
                wait_logged(launcher, spec.name, waiting[spec.role])
        assert [spec.name for spec in first if not launcher.alive(spec.name)] == []
        # Alive, and not ready, each saying why (the probes an orchestrator would call).
        unready = {spec.name: wait_probed(spec.metrics, "/readyz", 503) for spec in first}
        assert all(probe(spec.metrics, "/healthz") == (200, "ok") for spec in first)
        assert unready["store-a"] == "starting: gRPC is not serving"  # it waits for its Redis first
        assert unready["channel-1"] == "no valid etcd lease (registering)"
        assert unready["gateway-1"] == "no ring from placement yet"
        assert unready["placement-1"] == "membership not read from etcd yet"
        assert [spec.name for spec in first if compose_healthy(spec.metrics)] == []

        for spec in later:
            launcher.start(spec)
        for spec in topology.processes:
            launcher.wait_healthy(spec)
        for spec in first:
            if spec.role == "store":
                wait_logged(launcher, spec.name, r"redis at \S+ answers after")
            assert wait_probed(spec.metrics, "/readyz", 200) == "ready"
            assert compose_healthy(spec.metrics), spec.name

        async def converge() -> None:
            channel = "start-order"
            serials = []
            for index, gateway in enumerate(topology.gateways):
                async with ringcast.Client([gateway], timeout_s=60.0) as client:
                    serials.append(await client.publish(channel, f"m{index}".encode(), id=f"m{index}"))
            assert serials == [1, 2]
            async with ringcast.Client(topology.gateways) as client:
                page = await client.history(channel)
            assert [(message.serial, message.id) for message in page.messages] == [(1, "m0"), (2, "m1")]

        asyncio.run(converge())
        assert [spec.name for spec in topology.processes if not launcher.alive(spec.name)] == []
    finally:
        launcher.stop_all()
