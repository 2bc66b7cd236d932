"""The Node.js example (examples/node) against a real local cluster: its own tests, and a subscriber that
resumes with no gap and no duplicate across a SIGKILLed gateway and a SIGKILLed channel owner."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher, pdeathsig_prefix

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"

npm_ci_timeout_s = 600.0
node_tests_timeout_s = 300.0
line_timeout_s = 60.0
"""How long the subscriber may take to print a serial: a liveness bound that covers a takeover."""
publish_deadline_s = 60.0
"""How long one publish is retried (UNAVAILABLE, same id) while the cluster recovers."""
retry_backoff_s = 0.1
stop_timeout_s = 10.0
"""How long subscribe.js may take to exit after SIGTERM."""


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the example's packages installed (`./dev setup` does both)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for examples/node: run ./dev setup, which installs them")
    if not (EXAMPLE / "node_modules").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=npm_ci_timeout_s,
        )
        assert installed.returncode == 0, installed.stdout + installed.stderr
    return node


def node_env(gateways: list[str]) -> dict[str, str]:
    return dict(os.environ, RINGCAST_GATEWAYS=",".join(gateways))


def test_the_node_example_tests_pass(cluster: Launcher, node: str) -> None:
    result = subprocess.run(
        [node, "--test", "test/ringcast.test.js"],
        cwd=EXAMPLE,
        env=node_env(cluster.topology.gateways),
        capture_output=True,
        text=True,
        timeout=node_tests_timeout_s,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class JsonLines:
    """A child's stdout, one JSON object a line, read on a thread so that the test can wait with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.received: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._ended = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout_s: float) -> bool:
        """Reads one line into `received`; False at the end of the stream."""
        line = self._lines.get(timeout=timeout_s)
        if line is None:
            self._ended = True
            return False
        self.received.append(json.loads(line))
        return True

    def wait_for_serial(self, serial: int, why: str) -> None:
        deadline = time.monotonic() + line_timeout_s
        while not any(item.get("serial") == serial for item in self.received):
            try:
                more = self._next(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                more = False
            assert more, f"{why}: serial {serial} not printed; printed {self.received[-3:]}"

    def rest(self) -> None:
        """Reads what is left, once the child has exited."""
        while not self._ended and self._next(line_timeout_s):
            pass


def publish(api: realtime_grpc.RealtimeServiceStub, channel: str, message_id: str) -> int:
    """One message, retried with the same id on UNAVAILABLE until `publish_deadline_s`; its serial."""
    request = realtime_pb2.PublishRequest(
        channel=channel, messages=[message_pb2.Message(id=message_id, data=message_id.encode())]
    )
    deadline = time.monotonic() + publish_deadline_s
    while True:
        try:
            return int(api.Publish(request, timeout=10).serials[0])
        except grpc.RpcError as error:
            retryable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not retryable or time.monotonic() > deadline:
                raise
            time.sleep(retry_backoff_s)  # a backoff between tries, not a wait for anything


def test_subscribe_js_resumes_with_no_gap_and_no_duplicate_across_killed_gateway_and_owner(
    cluster: Launcher, node: str, tmp_path: Path
) -> None:
    gateways = cluster.topology.gateways
    first = next(p.name for p in cluster.topology.processes if p.address == gateways[0])
    channel, per_phase = "node-resume", 10
    stderr_path = tmp_path / "subscribe.stderr"
    killed: list[str] = []
    with stderr_path.open("w") as stderr, grpc.insecure_channel(gateways[1]) as link:
        api = realtime_grpc.RealtimeServiceStub(link)
        subscriber = subprocess.Popen(
            [*pdeathsig_prefix(), node, "subscribe.js", channel, "--after", "0", "--prefer-first"],
            cwd=EXAMPLE,
            env=node_env(gateways),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert subscriber.stdout is not None
        lines = JsonLines(subscriber.stdout)
        expected: dict[int, str] = {}

        def publish_phase(phase: int) -> None:
            for index in range(per_phase):
                message_id = f"p{phase}-m{index}"
                expected[publish(api, channel, message_id)] = message_id
            lines.wait_for_serial(max(expected), f"phase {phase}; stderr: {stderr_path.read_text()}")

        try:
            publish_phase(1)  # the subscriber follows through `first` (--prefer-first)
            cluster.kill(first, signal.SIGKILL)
            killed.append(first)
            publish_phase(2)
            assert f"resuming after serial {per_phase} at {gateways[1]}" in stderr_path.read_text()
            owner = api.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=10).owner
            cluster.kill(owner, signal.SIGKILL)
            killed.append(owner)
            publish_phase(3)
            now = api.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=10)
            assert now.owner != owner and now.last_serial == 3 * per_phase
        finally:
            subscriber.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                subscriber.wait(timeout=stop_timeout_s)
            subscriber.kill()  # only if it is still running (the assertion on its exit code then fails)
            subscriber.wait()
            for name in killed:
                cluster.restart(name)
        lines.rest()
    assert subscriber.returncode == 0, stderr_path.read_text()
    assert [item.get("serial") for item in lines.received] == list(range(1, 3 * per_phase + 1))
    assert sorted(expected) == list(range(1, 3 * per_phase + 1))
    assert [(item["id"], item["data"]) for item in lines.received] == [
        (expected[s], expected[s]) for s in sorted(expected)
    ]
    # One publisher, one message at a time: serial order is publish order.
    assert [expected[s] for s in sorted(expected)] == [f"p{p}-m{i}" for p in (1, 2, 3) for i in range(per_phase)]


def test_the_node_example_speaks_tls_with_a_token(node: str, tmp_path: Path) -> None:
    """Against a secure cluster (`ringcast up`'s default): RINGCAST_CA and RINGCAST_TOKEN are all the
    example needs; without the token the gateway refuses it, and the example says why."""
    from ringcast_tools.cluster import tokens
    from ringcast_tools.cluster.topology import local_topology

    launcher = Launcher(local_topology(tmp_path / "data", tls_dir=tmp_path / "tls"), tmp_path)
    launcher.start_all()
    try:
        token = tokens.mint(tmp_path / "tls" / tokens.SIGNING_FILE, "node-user", {"node:*": ["*"]}, 300)
        secure_env = dict(
            node_env(launcher.topology.gateways), RINGCAST_CA=str(tmp_path / "tls" / "ca.pem"), RINGCAST_TOKEN=token
        )

        def run(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([node, *arguments], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60)

        published = run(secure_env, "publish.js", "node:secure", "hello", "--id", "n1")
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout.splitlines()[0])["serial"] == 1
        refused = run({**secure_env, "RINGCAST_TOKEN": ""}, "publish.js", "node:secure", "again")
        assert refused.returncode == 1 and "TOKEN_MISSING" in refused.stderr, refused.stderr
        outside = run(secure_env, "publish.js", "news:1", "again")
        assert outside.returncode == 1 and "CAPABILITY_DENIED" in outside.stderr, outside.stderr
    finally:
        launcher.stop_all()
