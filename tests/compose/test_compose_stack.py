"""The compose stack, run as users run it (issue #18): `podman-compose up -d` on docker-compose.yml
with the stand-in images of deploy/ci/ (`./dev test --compose` builds them), every healthcheck
passes, and a history-recording workload through the published gateway ports (TLS, a token minted
inside the stack) goes on while `podman kill` takes down, one at a time, the owner of the busiest
channel, a store's Redis, a gateway, and a store for long enough that the stack's Prometheus fires
RingcastProcessDown (and clears it after): the checker finds nothing lost, duplicated, skipped or
out of order, every subscriber caught up. A publish's trace reaches the collector's stand-in with spans
from a gateway, a channel node and a store. `down -v` then leaves nothing behind.
"""

from __future__ import annotations

import collections
import json
import shutil
import time
from collections.abc import Iterator

import grpc
import pytest

from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.chaos.workload import WorkloadConfig, clock_ms
from tests.chaos.conftest import Background, assert_history_clean
from tests.chaos.test_fault_matrix import report
from tests.compose.podman import Stack
from tests.integration.test_prometheus_live import Prometheus, until

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1_200)]

PROJECT = "ringcast"  # docker-compose.yml's `name:`
GATEWAYS = ("127.0.0.1:7410", "127.0.0.1:7411")
CHANNELS = ("compose-0", "compose-1", "compose-2")
BUSY = CHANNELS[0]
UP_S_MAX = 300.0
"""From `up -d` to every healthcheck passing (no images to build: images.sh did that)."""
PROMETHEUS = "127.0.0.1:9090"
ALERT_S_MAX = 150.0
"""RingcastProcessDown fires within this of a store going down (its `for: 1m`, scrapes and rule
evaluations every 5 s)."""
BACK_S_MAX = 120.0
"""A killed container, started again, passes its healthcheck within this."""
PROGRESS_S_MAX = 15.0
"""After a kill, and after the killed container is back, the busy channel acks again within this. A
container started again has a new address: with gRPC's default of one name lookup per 30 s, the
channel that moved back to a restarted owner stalled ~26 s here."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("podman") is None:
        pytest.fail("no podman: run the compose tier with `./dev test --compose` (it sets podman up)")
    stack = Stack(PROJECT)
    stack.compose("down", "-v", timeout=300)  # what an interrupted run left
    started = time.monotonic()
    # --no-deps: podman 4.3 cannot start a container whose `--requires` reach further than one step
    # ("depends on container ... not found in input list"); the services wait for what they need.
    stack.compose("up", "-d", "--no-build", "--no-deps")
    try:
        services = stack.containers()
        stack.wait_healthy([service for service in services if stack.has_healthcheck(service)], UP_S_MAX, started)
        report("compose-up", healthy_after_s=stack.healthy_after_s)
        yield stack
    finally:
        logs = tmp_path_factory.mktemp("compose-logs")
        for service in stack.containers():
            (logs / f"{service}.log").write_text(stack.logs(service, lines=100_000, tail_bytes=None))
        print(f"container logs: {logs}")
        stack.compose("down", "-v", timeout=300)
        left = stack.leftovers()
        assert left == [], f"`down -v` left {left}"


def test_every_service_starts_and_passes_its_healthcheck(stack: Stack) -> None:
    """tls-init made the certificates and exited 0; every other container runs and is healthy (the
    fixture waited for each healthcheck: a missing module or a bad flag never gets there)."""
    assert stack.state("tls-init") == ("exited", 0), stack.logs("tls-init")
    for service in stack.containers():
        if service != "tls-init":
            assert stack.state(service)[0] == "running", f"{service}: {stack.logs(service)}"
    checked = sorted(stack.healthy_after_s)
    assert {"etcd", "gateway-1", "gateway-2", "channel-1", "store-a", "redis-a", "placement-1"} <= set(checked)


@pytest.fixture(scope="module")
def access(stack: Stack) -> tuple[bytes, str]:
    """The stack's CA certificate and a token minted inside it, as docs/operations.md tells users."""
    ca = stack.exec("gateway-1", "cat", "/tls/ca.pem").encode()
    token = stack.exec("gateway-1", "ringcast", "token", "--tls-dir", "/tls", "--sub", "compose-tier").strip()
    return ca, token


def _call(access: tuple[bytes, str], call: str, request: object) -> object:
    """One unary call through whichever gateway answers (each tried for 30 s)."""
    ca, token = access
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=ca), grpc.access_token_call_credentials(token)
    )
    deadline = time.monotonic() + 30
    while True:
        for address in GATEWAYS:
            try:
                with grpc.secure_channel(address, credentials) as link:
                    return getattr(realtime_grpc.RealtimeServiceStub(link), call)(request, timeout=5)
            except grpc.RpcError as error:
                failure = error
        if time.monotonic() > deadline:
            raise failure
        time.sleep(0.5)


def test_a_workload_survives_an_owner_a_redis_a_gateway_and_a_store_killed_and_prometheus_alerts(
    stack: Stack, access: tuple[bytes, str]
) -> None:
    ca, token = access
    config = WorkloadConfig(publishers=6, subscribers=6, duration_s=600, ca=ca, token=token)
    background = Background(list(GATEWAYS), config, CHANNELS)
    try:
        background.wait_for_acks(30, timeout_s=60)
        state = _call(access, "GetChannel", realtime_pb2.GetChannelRequest(channel=BUSY))
        owner = str(state.owner)  # type: ignore[attr-defined]
        assert owner.startswith("channel-"), state
        numbers: dict[str, object] = {"owner": owner}
        for service in (owner, "redis-a", "gateway-1"):
            killed_ms = clock_ms()
            stack.kill(service)
            background.wait_for_acks(5, since_ms=clock_ms(), channel=BUSY, timeout_s=PROGRESS_S_MAX)
            numbers[f"{service}_busy_acked_again_ms"] = clock_ms() - killed_ms
            started = time.monotonic()
            stack.start(service)
            stack.wait_healthy([service], BACK_S_MAX)
            numbers[f"{service}_healthy_again_s"] = round(time.monotonic() - started, 1)
            back_ms = clock_ms()  # the owner that came back owns the busy channel again
            background.wait_for_acks(5, since_ms=back_ms, channel=BUSY, timeout_s=PROGRESS_S_MAX)
            numbers[f"{service}_busy_acked_after_back_ms"] = clock_ms() - back_ms
        # A store down for longer than RingcastProcessDown's `for`: the stack's Prometheus fires it for
        # that store alone, and clears it once the store is back. The workload goes on meanwhile.
        prometheus = Prometheus(PROMETHEUS)

        def firing() -> list[str]:
            alerts = prometheus.alerts("RingcastProcessDown")
            return sorted(alert["labels"]["instance"] for alert in alerts if alert["state"] == "firing")

        started = time.monotonic()
        stack.kill("store-a")
        background.wait_for_acks(5, since_ms=clock_ms(), channel=BUSY, timeout_s=PROGRESS_S_MAX)
        until("RingcastProcessDown firing for store-a", lambda: firing() == ["store-a:7417"], ALERT_S_MAX)
        numbers["store-a_alert_firing_after_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        stack.start("store-a")
        stack.wait_healthy(["store-a"], BACK_S_MAX)
        until("RingcastProcessDown cleared", lambda: prometheus.alerts("RingcastProcessDown") == [], 60)
        numbers["store-a_alert_cleared_after_s"] = round(time.monotonic() - started, 1)
        background.wait_for_acks(5, since_ms=clock_ms(), channel=BUSY, timeout_s=PROGRESS_S_MAX)
    except BaseException:
        background.cancel()
        raise
    history = background.finish()
    assert_history_clean(background, history)
    # A killed Redis keeps every write it acknowledged (append-only file, fsync always): its store
    # finds nothing missing or damaged at rest afterwards (the quorum would hide a loss from the
    # history, so the stores' own scrubs are asked).
    for store in ("store-a", "store-b", "store-c"):
        damage = [line for line in stack.logs(store, 100_000, None).splitlines() if " at rest" in line]
        assert damage == [], f"{store} lost entries at rest: {damage[:5]}"
    summary = background.workload.summary()
    assert summary.subscriber_resumes > 0, "the gateway kill should have moved subscribers"
    report("compose-workload", **numbers, ops_ok=summary.ok, messages_acked=summary.messages_acked)


def test_a_publish_is_traced_through_gateway_channel_and_store(stack: Stack, access: tuple[bytes, str]) -> None:
    """The stand-in collector (deploy/ci/otlp_receiver.py) records every span it gets; the trace of
    a publish has a gateway's, a channel node's and a store's. Spans leave each service in batches
    (every 5 s), so this waits a little for them."""
    message = message_pb2.Message(id="traced-1", data=b"where did it go")
    _call(access, "Publish", realtime_pb2.PublishRequest(channel="compose-traced", messages=[message]))
    deadline = time.monotonic() + 60
    while True:
        text = stack.exec("otel-collector", "sh", "-c", "cat /spans/spans.jsonl 2>/dev/null || true")
        traces: dict[str, set[str]] = collections.defaultdict(set)
        for line in text.splitlines():
            span = json.loads(line)
            traces[span["trace_id"]].add(span["service"].split("-")[0])
        complete = [trace for trace, services in traces.items() if {"gateway", "channel", "store"} <= services]
        if complete:
            report("compose-traces", traces=len(traces), complete=len(complete))
            return
        if time.monotonic() > deadline:
            kinds = collections.Counter(frozenset(services) for services in traces.values())
            pytest.fail(f"no trace with gateway, channel and store spans among {len(traces)}: {kinds.most_common(5)}")
        time.sleep(2)
