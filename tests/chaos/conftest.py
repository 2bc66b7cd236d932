"""The chaos tier's harness: a fresh cluster per test, a workload in the background, fault helpers.

A test starts a cluster of real processes (`cluster` fixture), starts a `Background` workload (its
own thread and event loop), injects faults from the test's own thread — the one that started the
processes, which matters: the kernel kills a child when the *thread* that started it exits — and
then `finish()`es the workload and judges the history with `services.core.checker.check`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from ringcast_tools.chaos.workload import Workload, WorkloadConfig, clock_ms
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import Topology, local_topology
from services.core.checker import History, Outcome, PublishOp, check
from services.internal.v1 import placement_service_pb2 as placement_pb2
from services.internal.v1 import placement_service_pb2_grpc as placement_grpc

CHANNELS = ("chaos-0", "chaos-1", "chaos-2")
"""The workload's channels; `BUSY` is the one a test breaks the owner of."""
BUSY = CHANNELS[0]

ClusterFactory = Callable[..., Launcher]
LoadStarter = Callable[[Launcher, "WorkloadConfig"], "Background"]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """`make_cluster(**local_topology_options)`: start a fresh cluster in tmp_path; stopped afterwards."""
    started: list[Launcher] = []

    def make(env: dict[str, str] | None = None, **options: object) -> Launcher:
        """`env`: variables added to every process's environment (say, RINGCAST_BUGS)."""
        topology: Topology = local_topology(tmp_path / "data", **options)  # type: ignore[arg-type]
        launcher = Launcher(topology, tmp_path / "state", env={**os.environ, **(env or {})})
        started.append(launcher)
        launcher.start_all()
        return launcher

    yield make
    for launcher in started:
        launcher.stop_all()
        print(f"cluster logs: {launcher.log_dir}")


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> Launcher:
    """The default local topology: etcd, placement, store ×3, channel ×3, gateway ×2."""
    return make_cluster()


@pytest.fixture
def start_load(make_cluster: ClusterFactory) -> Iterator[LoadStarter]:
    """`start_load(cluster, config)`: a `Background` workload against `cluster`. A workload the test
    did not finish (it failed half-way) is cancelled before the cluster is stopped, so it never
    outlives its test."""
    started: list[Background] = []

    def start(cluster: Launcher, config: WorkloadConfig) -> Background:
        background = Background(cluster, config)
        started.append(background)
        return background

    yield start
    for background in started:
        background.cancel()


class Background:
    """A `Workload` running on its own thread and event loop while the test breaks things."""

    def __init__(
        self, cluster: Launcher | Sequence[str], config: WorkloadConfig, channels: Sequence[str] = CHANNELS
    ) -> None:
        gateways = cluster.topology.gateways if isinstance(cluster, Launcher) else cluster
        self.workload = Workload(gateways, channels, config)
        self.stop = threading.Event()
        self.history: History | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[History] | None = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="workload", daemon=True)
        self.thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        async def main() -> History:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self.workload.run(self.stop))
            self._started.set()
            return await self._task

        try:
            self.history = asyncio.run(main())
        except BaseException as error:  # handed to the test's thread by finish()
            self.error = error

    def cancel(self, timeout_s: float = 15.0) -> None:
        """Abandon the run at once (no catch-up, no final logs); a no-op once it has finished."""
        if self.thread.is_alive() and self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self.thread.join(timeout_s)

    def wait_for_acks(
        self, count: int, *, since_ms: int = 0, channel: str | None = None, timeout_s: float = 20.0
    ) -> int:
        """Block until `count` operations were acked since `since_ms`; fail the test if that takes too long."""
        deadline = time.monotonic() + timeout_s
        while True:
            acked = self.workload.acks_since(since_ms, channel)
            if acked >= count:
                return acked
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail(
                    f"no progress: {acked} of {count} acks on {channel or 'any channel'} within {timeout_s:.0f} s; "
                    f"{self.workload.summary()}"
                )
            time.sleep(0.05)

    def finish(self, timeout_s: float = 150.0) -> History:
        """End the load phase, wait for catch-up and the final logs, and return the history."""
        self.stop.set()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            pytest.fail(f"the workload did not finish within {timeout_s:.0f} s; {self.workload.summary()}")
        if self.error is not None:
            raise self.error
        assert self.history is not None
        return self.history


def assert_history_clean(background: Background, history: History) -> None:
    """0 lost, 0 duplicated, 0 gaps, 0 reorders; every subscriber caught up; acks in real-time order."""
    summary = background.workload.summary()
    print(summary)
    violations = check(history)
    assert violations == [], "\n".join([str(summary), *map(str, violations[:50])])
    assert summary.lagging_subscribers == [], f"subscribers never caught up: {summary}"
    order = real_time_order_violations(history)
    assert order == [], "\n".join([str(summary), *order[:50]])


def acked_between(history: History, invoked_from_ms: int, completed_before_ms: int) -> list[PublishOp]:
    """Operations invoked at or after `invoked_from_ms` and acknowledged before `completed_before_ms`."""
    return [
        op
        for op in history.publishes
        if op.outcome is Outcome.OK and invoked_from_ms <= op.invoke_ms and op.complete_ms < completed_before_ms
    ]


def real_time_order_violations(history: History) -> list[str]:
    """G2 in real time: a publish invoked after another was acked gets higher serials.

    The checker judges the logs and the acks; this adds what only wall-clock order shows — e.g.
    after an ownership change A→B→A, an owner handing out serials that an earlier ack already used
    or skipped back below.
    """
    found = []
    by_channel: dict[str, list[tuple[int, int, int, int]]] = {}
    for op in history.publishes:
        if op.outcome is Outcome.OK and op.serials:
            by_channel.setdefault(op.channel, []).append(
                (op.invoke_ms, op.complete_ms, min(op.serials), max(op.serials))
            )
    for channel, ops in by_channel.items():
        completed = sorted(ops, key=lambda op: op[1])
        highest = 0
        position = 0
        for invoke_ms, _, low, _ in sorted(ops):
            while position < len(completed) and completed[position][1] < invoke_ms:
                highest = max(highest, completed[position][3])
                position += 1
            if low <= highest:
                found.append(f"REAL_TIME_ORDER channel={channel} op invoked at {invoke_ms} got {low} <= {highest}")
    return found


def owner_of(cluster: Launcher, channel: str, timeout_s: float = 10.0) -> str:
    """The channel node that owns `channel` under placement's ring now (Lookup: takes nothing over)."""
    address = cluster.topology.by_role("placement")[0].address
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as link:
        stub = placement_grpc.PlacementServiceStub(link)
        while True:
            try:
                response = stub.Lookup(placement_pb2.LookupRequest(channel=channel), timeout=2.0)
                if response.owner.id:
                    return str(response.owner.id)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"no owner for {channel!r} within {timeout_s:.0f} s")
            time.sleep(0.05)


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0, interval_s: float = 0.05) -> float:
    """Poll `predicate` until it holds; return how long that took; fail the test after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


def pause(cluster: Launcher, name: str) -> None:
    """SIGSTOP `name` (the launcher's own pause when it has one)."""
    method = getattr(cluster, "pause", None)
    if callable(method):
        method(name)
    else:
        cluster.kill(name, signal.SIGSTOP)


def resume(cluster: Launcher, name: str) -> None:
    method = getattr(cluster, "resume", None)
    if callable(method):
        method(name)
    else:
        cluster.kill(name, signal.SIGCONT)


def terminate(cluster: Launcher, name: str) -> None:
    """SIGTERM `name` and wait until it has exited (a graceful stop: it leaves the ring first)."""
    cluster.kill(name, signal.SIGTERM)


__all__ = [
    "BUSY",
    "CHANNELS",
    "Background",
    "ClusterFactory",
    "LoadStarter",
    "LogWatch",
    "acked_between",
    "assert_history_clean",
    "clock_ms",
    "owner_of",
    "pause",
    "resume",
    "terminate",
    "wait_until",
]


class LogWatch:
    """Lines a process logs from now on (its log file in the launcher's state dir)."""

    def __init__(self, cluster: Launcher, name: str) -> None:
        self.path = cluster.running[name].log_path
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            return file.read().decode("utf-8", "replace")

    def search(self, pattern: str) -> list[str]:
        """Every line logged since the watch began that matches `pattern`."""
        return [line for line in self.text().splitlines() if re.search(pattern, line)]

    def wait_for(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        """The first match of `pattern` logged since the watch began; fail the test after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.text())
            if match is not None:
                return match
            if time.monotonic() > deadline:
                pytest.fail(f"{self.path.name} did not log /{pattern}/ within {timeout_s:.0f} s")
            time.sleep(0.01)
