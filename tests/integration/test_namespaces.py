"""`ringcast namespace` against a real etcd, and the followers that apply namespaces without
restarts (services/common/namespaces.py, issue #19)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from ringcast import error_info
from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from services.common import namespaces
from services.common.etcd import Etcd
from services.core.namespaces import BUILT_IN, DEFAULT, NamespaceOptions, Namespaces


def _cli(etcd: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI from a directory with no local cluster in it (so it dials `etcd` in plaintext)."""
    return subprocess.run(
        [sys.executable, "-m", "ringcast_tools.cli", "namespace", *args, "--etcd", etcd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _records(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert result.returncode == 0, result.stderr
    return {record["name"]: record for record in map(json.loads, result.stdout.splitlines())}


def test_set_get_list_and_delete_from_the_command_line(etcd_endpoint: str, tmp_path: Path) -> None:
    chat = _records(_cli(etcd_endpoint, tmp_path, "set", "chat", "--retention-hours", "24", "--no-presence", "--json"))[
        "chat"
    ]
    assert chat == {"name": "chat", "own": True, **json.loads(NamespaceOptions(24.0, presence=False).to_json())}
    shown = _records(_cli(etcd_endpoint, tmp_path, "get", "chat", "--json"))["chat"]
    assert shown["retention_hours"] == 24.0 and shown["presence"] is False and shown["own"] is True
    unset = _records(_cli(etcd_endpoint, tmp_path, "get", "news", "--json"))["news"]
    assert unset["own"] is False and unset["retention_hours"] == BUILT_IN.retention_hours
    listed = _records(_cli(etcd_endpoint, tmp_path, "list", "--json"))
    assert sorted(listed) == ["chat", DEFAULT] and listed[DEFAULT]["own"] is False

    refused = _cli(etcd_endpoint, tmp_path, "set", "chat", "--message-bytes-max", "70000")
    assert refused.returncode == 2 and "message_bytes_max:" in refused.stderr, refused.stderr
    refused = _cli(etcd_endpoint, tmp_path, "set", "chat:x", "--no-presence")
    assert refused.returncode == 2 and "name:" in refused.stderr, refused.stderr
    assert _records(_cli(etcd_endpoint, tmp_path, "get", "chat", "--json"))["chat"]["retention_hours"] == 24.0

    table = _cli(etcd_endpoint, tmp_path, "list")
    assert table.returncode == 0 and "retention_hours=24.0 presence=False" in table.stdout, table.stdout

    deleted = _cli(etcd_endpoint, tmp_path, "delete", "chat")
    assert deleted.returncode == 0 and "deleted namespace chat" in deleted.stderr
    assert _records(_cli(etcd_endpoint, tmp_path, "get", "chat", "--json"))["chat"]["own"] is False


def test_followers_see_a_change_within_a_second_and_refuse_a_bad_value_whole(etcd_endpoint: str) -> None:
    async def scenario() -> tuple[list[Namespaces], float]:
        etcd = await Etcd.connect(etcd_endpoint)
        seen: list[Namespaces] = []
        changed = asyncio.Event()

        def on_change(current: Namespaces) -> None:
            seen.append(current)
            changed.set()

        follower = asyncio.create_task(namespaces.follow(etcd, on_change))
        try:
            await asyncio.wait_for(changed.wait(), 5)  # the first read: nothing set
            changed.clear()
            await namespaces.put(etcd, "chat", NamespaceOptions(history=False))
            written = time.monotonic()
            await asyncio.wait_for(changed.wait(), 5)
            took = time.monotonic() - written
            changed.clear()
            await etcd.put(namespaces.PREFIX + "chat", b'{"member_cap": 0}', 0)  # by hand, and wrong
            await asyncio.wait_for(changed.wait(), 5)
            return seen, took
        finally:
            follower.cancel()
            await etcd.close()

    seen, took = asyncio.run(scenario())
    assert [each.options for each in seen] == [{}, {"chat": NamespaceOptions(history=False)}, {}]
    assert seen[1].for_channel("chat:1").history is False
    assert seen[2].for_channel("chat:1") == BUILT_IN  # refused whole: default's options
    assert took < 2.0  # issue #19: a change takes effect within 2 s everywhere


def test_a_gateway_applies_a_namespace_s_largest_message_rate_and_history_within_two_seconds(
    cluster: Launcher,
) -> None:
    """Options written to etcd reach a running gateway (no restart): a message above the namespace's
    largest is refused with MESSAGE_TOO_LARGE and the namespace's limit, a burst above its rate with
    RATE_LIMITED, a History read with HISTORY_DISABLED (a channel of another namespace is untouched);
    deleting the options lifts all three."""
    etcd = cluster.topology.named("etcd").address
    gateway = cluster.topology.gateways[0]
    strict = NamespaceOptions(message_bytes_max=100, publish_rate=5.0, history=False)

    def write(options: NamespaceOptions | None) -> None:
        async def run() -> None:
            client = await Etcd.connect(etcd)
            try:
                await (
                    namespaces.delete(client, "strict")
                    if options is None
                    else namespaces.put(client, "strict", options)
                )
            finally:
                await client.close()

        asyncio.run(run())

    def publish(api: realtime_grpc.RealtimeServiceStub, channel: str, data: bytes, count: int = 1) -> None:
        messages = [message_pb2.Message(id=f"{time.monotonic_ns()}-{n}", data=data) for n in range(count)]
        api.Publish(realtime_pb2.PublishRequest(channel=channel, messages=messages), timeout=10)

    def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
        try:
            call()
        except grpc.RpcError as error:
            info = error_info(error)
            return error.code(), info.reason if info else "", dict(info.metadata) if info else {}
        return grpc.StatusCode.OK, "", {}

    with grpc.insecure_channel(gateway) as link:
        api = realtime_grpc.RealtimeServiceStub(link)
        publish(api, "strict:a", b"x" * 1_000)  # nothing set yet: the platform's limits
        history = lambda: api.History(realtime_pb2.HistoryRequest(channel="strict:a"), timeout=10)  # noqa: E731
        history()
        write(strict)
        written = time.monotonic()
        while refused(lambda: publish(api, "strict:a", b"x" * 101))[1] != Reason.MESSAGE_TOO_LARGE:
            assert time.monotonic() - written < 2.0, "the gateway did not apply the namespace within 2 s"
            time.sleep(0.05)
        code, reason, metadata = refused(lambda: publish(api, "strict:a", b"x" * 101))
        assert (code, reason, metadata["limit"]) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.MESSAGE_TOO_LARGE, "100")
        publish(api, "other:a", b"x" * 1_000)  # another namespace: the platform's limits
        code, reason, metadata = refused(history)
        assert (code, reason, metadata) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.HISTORY_DISABLED,
            {"namespace": "strict"},
        )
        api.History(realtime_pb2.HistoryRequest(channel="other:a"), timeout=10)
        # 5 messages a second, 2 s of burst: 10 go, the 11th waits.
        publish(api, "strict:b", b"y", count=10)
        code, reason, metadata = refused(lambda: publish(api, "strict:b", b"y"))
        assert (code, reason, metadata["limit"], metadata["rate"]) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            Reason.RATE_LIMITED,
            "channel",
            "5",
        )
        write(None)
        deleted = time.monotonic()
        while refused(history)[1] == Reason.HISTORY_DISABLED:
            assert time.monotonic() - deleted < 2.0, "the gateway did not drop the namespace within 2 s"
            time.sleep(0.05)
        publish(api, "strict:a", b"x" * 1_000)
