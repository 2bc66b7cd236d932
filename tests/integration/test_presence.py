"""Presence through real gateways and owners (issue #19): enter, update, leave, the grace period,
the watchers' view, refusals, and a takeover that rebuilds the set from the log."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from ringcast.reasons import Reason
from ringcast.v1 import presence_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from services.common import namespaces
from services.common.errors import error_info
from services.common.etcd import Etcd
from services.core.namespaces import NamespaceOptions

ENTER = presence_pb2.PRESENCE_ACTION_ENTER
UPDATE = presence_pb2.PRESENCE_ACTION_UPDATE
LEAVE = presence_pb2.PRESENCE_ACTION_LEAVE


async def write_namespace(cluster: Launcher, name: str, options: NamespaceOptions | None) -> None:
    client = await Etcd.connect(cluster.topology.named("etcd").address)
    try:
        await (namespaces.delete(client, name) if options is None else namespaces.put(client, name, options))
    finally:
        await client.close()


def set_namespace(cluster: Launcher, name: str, options: NamespaceOptions | None) -> None:
    asyncio.run(write_namespace(cluster, name, options))


class Watcher:
    """A presence subscription, its member set kept from the sync and the changes."""

    def __init__(self, api: realtime_grpc.RealtimeServiceStub, channel: str) -> None:
        self.members: dict[tuple[str, str], bytes] = {}
        self.serial = 0
        self.changes: list[presence_pb2.PresenceChange] = []
        self.synced = asyncio.Event()
        self.call = api.SubscribePresence(realtime_pb2.SubscribePresenceRequest(channel=channel, sync=True))
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for response in self.call:
            if response.HasField("sync"):
                assert not self.synced.is_set(), "a second sync on one subscription"
                for member in response.sync.members:
                    self.members[(member.client_id, member.connection_id)] = member.data
                if response.sync.complete:
                    self.serial = response.sync.serial
                    self.synced.set()
            elif response.HasField("change"):
                change = response.change
                assert self.synced.is_set() and change.member.serial > self.serial, (change, self.serial)
                self.serial = change.member.serial
                self.changes.append(change)
                key = (change.member.client_id, change.member.connection_id)
                if change.action == LEAVE:
                    assert self.members.pop(key, None) is not None, f"{key} left without being present"
                else:
                    assert (change.action == ENTER) == (key not in self.members), change
                    self.members[key] = change.member.data

    async def until(self, serial: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.serial < serial:
            assert time.monotonic() < deadline, f"watcher at {self.serial}, expected {serial}"
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.call.cancel()


async def entered(
    api: realtime_grpc.RealtimeServiceStub, channel: str, client: str, connection: str, data: bytes = b""
) -> tuple[Any, int]:
    call = api.EnterPresence(
        realtime_pb2.EnterPresenceRequest(channel=channel, client_id=client, connection_id=connection, data=data)
    )
    first = await call.read()
    return call, first.serial


async def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
        if isinstance(result, grpc.aio.UnaryStreamCall):
            await result.read()
        else:
            await result
    except grpc.RpcError as error:
        info = error_info(error)
        return error.code(), info.reason if info else ""
    return grpc.StatusCode.OK, ""


async def members_of(api: realtime_grpc.RealtimeServiceStub, channel: str) -> tuple[dict[tuple[str, str], bytes], int]:
    answer = await api.GetPresence(realtime_pb2.GetPresenceRequest(channel=channel), timeout=10)
    return {(m.client_id, m.connection_id): m.data for m in answer.members}, answer.serial


async def apis(cluster: Launcher) -> AsyncIterator[list[realtime_grpc.RealtimeServiceStub]]:
    links = [grpc.aio.insecure_channel(address) for address in cluster.topology.gateways]
    try:
        yield [realtime_grpc.RealtimeServiceStub(link) for link in links]
    finally:
        for link in links:
            await link.close()


def test_members_enter_update_and_leave_and_every_watcher_sees_the_log_s_set(cluster: Launcher) -> None:
    async def scenario() -> None:
        async for one, two in apis(cluster):
            channel = "room:presence-basics"
            watcher = Watcher(two, channel)
            await asyncio.wait_for(watcher.synced.wait(), 10)
            assert watcher.members == {}
            alice, at = await entered(one, channel, "alice", "c1", b"hi")
            again, same = await entered(two, channel, "alice", "c1", b"hi")  # a reconnect: nothing new
            assert same == at
            bob, bob_at = await entered(two, channel, "bob", "c9", b"")
            updated = await one.UpdatePresence(
                realtime_pb2.UpdatePresenceRequest(
                    channel=channel, client_id="alice", connection_id="c1", data=b"busy"
                ),
                timeout=10,
            )
            assert bob_at > at and updated.serial > bob_at
            await watcher.until(updated.serial)
            members, serial = await members_of(one, channel)
            assert members == watcher.members == {("alice", "c1"): b"busy", ("bob", "c9"): b""}
            assert serial == updated.serial
            state = await one.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=10)
            assert state.occupancy.members == 2
            left = await two.LeavePresence(
                realtime_pb2.LeavePresenceRequest(channel=channel, client_id="alice", connection_id="c1"), timeout=10
            )
            assert await alice.read() == grpc.aio.EOF and await again.read() == grpc.aio.EOF  # both streams end OK
            await watcher.until(left.serial)
            assert watcher.members == {("bob", "c9"): b""}
            assert [change.action for change in watcher.changes] == [ENTER, ENTER, UPDATE, LEAVE]
            # Presence history: every change from the first.
            history = two.SubscribePresence(realtime_pb2.SubscribePresenceRequest(channel=channel, after_serial=0))
            seen: list[int] = []
            async for response in history:
                if response.HasField("change"):
                    seen.append(response.change.action)
                    if response.change.member.serial == left.serial:
                        break
            history.cancel()
            assert seen == [ENTER, ENTER, UPDATE, LEAVE]
            bob.cancel()
            watcher.close()

    asyncio.run(scenario())


def test_a_member_whose_connection_is_gone_leaves_after_its_grace_unless_it_comes_back(cluster: Launcher) -> None:
    set_namespace(cluster, "brief", NamespaceOptions(presence_grace_s=1.0))
    try:

        async def scenario() -> None:
            async for one, two in apis(cluster):
                channel = "brief:room"
                await asyncio.sleep(1.5)  # the namespace reaches every owner (within ~1 s)
                watcher = Watcher(two, channel)
                await asyncio.wait_for(watcher.synced.wait(), 10)
                gone, _ = await entered(one, channel, "gone", "x")
                back, _ = await entered(one, channel, "back", "y")
                gone.cancel()
                back.cancel()
                cancelled = time.monotonic()
                back_again, _ = await entered(two, channel, "back", "y")  # within its grace, elsewhere
                while ("gone", "x") in watcher.members or not watcher.changes:
                    assert time.monotonic() - cancelled < 1.0 + 2.0, "no LEAVE within grace + 2 s"
                    await asyncio.sleep(0.05)
                took = time.monotonic() - cancelled
                assert took >= 1.0 - 0.1, f"left after {took:.2f} s, before its grace"
                await asyncio.sleep(1.5)
                assert watcher.members == {("back", "y"): b""}
                assert [change.action for change in watcher.changes] == [ENTER, ENTER, LEAVE]
                back_again.cancel()
                watcher.close()

        asyncio.run(scenario())
    finally:
        set_namespace(cluster, "brief", None)


def test_a_member_s_grace_runs_on_across_a_takeover(cluster: Launcher) -> None:
    """A member whose connection ended 2.5 s before its channel's owner is SIGKILLed leaves when its
    grace (4 s) is over, counted from its disconnection (its ABSENT entry), not from the takeover;
    a member still connected through the takeover stays."""
    set_namespace(cluster, "graced", NamespaceOptions(presence_grace_s=4.0))
    try:

        async def scenario() -> None:
            async for one, two in apis(cluster):
                channel = "graced:room"
                await asyncio.sleep(1.5)  # the namespace reaches every owner
                watcher = Watcher(two, channel)
                await asyncio.wait_for(watcher.synced.wait(), 10)
                staying, _ = await entered(two, channel, "staying", "s")
                going, _ = await entered(one, channel, "going", "g")
                owner = (await one.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=10)).owner
                going.cancel()
                gone_at = time.monotonic()
                await asyncio.sleep(2.5)  # a new owner giving it the whole grace again: a ghost till 6.5 s +
                cluster.kill(owner)
                try:
                    while ("going", "g") in watcher.members:
                        assert time.monotonic() - gone_at < 4.0 + 2.0, "the ghost outlived its grace + 2 s"
                        if watcher.task.done():
                            watcher.task.result()
                        await asyncio.sleep(0.05)
                    took = time.monotonic() - gone_at
                    assert took >= 4.0 - 0.1, f"left after {took:.2f} s, before its grace"
                    await asyncio.sleep(1.0)
                    members, _ = await members_of(one, channel)
                    assert members == watcher.members == {("staying", "s"): b""}
                finally:
                    cluster.restart(owner)
                staying.cancel()
                watcher.close()

        asyncio.run(scenario())
    finally:
        set_namespace(cluster, "graced", None)


def test_bad_presence_calls_are_refused_with_a_reason(cluster: Launcher) -> None:
    set_namespace(cluster, "silent", NamespaceOptions(presence=False))
    try:

        async def scenario() -> None:
            async for one, _ in apis(cluster):
                await refusals(one)
                await write_namespace(cluster, "silent", NamespaceOptions(presence=True))  # on again
                turned = time.monotonic()
                get = functools.partial(
                    one.GetPresence, realtime_pb2.GetPresenceRequest(channel="silent:x"), timeout=10
                )
                while True:
                    code, _ = await refused(get)
                    if code == grpc.StatusCode.OK:
                        break
                    assert time.monotonic() - turned < 2.0, "presence on again did not apply within 2 s"
                    await asyncio.sleep(0.05)
                call, serial = await entered(one, "silent:x", "a", "c")
                assert serial > 0
                call.cancel()

        asyncio.run(scenario())
    finally:
        set_namespace(cluster, "silent", None)


def test_a_killed_owner_s_successor_rebuilds_the_member_set_from_the_log(cluster: Launcher) -> None:
    """SIGKILL the channel's owner with members present, some connected and one that left:
    the new owner's set is the log's, connected members stay (their gateways re-enter them at the
    new owner), and a watcher resumes with every change once, in order."""

    async def scenario() -> None:
        async for one, two in apis(cluster):
            channel = "room:presence-takeover"
            watcher = Watcher(two, channel)
            await asyncio.wait_for(watcher.synced.wait(), 10)
            streams = []
            for n in range(20):
                call, _ = await entered(one if n % 2 else two, channel, f"client-{n}", f"conn-{n}", b"%d" % n)
                streams.append(call)
            left = await one.LeavePresence(
                realtime_pb2.LeavePresenceRequest(channel=channel, client_id="client-3", connection_id="conn-3"),
                timeout=10,
            )
            before, serial = await members_of(one, channel)
            assert len(before) == 19 and serial == left.serial
            owner = (await one.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=10)).owner
            cluster.kill(owner)
            try:
                deadline = time.monotonic() + 20
                while True:
                    state = await one.GetChannel(realtime_pb2.GetChannelRequest(channel=channel), timeout=10)
                    if state.owner != owner:
                        break
                    assert time.monotonic() < deadline, "the channel did not move"
                    await asyncio.sleep(0.1)
                after, after_serial = await members_of(two, channel)
                assert after == before and after_serial >= serial
                late, _ = await entered(one, channel, "late", "c", b"")
                await watcher.until((await members_of(one, channel))[1])
                assert watcher.members == {**before, ("late", "c"): b""}
                await asyncio.sleep(2.0)  # past nothing: members still connected stay
                assert (await members_of(one, channel))[0] == watcher.members
            finally:
                cluster.restart(owner)
            for call in [*streams, late]:
                call.cancel()
            watcher.close()

    asyncio.run(scenario())


def test_the_sdk_keeps_a_member_present_across_the_kill_of_its_gateway(cluster: Launcher) -> None:
    """A member held by the SDK on gateway-1 stays present when gateway-1 is SIGKILLed (the SDK
    enters again on gateway-2 within the grace: no LEAVE); an SDK watcher on gateway-2 sees the
    enter, the update after the kill, and the leave, once each; occupancy follows."""
    import ringcast

    gateway = cluster.topology.by_role("gateway")[0]

    async def scenario() -> None:
        addresses = cluster.topology.gateways
        async with (
            ringcast.Client(addresses, client_id="sdk-member", attempt_timeout_s=1.0) as member,
            ringcast.Client(list(reversed(addresses))) as reader,
        ):
            channel = "room:sdk"
            presence = member.presence(channel)
            watch = reader.presence(channel).subscribe()
            events: list[ringcast.PresenceEvent] = []

            async def follow() -> None:
                async for event in watch:
                    events.append(event)

            following = asyncio.create_task(follow())
            entered_at = await presence.enter("hello")
            key = ("sdk-member", member.connection_id)

            async def until(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
                deadline = time.monotonic() + timeout_s
                while not check():
                    assert time.monotonic() < deadline, what
                    assert not following.done(), following
                    await asyncio.sleep(0.05)

            await until(lambda: key in watch.members, "the watcher never saw the member enter")
            assert watch.members[key].serial == entered_at and watch.members[key].text() == "hello"
            cluster.kill(gateway.name)
            try:
                await until(lambda: presence.reentries >= 1 and presence.entered, "the SDK did not enter again")
                updated = await presence.update("moved")
                await until(lambda: watch.serial >= updated, "the watcher missed the update")
                assert (await reader.get_channel(channel)).members == 1
                left = await presence.leave()
                await until(lambda: watch.serial >= left, "the watcher missed the leave")
            finally:
                cluster.restart(gateway.name)
            actions = [event.action for event in events]
            assert actions == [
                ringcast.PresenceAction.SYNC,
                ringcast.PresenceAction.ENTER,
                ringcast.PresenceAction.UPDATE,
                ringcast.PresenceAction.LEAVE,
            ], events
            assert watch.members == {} and (await reader.presence(channel).members()).members == ()
            await watch.close()
            following.cancel()

    asyncio.run(scenario())


async def refusals(api: realtime_grpc.RealtimeServiceStub) -> None:
    def enter(**fields: Any) -> Callable[[], Any]:
        request = realtime_pb2.EnterPresenceRequest(**{"channel": "room:bad", "connection_id": "c", **fields})
        return lambda: api.EnterPresence(request)

    assert await refused(enter()) == (grpc.StatusCode.INVALID_ARGUMENT, Reason.CLIENT_ID_INVALID)
    assert await refused(enter(client_id="a", connection_id="")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.CONNECTION_ID_INVALID,
    )
    assert await refused(enter(client_id="a", data=b"x" * 1_025)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.PRESENCE_DATA_TOO_LARGE,
    )
    assert await refused(enter(client_id="a", channel="bad#name")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.CHANNEL_NAME_INVALID,
    )
    update = realtime_pb2.UpdatePresenceRequest(channel="room:bad", client_id="nobody", connection_id="c")
    assert await refused(lambda: api.UpdatePresence(update, timeout=10)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NOT_PRESENT,
    )
    deadline = time.monotonic() + 2.0
    while await refused(enter(client_id="a", channel="silent:x")) != (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.PRESENCE_DISABLED,
    ):
        assert time.monotonic() < deadline, "presence off did not reach the gateway within 2 s"
        await asyncio.sleep(0.05)
    get = realtime_pb2.GetPresenceRequest(channel="silent:x")
    assert await refused(lambda: api.GetPresence(get, timeout=10)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.PRESENCE_DISABLED,
    )


@pytest.fixture(autouse=True)
def _no_tracebacks(cluster: Launcher) -> Iterator[None]:
    """Every process's log stays free of tracebacks (checked after each test)."""
    yield
    logs = sorted(cluster.log_dir.glob("*.log"))
    found = [log.name for log in logs if "Traceback" in log.read_text(errors="replace")]
    assert not found, f"tracebacks in {found}"
