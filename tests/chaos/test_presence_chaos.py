"""Presence under faults, with real processes (issue #19's acceptance).

200 members, each an SDK client of its own on one of two gateways, enter, update, leave, and
drop (their client closes without leaving) in a loop, while the channel's owner is SIGKILLed and
the next one is paused past its lease. Two watchers (one per gateway) follow the set. At quiet
points (no member changes anything for longer than the grace + 2 s), every watcher's set equals
the log's (GetPresence) and equals the members whose clients are connected, each with the data it
last entered or updated with. Throughout: no member
is ever seen to leave while its client is connected, and a dropped member leaves within its grace
+ 2 s (longer only when the drop fell into a fault's window, reported).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest

import ringcast
from ringcast_tools.cluster.launcher import Launcher
from services.common import namespaces
from services.common.etcd import Etcd
from services.core.namespaces import NamespaceOptions
from tests.chaos.conftest import owner_of, pause, resume, wait_until

pytestmark = pytest.mark.chaos

MEMBERS = 200
CHANNEL = "lobby:presence-chaos"
GRACE_S = 3.0
SLACK_S = 2.0
"""A dropped member leaves within its grace + this (the acceptance bound)."""


@dataclass
class Life:
    """One member: a client on its own connection, from enter to leave or drop (never reused)."""

    key: tuple[str, str]
    state: str = "entering"  # entering, present, leaving, left, dropped
    data: bytes = b""
    """What the member last entered or updated with."""
    ended_at: float = 0.0
    left_seen_at: float = 0.0


@dataclass
class Ledger:
    lives: dict[tuple[str, str], Life] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    ghost_s: list[tuple[float, float]] = field(default_factory=list)
    """(seconds a dropped member stayed after its drop, when it dropped)."""
    changes: int = 0


class PresenceLoad:
    """The members and watchers, on a thread and event loop of their own."""

    def __init__(self, gateways: list[str], seed: int = 19) -> None:
        self.gateways = gateways
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        self.quiet = threading.Event()
        self.stop = threading.Event()
        self.watchers: list[ringcast.PresenceWatch] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="presence-load", daemon=True)
        self.thread.start()
        assert self._ready.wait(30), "the presence load did not start"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # handed to the test's thread
            self.error = error

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        readers = [ringcast.Client(self.gateways[i:] + self.gateways[:i], attempt_timeout_s=1.0) for i in (0, 1)]
        following = [asyncio.create_task(self._watch(reader)) for reader in readers]
        while len(self.watchers) < len(readers):
            await asyncio.sleep(0.05)
        for watcher in self.watchers:
            while watcher.serial == 0 and not watcher.members and not self.stop.is_set():
                await asyncio.sleep(0.05)
                break
        self._ready.set()
        slots = [asyncio.create_task(self._slot(n)) for n in range(MEMBERS)]
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
            for task in [*slots, *following]:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        for task in slots:
            task.cancel()
        for task in following:
            task.cancel()
        await asyncio.gather(*slots, *following, return_exceptions=True)
        for reader in readers:
            await reader.close(flush=False)

    async def _watch(self, reader: ringcast.Client) -> None:
        watch = reader.presence(CHANNEL).subscribe()
        self.watchers.append(watch)
        async for event in watch:
            if event.action is not ringcast.PresenceAction.LEAVE or event.member is None:
                continue
            life = self.ledger.lives.get(event.member.key)
            now = time.monotonic()
            if life is None or life.state in ("entering", "present"):
                state = life.state if life else "unknown"
                self.ledger.violations.append(f"{event.member.key} left (serial {event.serial}) while {state}")
            elif life.state == "dropped" and not life.left_seen_at:
                life.left_seen_at = now
                self.ledger.ghost_s.append((now - life.ended_at, life.ended_at))

    async def _slot(self, slot: int) -> None:
        rng = random.Random(slot)
        lives = 0
        while True:
            lives += 1
            client = ringcast.Client(
                self.gateways[slot % 2 :] + self.gateways[: slot % 2], client_id=f"m{slot}", attempt_timeout_s=1.0
            )
            life = Life((f"m{slot}", client.connection_id))
            self.ledger.lives[life.key] = life
            presence = client.presence(CHANNEL)
            try:
                life.data = f"{slot}.{lives}".encode()
                await presence.enter(life.data)
                life.state = "present"
                self.ledger.changes += 1
                for _ in range(rng.randrange(1, 4)):
                    await self._hold(rng.uniform(0.5, 4.0))
                    if rng.random() < 0.3:
                        life.data = f"{slot}.{lives}.{rng.randrange(1000)}".encode()
                        await presence.update(life.data)
                        self.ledger.changes += 1
                await self._hold(0)
                if rng.random() < 0.5:
                    life.state = "leaving"
                    await presence.leave()
                    life.state = "left"
                else:
                    await client.close(flush=False)  # gone without leaving: out after the grace
                    life.state, life.ended_at = "dropped", time.monotonic()
                self.ledger.changes += 1
            except ringcast.RingcastError as error:
                self.ledger.violations.append(
                    f"{life.key} in state {life.state}: {error.reason} (still held: {presence.entered}, "
                    f"hold ended by: {presence.error!r}, entered again {presence.reentries} times)"
                )
            finally:
                if life.state in ("entering", "present"):
                    life.state, life.ended_at = "dropped", time.monotonic()
                await client.close(flush=False)
            await asyncio.sleep(rng.uniform(0.1, 1.0))

    async def _hold(self, seconds: float) -> None:
        """Wait `seconds`, and while the test asks for quiet, change nothing."""
        await asyncio.sleep(seconds)
        while self.quiet.is_set():
            await asyncio.sleep(0.05)

    def progress(self, count: int, what: str, timeout_s: float = 60.0) -> None:
        """Wait until the members made `count` more changes; fail with why if they cannot."""
        start = self.ledger.changes
        deadline = time.monotonic() + timeout_s
        while self.ledger.changes < start + count:
            if not self.thread.is_alive():
                raise AssertionError(f"the presence load died waiting for {what}") from self.error
            if time.monotonic() > deadline:
                states: dict[str, int] = {}
                for life in self.ledger.lives.values():
                    states[life.state] = states.get(life.state, 0) + 1
                pytest.fail(f"{what}: {self.ledger.changes - start} changes in {timeout_s:.0f} s; lives {states}")
            time.sleep(0.05)

    def call(self, coroutine: Any, timeout_s: float = 30.0) -> Any:
        assert self.loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout_s)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)
        if self.error is not None:
            raise self.error


async def changes_of(gateways: list[str], keys: set[tuple[str, str]]) -> list[str]:
    """The presence history of `keys` (for a failure's message)."""
    async with ringcast.Client(gateways) as client:
        last = (await client.presence(CHANNEL).members()).serial
        found = []
        async with client.presence(CHANNEL).subscribe(after=0) as watch:
            async for event in watch:
                if event.member is not None and event.member.key in keys:
                    found.append(f"#{event.serial} {event.action.value} {event.member.key} {event.member.data!r}")
                if event.serial >= last:
                    break
        return found


async def logged_members(gateways: list[str]) -> dict[tuple[str, str], bytes]:
    async with ringcast.Client(gateways) as client:
        present = await client.presence(CHANNEL).members()
    return {member.key: member.data for member in present.members}


def quiet_point(load: PresenceLoad, what: str) -> None:
    """Members stop changing; once every drop is past its grace + slack and every watcher has seen
    what the log says, the watchers' sets, the log's set and the connected members are the same."""
    load.quiet.set()
    try:
        time.sleep(GRACE_S + SLACK_S + 0.5)
        expected = {key: life.data for key, life in load.ledger.lives.items() if life.state == "present"}
        deadline = time.monotonic() + 15
        while True:
            logged = load.call(logged_members(load.gateways))
            seen = [{key: member.data for key, member in watcher.members.items()} for watcher in load.watchers]
            if all(view == logged for view in seen) and logged == expected:
                break
            if time.monotonic() > deadline:
                extra = sorted(set(logged) - set(expected))[:5]
                missing = sorted(set(expected) - set(logged))[:5]
                differ = [len(set(view.items()) ^ set(logged.items())) for view in seen]
                stale = sorted(key for key in set(logged) & set(expected) if logged[key] != expected[key])[:5]
                odd = set(extra) | set(missing) | set(stale)
                lives = {key: (load.ledger.lives[key].state, load.ledger.lives[key].ended_at) for key in odd}
                print("lives:", lives, "now", time.monotonic())
                print("history:", *load.call(changes_of(load.gateways, odd)), sep="\n  ")
                pytest.fail(
                    f"{what}: log has {len(logged)} members, {len(expected)} connected "
                    f"(ghosts {extra}, vanished {missing}, data not the member's last {stale}); "
                    f"watchers differ from the log by {differ}"
                )
            time.sleep(0.2)
        print(f"{what}: {len(logged)} members, every watcher and the log agree")
    finally:
        load.quiet.clear()


def test_two_hundred_members_keep_one_set_through_an_owner_kill_and_a_pause(cluster: Launcher) -> None:
    async def short_grace() -> None:
        etcd = await Etcd.connect(cluster.topology.named("etcd").address)
        try:
            await namespaces.put(etcd, "lobby", NamespaceOptions(presence_grace_s=GRACE_S))
        finally:
            await etcd.close()

    asyncio.run(short_grace())
    time.sleep(1.5)  # the namespace reaches every gateway and owner
    load = PresenceLoad(cluster.topology.gateways)
    faults: list[tuple[float, float]] = []
    try:
        load.progress(300, "300 presence changes")
        quiet_point(load, "before faults")

        owner = owner_of(cluster, CHANNEL)
        started = time.monotonic()
        cluster.kill(owner)
        wait_until(lambda: owner_of(cluster, CHANNEL) != owner, "the channel moving", timeout_s=20)
        cluster.restart(owner)
        faults.append((started, time.monotonic()))
        load.progress(200, "200 changes after the kill")
        quiet_point(load, "after the owner's SIGKILL")

        paused = owner_of(cluster, CHANNEL)
        started = time.monotonic()
        pause(cluster, paused)
        time.sleep(5.0)  # past its 2 s lease: the channel moves on without it
        resume(cluster, paused)
        faults.append((started, time.monotonic()))
        load.progress(200, "200 changes after the pause")
        quiet_point(load, "after the pause")
    finally:
        with contextlib.suppress(Exception):
            load.finish()
    ledger = load.ledger
    assert ledger.violations == [], ledger.violations[:20]

    def in_a_fault(dropped_at: float) -> bool:
        return any(start - GRACE_S - SLACK_S <= dropped_at <= end for start, end in faults)

    calm = [stayed for stayed, dropped_at in ledger.ghost_s if not in_a_fault(dropped_at)]
    stormy = [stayed for stayed, dropped_at in ledger.ghost_s if in_a_fault(dropped_at)]
    print(
        f"{len(ledger.lives)} member lives, {ledger.changes} changes; dropped members left after "
        f"{max(calm, default=0):.2f} s at most ({len(calm)} drops), {max(stormy, default=0):.2f} s at most "
        f"for {len(stormy)} drops within a fault's window"
    )
    assert calm and max(calm) <= GRACE_S + SLACK_S, sorted(calm)[-5:]
