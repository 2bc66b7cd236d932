"""services/common/etcd.py against a real etcd: registration, leases, and the member watch.

Each test gets its own etcd (tests/integration/etcd.py), started with settings that allow 1 s leases.
Timings are printed (run with -s to see them); the assertions are about order and bounds that hold
on any machine: a lease deadline is never later than etcd's expiry, a lost member is gone within
TTL + 1 s of its last keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from services.common.etcd import MEMBERS_PREFIX, Etcd, EtcdUnavailable, MemberRecord, Membership
from services.common.registration import Registration
from tests.integration.etcd import EtcdServer

T = TypeVar("T")

test_timeout_s = 14.0
poll_interval_s = 0.005


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), test_timeout_s)

    return asyncio.run(bounded())


class PartitionableEtcd(Etcd):
    """A real `Etcd` whose lease traffic can be cut off, as by a network partition between one member
    and etcd (the member's reads still work, so a test can use one client for both)."""

    partitioned = False

    def _check(self) -> None:
        if self.partitioned:
            raise EtcdUnavailable("partitioned (test)")

    async def grant(self, ttl_s: int) -> tuple[int, int]:
        self._check()
        return await super().grant(ttl_s)

    async def put(self, key: str, value: bytes, lease_id: int) -> int:
        self._check()
        return await super().put(key, value, lease_id)

    async def keep_alive(self, lease_id: int, timeout_s: float) -> int:
        self._check()
        return await super().keep_alive(lease_id, timeout_s)

    async def revoke(self, lease_id: int) -> None:
        self._check()
        await super().revoke(lease_id)


@contextlib.asynccontextmanager
async def connected(endpoint: str, kind: type[Etcd] = Etcd) -> AsyncIterator[Etcd]:
    etcd = await kind.connect(endpoint)
    try:
        yield etcd
    finally:
        await etcd.close()


async def member_ids(etcd: Etcd) -> set[str]:
    members = (await etcd.members()).members
    return {member.id for member in members}


async def wait_until_gone(etcd: Etcd, member_id: str, timeout_s: float) -> float:
    """Poll until `member_id` is no longer a member; the monotonic time it was first seen gone."""
    deadline = time.monotonic() + timeout_s
    while member_id in await member_ids(etcd):
        assert time.monotonic() < deadline, f"{member_id} still a member after {timeout_s} s"
        await asyncio.sleep(poll_interval_s)
    return time.monotonic()


def channel(member_id: str) -> MemberRecord:
    return MemberRecord(kind="channel", id=member_id, address=f"127.0.0.1:{7200 + len(member_id)}")


def test_connect_waits_for_a_host_name_that_does_not_resolve_yet(
    etcd_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """In a compose stack every service may start before etcd's container, whose name resolves only
    once it runs: connecting waits for the name (saying so), it does not fail the process."""
    host, port = etcd_endpoint.rsplit(":", 1)
    failures = 3

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        resolve = loop.getaddrinfo

        async def later(name: str, *arguments: object, **options: object) -> object:
            nonlocal failures
            if name == "etcd-not-yet":
                if failures:
                    failures -= 1
                    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
                name = host
            return await resolve(name, *arguments, **options)  # type: ignore[arg-type]

        monkeypatch.setattr(loop, "getaddrinfo", later)
        etcd = await Etcd.connect(f"etcd-not-yet:{port}")
        try:
            return len((await etcd.members()).members)
        finally:
            await etcd.close()

    with caplog.at_level("INFO", logger="ringcast.etcd"):
        assert run(scenario) >= 0
    assert failures == 0
    assert "etcd host 'etcd-not-yet' does not resolve yet" in caplog.text
    assert "etcd host 'etcd-not-yet' resolves to" in caplog.text


def test_a_registration_is_a_member_at_the_revision_it_reports(etcd_endpoint: str) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            membership = await etcd.members()
            revision_before, members_before = membership.revision, membership.members
            assert members_before == []
            registered: list[int] = []
            deadlines: list[float] = []
            began = time.monotonic()
            store = MemberRecord(kind="store", id="store-a", address="127.0.0.1:7101", zone="a")
            registration = await Registration.start(
                etcd, store, ttl_s=1, on_registered=registered.append, on_lease=deadlines.append
            )
            node = await Registration.start(etcd, channel("channel-1"), ttl_s=1)
            membership = await etcd.members()
            revision, members = membership.revision, membership.members
            assert registered == [registration.revision]
            assert revision_before < registration.revision < node.revision == revision
            assert members == [channel("channel-1"), store]  # sorted by (kind, id)
            assert len(deadlines) == 1 and began + 0.9 < deadlines[0] <= began + 1.0 + 0.5
            await registration.stop()
            await node.stop()

    run(scenario)


def test_stop_removes_the_member_at_once(etcd_endpoint: str) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            lost: list[None] = []
            registration = await Registration.start(
                etcd, channel("leaving"), ttl_s=5, on_lost=lambda: lost.append(None)
            )
            assert await member_ids(etcd) == {"leaving"}
            await registration.stop()
            assert await member_ids(etcd) == set()  # No waiting for a 5 s TTL: the lease was revoked.
            assert lost == []  # Leaving on purpose is not losing the lease.
            await registration.stop()  # Idempotent.

    run(scenario)


def test_a_member_cut_off_from_etcd_disappears_within_ttl_and_comes_back_newer(etcd_endpoint: str) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint, PartitionableEtcd) as member_side, connected(etcd_endpoint) as observer:
            assert isinstance(member_side, PartitionableEtcd)
            registered: list[int] = []
            deadlines: list[float] = []
            lost_at: list[float] = []
            registration = await Registration.start(
                member_side,
                channel("cut-off"),
                ttl_s=1,
                on_registered=registered.append,
                on_lease=deadlines.append,
                on_lost=lambda: lost_at.append(time.monotonic()),
            )
            await asyncio.sleep(1.5)  # Several keep-alives, each acknowledged.
            assert len(deadlines) >= 4 and deadlines == sorted(deadlines)
            assert lost_at == []
            member_side.partitioned = True
            last_deadline = deadlines[-1]
            gone_at = await wait_until_gone(observer, "cut-off", timeout_s=3.0)
            print(f"\ncut off: gone {gone_at - last_deadline:+.3f} s after the last deadline")
            assert last_deadline <= gone_at <= last_deadline + 1.0
            assert len(lost_at) == 1 and last_deadline <= lost_at[0] <= gone_at
            member_side.partitioned = False
            deadline = time.monotonic() + 3.0
            # The observer can see the key before the member side has had etcd's reply to its put (and
            # so before on_registered runs): wait for both.
            while "cut-off" not in await member_ids(observer) or len(registered) < 2:
                assert time.monotonic() < deadline, "the member did not register again"
                await asyncio.sleep(poll_interval_s)
            assert len(registered) == 2 and registered[1] > registered[0]
            assert registration.revision == registered[1]
            assert len(lost_at) == 1
            await registration.stop()

    run(scenario)


def test_lease_deadlines_are_never_later_than_etcd_expiry(etcd_endpoint: str) -> None:
    """Several members, each cut off at a different moment of its keep-alive cycle."""
    samples = 4

    async def one_member(index: int, observer: Etcd) -> float:
        async with connected(etcd_endpoint, PartitionableEtcd) as member_side:
            assert isinstance(member_side, PartitionableEtcd)
            deadlines: list[float] = []
            registration = await Registration.start(
                member_side, channel(f"m-{index}"), ttl_s=1, on_lease=deadlines.append
            )
            await asyncio.sleep(0.6 + index * 0.07)  # Spread the cuts over a keep-alive interval (0.25 s).
            member_side.partitioned = True
            last_deadline = deadlines[-1]
            gone_at = await wait_until_gone(observer, f"m-{index}", timeout_s=3.0)
            member_side.partitioned = False
            await registration.stop()
            return gone_at - last_deadline

    async def scenario() -> list[float]:
        async with connected(etcd_endpoint) as observer:
            return list(await asyncio.gather(*(one_member(index, observer) for index in range(samples))))

    margins = run(scenario)
    print(f"\nkey gone after the last reported deadline by: {', '.join(f'{m:+.3f} s' for m in margins)}")
    # Never before the deadline (the member stopped serving in time); and within one more second.
    assert all(0.0 <= margin <= 1.0 for margin in margins), margins


def test_a_lease_etcd_no_longer_has_is_reported_lost_and_replaced(etcd_endpoint: str) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            registered: list[int] = []
            lost: list[float] = []
            registration = await Registration.start(
                etcd,
                channel("revoked"),
                ttl_s=2,
                on_registered=registered.append,
                on_lost=lambda: lost.append(time.monotonic()),
            )
            first_lease = registration.lease_id
            revoked_at = time.monotonic()
            await etcd.revoke(first_lease)  # As if etcd had expired it: the next keep-alive hears TTL 0.
            deadline = time.monotonic() + 2.0
            while len(registered) < 2:
                assert time.monotonic() < deadline, "no new registration after the lease was revoked"
                await asyncio.sleep(poll_interval_s)
            # Noticed at the next keep-alive (every TTL / 4), long before the 2 s TTL would have run out.
            assert len(lost) == 1 and lost[0] - revoked_at < 0.5 + 0.25
            assert registration.lease_id != first_lease and registered[1] > registered[0]
            assert await member_ids(etcd) == {"revoked"}
            await registration.stop()

    run(scenario)


async def collect(
    etcd: Etcd, after_revision: int, count: int, arrivals: list[float] | None = None
) -> list[tuple[int, list[str]]]:
    changes: list[tuple[int, list[str]]] = []
    async with contextlib.aclosing(etcd.watch_members(after_revision)) as watch:
        async for change in watch:
            revision, members = change.revision, change.members
            if arrivals is not None:
                arrivals.append(time.monotonic())
            changes.append((revision, [f"{member.kind}/{member.id}" for member in members]))
            if len(changes) == count:
                return changes
    raise AssertionError("the watch ended")


def test_watch_members_yields_every_change_in_order(etcd_endpoint: str, etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd, connected(etcd_endpoint) as watcher:
            start_revision = (await etcd.members()).revision
            arrivals: list[float] = []
            watching = asyncio.create_task(collect(watcher, start_revision, 6, arrivals))
            await asyncio.sleep(0.1)  # The watch is open before the first change.
            # When each registration began (grant, then put): the watch's answer comes after the put.
            began: list[float] = []
            began.append(time.monotonic())
            a = await Registration.start(etcd, channel("a"), ttl_s=1)
            await asyncio.sleep(0.05)
            began.append(time.monotonic())
            b = await Registration.start(etcd, MemberRecord("store", "b", "127.0.0.1:2", "b"), ttl_s=1)
            await asyncio.sleep(0.05)
            await a.stop()
            await asyncio.sleep(0.05)
            began.append(time.monotonic())
            c = await Registration.start(etcd, channel("c"), ttl_s=1)
            await asyncio.sleep(0.05)
            # A key that is not a valid member record is a change too (its revision counts), but no member.
            malformed_revision = etcd_server.put(f"{MEMBERS_PREFIX}channel/broken", b"not json")
            await asyncio.sleep(0.05)
            c_again = await Registration.start(
                etcd, channel("c"), ttl_s=1
            )  # A re-registration: same set, new revision.
            changes = await watching
            revisions = [revision for revision, _ in changes]
            assert revisions == sorted(set(revisions)) and revisions[0] > start_revision
            assert changes[0] == (a.revision, ["channel/a"])
            assert changes[1] == (b.revision, ["channel/a", "store/b"])
            assert changes[2][1] == ["store/b"]
            assert changes[3] == (c.revision, ["channel/c", "store/b"])
            assert changes[4] == (malformed_revision, ["channel/c", "store/b"])
            assert changes[5] == (c_again.revision, ["channel/c", "store/b"])
            latencies = [arrivals[i] - began[j] for i, j in ((0, 0), (1, 1), (3, 2))]
            print(f"\nregistration start to watch answer: {', '.join(f'{1000 * s:.1f} ms' for s in latencies)}")
            for registration in (b, c, c_again):
                await registration.stop()

    run(scenario)


def test_watch_members_from_an_old_revision_replays_the_history(etcd_endpoint: str) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            start_revision = (await etcd.members()).revision
            a = await Registration.start(etcd, channel("a"), ttl_s=1)
            b = await Registration.start(etcd, channel("b"), ttl_s=1)
            await a.stop()
            changes = await collect(etcd, start_revision, 3)
            assert [members for _, members in changes] == [["channel/a"], ["channel/a", "channel/b"], ["channel/b"]]
            assert [revision for revision, _ in changes[:2]] == [a.revision, b.revision]
            # From the middle: the state at b's revision is the starting point, the leave the only change.
            assert (await collect(etcd, b.revision, 1))[0] == changes[2]
            await b.stop()

    run(scenario)


def test_watch_members_after_compaction_yields_the_current_set(etcd_endpoint: str, etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            start_revision = (await etcd.members()).revision
            a = await Registration.start(etcd, channel("a"), ttl_s=1)
            b = await Registration.start(etcd, channel("b"), ttl_s=1)
            etcd_server.compact(b.revision)
            # The history from start_revision is gone: one answer, the set as it is now, at the current revision.
            changes = await collect(etcd, start_revision, 1)
            assert changes == [(b.revision, ["channel/a", "channel/b"])]
            # And the watch goes on from there.
            watching = asyncio.create_task(collect(etcd, start_revision, 2))
            await asyncio.sleep(0.2)
            await a.stop()
            assert (await watching)[1][1] == ["channel/b"]
            await b.stop()

    run(scenario)


def test_watch_members_survives_an_etcd_restart(etcd_endpoint: str, etcd_server: EtcdServer) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd, connected(etcd_endpoint) as watcher:
            start_revision = (await etcd.members()).revision
            seen: list[tuple[int, list[str]]] = []

            async def follow() -> None:
                async with contextlib.aclosing(watcher.watch_members(start_revision)) as watch:
                    async for change in watch:
                        revision, members = change.revision, change.members
                        seen.append((revision, [member.id for member in members]))

            following = asyncio.create_task(follow())
            before = await Registration.start(etcd, channel("before"), ttl_s=2)
            await asyncio.sleep(0.2)
            down_at = time.monotonic()
            etcd_server.stop()
            await asyncio.sleep(0.3)
            etcd_server.start(wait=False)  # From this thread: etcd dies with the thread that started it.
            await asyncio.to_thread(etcd_server.wait_healthy)
            up_at = time.monotonic()
            after = await Registration.start(etcd, channel("after"), ttl_s=2)
            registered_at = time.monotonic()
            deadline = time.monotonic() + 5.0
            while not seen or "after" not in seen[-1][1]:
                assert time.monotonic() < deadline, f"the watch did not see the new member: {seen}"
                await asyncio.sleep(poll_interval_s)
            print(
                f"\netcd down {up_at - down_at:.2f} s (restart {etcd_server.last_start_s:.2f} s); "
                f"registered {registered_at - up_at:.3f} s after it was up, "
                f"seen by the watch {time.monotonic() - registered_at:.3f} s later"
            )
            revisions = [revision for revision, _ in seen]
            assert revisions == sorted(set(revisions))
            assert seen[0] == (before.revision, ["before"])
            assert seen[-1][0] >= after.revision
            members = (await etcd.members()).members
            assert {member.id for member in members} == set(seen[-1][1]) | {"after"}
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await before.stop()
            await after.stop()

    run(scenario)


def test_after_etcd_loses_its_data_watches_start_afresh_and_registrations_go_on(
    etcd_endpoint: str, etcd_server: EtcdServer
) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd, connected(etcd_endpoint) as watcher:
            registered: list[int] = []
            failed: list[BaseException] = []
            node = await Registration.start(
                etcd,
                channel("node"),
                ttl_s=1,
                on_registered=registered.append,
                floor=lambda: 77,
                on_failed=failed.append,
            )
            seen: list[Membership] = []

            async def follow() -> None:
                async with contextlib.aclosing(watcher.watch_members(node.revision - 1)) as watch:
                    async for change in watch:
                        seen.append(change)

            following = asyncio.create_task(follow())
            for index in range(30):
                etcd_server.put(f"/ringcast/noise/{index}", b"x")
            while not seen or seen[-1].revision < node.revision + 30:
                await asyncio.sleep(poll_interval_s)
            high = seen[-1].revision
            await asyncio.to_thread(etcd_server.wipe)
            deadline = time.monotonic() + 10
            # The registration re-registers on the new etcd, at a revision below its last, and goes on.
            while not registered or registered[-1] >= high:
                assert time.monotonic() < deadline, f"no registration on the new etcd: {registered}"
                await asyncio.sleep(poll_interval_s)
            # The watch says etcd was reset, and follows the new history from its revision.
            while not any(change.reset for change in seen) or "node" not in {m.id for m in seen[-1].members}:
                assert time.monotonic() < deadline, f"the watch did not follow the new etcd: {seen[-3:]}"
                await asyncio.sleep(poll_interval_s)
            reset = next(change for change in seen if change.reset)
            assert reset.revision < high and reset.version_offset is None
            assert [m.floor for m in seen[-1].members if m.id == "node"] == [77]
            later = await Registration.start(etcd, channel("later"), ttl_s=1)
            while "later" not in {m.id for m in seen[-1].members}:
                assert time.monotonic() < deadline, "the watch missed a member registered after the reset"
                await asyncio.sleep(poll_interval_s)
            assert failed == []
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await node.stop()
            await later.stop()

    run(scenario)


def test_a_resumed_watch_finds_a_new_history_that_already_went_past_it(
    etcd_endpoint: str, etcd_server: EtcdServer
) -> None:
    """etcd lost its data and, before the watch reconnected, the new etcd wrote past the revision the
    watch had reached (a second wipe soon after a first, with everyone re-registering). Revisions
    alone cannot tell; the keys at that revision can: the watch reads afresh and says `reset`
    instead of going on from the new history's revision as if nothing happened (found by CI:
    placement then missed every re-registration)."""

    def member(member_id: str) -> tuple[str, bytes]:
        return f"{MEMBERS_PREFIX}channel/{member_id}", json.dumps({"address": f"{member_id}:1"}).encode()

    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            assert await etcd.create_version_offset(7) == 7
            etcd_server.put(*member("old"))
            start = (await etcd.members()).revision
            async with contextlib.aclosing(etcd.watch_members(0)) as watch:
                followed = await anext(watch)
                while followed.revision < start:
                    followed = await anext(watch)
                assert [m.id for m in followed.members] == ["old"] and followed.version_offset == 7
                # The generator waits at its yield: nothing reads the stream while etcd is replaced.
                await asyncio.to_thread(etcd_server.wipe)
                etcd_server.put(*member("new"))
                while etcd_server.put("/ringcast/noise", b"x") <= followed.revision:
                    pass
                after = await asyncio.wait_for(anext(watch), test_timeout_s)
            assert after.reset, after
            assert [m.id for m in after.members] == ["new"] and after.version_offset is None

    run(scenario)


def test_the_version_offset_is_created_once_and_only_ever_raised(etcd_endpoint: str) -> None:
    async def scenario() -> None:
        async with connected(etcd_endpoint) as etcd:
            assert (await etcd.members()).version_offset is None
            assert await etcd.create_version_offset(5) == 5
            assert await etcd.create_version_offset(9) == 5  # already there: the one held
            assert not await etcd.raise_version_offset(4, 10)  # not what is held: refused
            assert await etcd.raise_version_offset(5, 10)
            assert (await etcd.members()).version_offset == 10
            with pytest.raises(AssertionError):
                await etcd.raise_version_offset(10, 10)

    run(scenario)


@pytest.mark.parametrize("endpoint", ["localhost:1", "127.0.0.1:notaport", ""])
def test_connect_checks_endpoints_and_calls_fail_fast_when_etcd_is_unreachable(endpoint: str) -> None:
    async def scenario() -> None:
        if ":notaport" in endpoint or not endpoint:
            with pytest.raises(ValueError):
                await Etcd.connect(endpoint)
            return
        async with connected(endpoint) as etcd:  # Connecting does not need etcd up.
            began = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await etcd.members()
            assert time.monotonic() - began < 2.5  # Bounded by the call timeout.

    run(scenario)
