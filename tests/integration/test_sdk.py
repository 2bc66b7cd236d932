"""The Python SDK against a real cluster: etcd, placement, 3 stores, 3 channel nodes, 2 gateways.

The faults are real: SIGKILL of the subscriber's gateway and of the channel's owner, SIGSTOP of
the publisher's gateway. What the application sees is checked from the outside: every serial once,
in order, with the ids that were published; each retried id stored once.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ringcast
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import local_topology

ROOT = Path(__file__).resolve().parents[2]


def gateway_names(cluster: Launcher) -> list[str]:
    return [spec.name for spec in cluster.topology.by_role("gateway")]


async def stored_ids(client: ringcast.Client, channel: str) -> list[str]:
    return [message.id async for message in client.history_all(channel)]


def test_publish_history_subscribe_and_bad_input(cluster: Launcher) -> None:
    async def scenario() -> None:
        async with ringcast.Client(cluster.topology.gateways) as client:
            first = await client.publish("sdk-basics", "hello", name="greeting", headers={"k": "v"})
            again = await client.publish("sdk-basics", "hello", id=f"{client.client_id}:1")
            assert again == first  # the generated id, published again: the original serial, nothing stored
            serials = await client.publish_many("sdk-basics", [f"m{index}" for index in range(250)])
            assert serials == list(range(first + 1, first + 251))  # 3 batches, in order

            page = await client.history("sdk-basics", limit=100)
            assert [message.serial for message in page.messages] == list(range(1, 101))
            assert page.messages[0].name == "greeting" and dict(page.messages[0].headers) == {"k": "v"}
            newest = await client.history("sdk-basics", limit=100, reverse=True)
            assert newest.messages[0].serial == 251 and newest.has_next
            assert len([message async for message in client.history_all("sdk-basics", page_size=64)]) == 251

            info = await client.get_channel("sdk-basics")
            assert info.last_serial == 251 and info.owner.startswith("channel-")

            received = []
            async with client.subscribe("sdk-basics", rewind=3) as subscription:
                async for message in subscription:
                    received.append(message.serial)
                    if len(received) == 3:
                        break
            assert received == [249, 250, 251]

            rpcs = client.stats.publish_rpcs
            with pytest.raises(ringcast.InvalidArgument) as refused:
                await client.publish("bad name!", "x")
            assert refused.value.reason == "CHANNEL_NAME_INVALID"
            assert client.stats.publish_rpcs == rpcs + 1 and client.stats.retries == 0  # refused, never retried

    asyncio.run(scenario())


def test_coalescing_turns_1000_concurrent_publishes_into_few_rpcs(cluster: Launcher) -> None:
    async def scenario() -> tuple[int, int]:
        async with ringcast.Client(cluster.topology.gateways) as client:
            serials = await asyncio.gather(*(client.publish("sdk-coalesce", f"m{index}") for index in range(1000)))
            assert sorted(serials) == list(range(1, 1001))
            assert len(await stored_ids(client, "sdk-coalesce")) == 1000
            return client.stats.publish_calls, client.stats.publish_rpcs

    calls, rpcs = asyncio.run(scenario())
    print(f"coalescing: {calls} concurrent publish() calls -> {rpcs} Publish RPCs")
    assert rpcs <= calls // 10  # at most 100 messages a batch: 10 is the floor, a linger of 2 ms adds a few


def test_one_bad_publish_does_not_fail_the_others_in_its_batch(cluster: Launcher) -> None:
    async def scenario() -> None:
        async with ringcast.Client(cluster.topology.gateways) as client:
            too_large = b"x" * (64 * 1024 + 1)
            outcomes = await asyncio.gather(
                *(client.publish("sdk-split", too_large if index == 7 else f"m{index}") for index in range(20)),
                return_exceptions=True,
            )
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            assert len(failures) == 1 and isinstance(failures[0], ringcast.InvalidArgument)
            assert failures[0].reason == "MESSAGE_TOO_LARGE", failures[0]
            assert sorted(outcome for outcome in outcomes if isinstance(outcome, int)) == list(range(1, 20))
            assert client.stats.batches_split >= 1

    asyncio.run(scenario())


def test_subscriber_survives_kill_of_its_gateway_and_of_the_owner(cluster: Launcher) -> None:
    """SIGKILL of the gateway the subscriber streams from, then of the channel's owner: the
    application sees serials 1..N exactly once, in order, with the ids published."""
    channel, total = "sdk-survive", 300
    first_gateway, second_gateway = cluster.topology.gateways
    killed: list[str] = []

    async def scenario() -> tuple[list[tuple[int, str]], dict[int, str], ringcast.ClientStats]:
        published: dict[int, str] = {}
        received: list[tuple[int, str]] = []
        async with (
            ringcast.Client([first_gateway, second_gateway], attempt_timeout_s=2.0) as subscriber,
            ringcast.Client([second_gateway], timeout_s=30.0) as publisher,
        ):
            owner = (await publisher.get_channel(channel)).owner

            async def publish_all() -> None:
                for index in range(total):
                    serial = await publisher.publish(channel, f"m{index}", id=f"survive-{index}")
                    published[serial] = f"survive-{index}"

            publishing = asyncio.create_task(publish_all())
            async with subscriber.subscribe(channel, after=0) as subscription:
                async for message in subscription:
                    received.append((message.serial, message.id))
                    if len(received) == 50:
                        cluster.kill(gateway_names(cluster)[0])  # the subscriber's (preferred) gateway
                        killed.append(gateway_names(cluster)[0])
                    if len(received) == 150:
                        cluster.kill(owner)
                        killed.append(owner)
                    if len(received) == total:
                        break
            await publishing
            return received, published, subscriber.stats

    try:
        received, published, stats = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        for name in killed:
            cluster.restart(name)
    assert len(killed) == 2
    assert [serial for serial, _ in received] == list(range(1, total + 1))
    assert [message_id for _, message_id in received] == [published[serial] for serial in range(1, total + 1)]
    assert stats.subscribe_resumes >= 1
    print(f"subscriber: {stats.subscribe_resumes} resumes, {stats.duplicates_dropped} duplicates dropped")


def test_publisher_fails_over_from_a_paused_gateway_and_its_retries_are_stored_once(cluster: Launcher) -> None:
    """SIGSTOP of the publisher's gateway while 50 publishes are on their way: they are acknowledged
    through the other gateway within their deadline, and when the paused gateway wakes up and
    finishes whatever it had received, no id is stored twice."""
    channel, deadline_s = "sdk-paused", 10.0
    first_gateway, second_gateway = cluster.topology.gateways
    paused = gateway_names(cluster)[0]

    async def scenario() -> tuple[float, list[ringcast.StateChange], ringcast.ClientStats, list[str]]:
        async with ringcast.Client(
            [first_gateway, second_gateway], timeout_s=deadline_s, attempt_timeout_s=2.0
        ) as client:
            await client.publish(channel, "before", id="paused-before")  # connected to the first gateway
            changes: list[ringcast.StateChange] = []
            client.on_state_change(changes.append)
            cluster.pause(paused)
            try:
                started = time.monotonic()
                await asyncio.gather(
                    *(client.publish(channel, f"m{index}", id=f"paused-{index}") for index in range(50))
                )
                elapsed = time.monotonic() - started
                endpoints = client.endpoints()
            finally:
                cluster.resume(paused)
            assert endpoints[0].state is ringcast.EndpointState.DEMOTED, endpoints
            # The woken gateway answers again: whatever it received while paused is done by now.
            async with ringcast.Client([first_gateway]) as direct:
                await direct.publish(channel, "after", id="paused-after")
            return elapsed, changes, client.stats, await stored_ids(client, channel)

    elapsed, changes, stats, ids = asyncio.run(scenario())
    print(f"paused gateway: 50 publishes acknowledged {elapsed:.2f} s after SIGSTOP; {stats}")
    assert elapsed < deadline_s
    assert stats.failovers >= 1
    assert sorted(ids) == sorted(["paused-before", "paused-after", *(f"paused-{index}" for index in range(50))])
    states = [change.current for change in changes]
    assert states[:2] == [ringcast.ConnectionState.DISCONNECTED, ringcast.ConnectionState.CONNECTED], changes


def test_a_closed_client_refuses_work(cluster: Launcher, tmp_path: Path) -> None:
    async def scenario() -> None:
        client = ringcast.Client(cluster.topology.gateways)
        await client.publish("sdk-closed", "x")
        await client.close()
        assert client.state is ringcast.ConnectionState.CLOSED
        with pytest.raises(ringcast.ClientClosed):
            await client.publish("sdk-closed", "y")
        with pytest.raises(ringcast.ClientClosed):
            client.subscribe("sdk-closed")

    asyncio.run(scenario())


def test_the_quickstart_program_runs_as_written(tmp_path: Path) -> None:
    """docs/quickstart.md's Python program against a secure cluster as `ringcast up` makes it, with a
    token minted as the quickstart says: it publishes, pages, and follows the channel (stopped once it
    has printed the last message)."""
    launcher = Launcher(local_topology(tmp_path / "data", tls_dir=tmp_path / "tls"), tmp_path)
    launcher.start_all()
    try:
        _run_quickstart(launcher, tmp_path)
    finally:
        launcher.stop_all()


def _run_quickstart(cluster: Launcher, tmp_path: Path) -> None:
    text = (ROOT / "docs" / "quickstart.md").read_text()
    program = text.split("```python\n", 1)[1].split("```", 1)[0]
    program = program.replace('["127.0.0.1:7409", "127.0.0.1:7410"]', repr(cluster.topology.gateways))
    assert repr(cluster.topology.gateways) in program, "the quickstart no longer names the default gateways"
    program = program.replace('".ringcast/tls/ca.pem"', repr(str(tmp_path / "tls" / "ca.pem")))
    assert "tls/ca.pem" in program, "the quickstart no longer names the cluster's CA"
    mint = text.split("export RINGCAST_TOKEN=$(.venv/bin/ringcast ", 1)[1].split(")\n", 1)[0]
    token = subprocess.run(
        [sys.executable, "-m", "ringcast_tools.cli", *shlex.split(mint), "--tls-dir", str(tmp_path / "tls")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.strip()
    (tmp_path / "quickstart.py").write_text(program)
    process = subprocess.Popen(
        [sys.executable, str(tmp_path / "quickstart.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RINGCAST_TOKEN": token},
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("1001 "):
                break
    finally:
        process.kill()
        _, errors = process.communicate(timeout=30)
    assert lines and lines[-1].startswith("1001 "), "".join(lines) + errors
    assert lines[0].startswith("published 1 and 2 .. 1001 in ")
    assert lines[1] == "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10] more: True\n"
    assert lines[2] == '1 created {"id": 1}\n'
