"""Fixtures shared by the integration tests (real processes on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology
from tests.integration.etcd import EtcdServer
from tests.integration.procs import ServiceProcesses
from tests.integration.secure_cluster import HonestWorkload, Secure


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh single-member etcd for one test, on free ports with its own data dir; killed afterwards.
    `etcd_server.restart()` kills it and starts it again on the same data dir and ports."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    """host:port of the test's etcd, what `Etcd.connect` and `--etcd` take."""
    return etcd_server.endpoint


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A whole local cluster of real processes (`local_topology`), one per test module: etcd,
    placement, 3 stores, 3 channel nodes, 2 gateways. Tests that kill a process restart it."""
    state = tmp_path_factory.mktemp("cluster")
    launcher = Launcher(local_topology(state / "data"), state)
    launcher.start_all()
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ServiceProcesses]:
    """Service processes started by one test, each stopped when it ends (logs under tmp_path/logs)."""
    with ServiceProcesses(tmp_path / "logs") as started:
        yield started


@pytest.fixture(scope="module")
def honest(secure: Secure) -> Iterator[HonestWorkload]:
    """Publishing and subscribing with 2-second tokens beside a module's tests on its `secure` cluster
    (a fixture the module defines); judged by the history checker when the module is done."""
    workload = HonestWorkload(secure)
    workload.start()
    yield workload
    workload.stop()
