"""The channel role trusts no single replica (rule 8): holes, bad checksums and wrong entries are
read around, never served, never adopted, and the replica is rewritten."""

from __future__ import annotations

import pytest

from services.core.entries import Entry, Position
from services.core.replica_log import ReadReply
from services.core.role import (
    ChannelRole,
    Effects,
    ReadRequest,
    RoleConfig,
    RoleState,
)
from tests.core.role_harness import STORES, Replicas, entries, publish, take_over


def _settle(replicas: Replicas, role: ChannelRole, now_ms: int = 0, rounds: int = 5) -> None:
    """Let a few ticks pass (backfills, repairs), each 1 s apart."""
    for step in range(rounds):
        effects = Effects()
        effects.extend(role.tick(now_ms + step * 1_000))
        replicas.run(role, effects, now_ms + step * 1_000)


def _published_role(count: int, config: RoleConfig | None = None) -> tuple[Replicas, ChannelRole]:
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config or RoleConfig(tail_entries_max=4, read_entries_max=50))
    for index in range(count):
        publish(replicas, role, index, f"m{index + 1}")
    return replicas, role


def test_history_never_skips_a_hole_in_one_replica_and_the_replica_is_rewritten() -> None:
    replicas, role = _published_role(20)
    assert role.tail_base > 3
    replicas.storages["store-a"].damage("ch", 3, "missing")  # store-a: the replica reads go to first
    served: list[int] = []
    while len(served) < 20:
        effects = Effects()
        effects.extend(role.read_history(99, len(served), 100, 0))
        replicas.run(role, effects)
        ((_, result),) = effects.histories
        served += [entry.serial for entry in result.entries]
    assert served == list(range(1, 21))
    faults = [(replica, kind) for _, replica, kind, _ in effects.replica_faults]
    assert faults in ([("store-a", "damaged")], [])  # reported once, on the read that found it
    assert role.replicas["store-a"].damaged == 3
    _settle(replicas, role)
    assert replicas.ids("store-a") == replicas.ids("store-b")  # filled in place from a good replica
    assert role.replicas["store-a"].damaged == 0 and role.replicas["store-a"].match == 20


def test_a_subscriber_from_the_start_gets_every_serial_across_a_hole() -> None:
    replicas, role = _published_role(20)
    replicas.storages["store-a"].damage("ch", 5, "corrupt")
    received: list[int] = []
    faults: list[tuple[str, str]] = []
    effects = Effects()
    effects.extend(role.subscribe(7, 0, 0))
    for step in range(10):
        replicas.run(role, effects, step * 1_000)
        received += [entry.serial for _, delivery in effects.deliveries for entry in delivery.entries]
        faults += [(replica, kind) for _, replica, kind, _ in effects.replica_faults]
        effects = Effects()
        effects.extend(role.tick(step * 1_000))
    assert received == list(range(1, 21))
    assert faults == [("store-a", "damaged")]
    assert replicas.ids("store-a") == replicas.ids("store-b") and role.replicas["store-a"].damaged == 0
    assert replicas.storages["store-a"].read("ch", 4, 1)[0].intact()


def test_the_owner_checks_every_read_itself_even_when_the_replica_does_not() -> None:
    replicas, role = _published_role(20)
    effects = Effects()
    effects.extend(role.read_history(99, 0, 10, 0))
    ((replica, request),) = [(name, r) for name, r in effects.sends if isinstance(r, ReadRequest)]
    held = replicas.storages[replica].read("ch", 0, 10)
    lying = ReadReply((held[0], held[1], held[3], held[4]), Position(20, 7))  # 3 is missing, and not said
    effects.extend(role.on_read_reply(replica, request, lying, 0))
    ((_, result),) = effects.histories
    assert [entry.serial for entry in result.entries] == [1, 2]
    assert [(name, kind) for _, name, kind, _ in effects.replica_faults] == [(replica, "damaged")]
    # An intact entry, but not the one we hold at that serial (the tail's base, whose epoch we know).
    base = role.tail_base
    effects = Effects()
    effects.extend(role.read_history(98, base - 2, 2, 0))
    ((other, request),) = [(name, r) for name, r in effects.sends if isinstance(r, ReadRequest)]
    assert other != replica
    before, at_base = replicas.storages[other].read("ch", base - 2, 2)
    stale = Entry.make(base, role.epoch - 1, at_base.message)
    effects.extend(role.on_read_reply(other, request, ReadReply((before, stale), Position(20, 7)), 0))
    ((_, result),) = effects.histories
    assert [entry.serial for entry in result.entries] == [base - 1]
    assert [(name, kind) for _, name, kind, _ in effects.replica_faults] == [(other, "damaged")]


def _adopted_first(log: list[Entry], config: RoleConfig) -> str:
    """The replica a takeover reads from when every replica holds `log` (found by trying it)."""
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, log)
    role = ChannelRole("ch", 9, config, 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    (adopted,) = {name for name, request in effects.sends if isinstance(request, ReadRequest) and not request.ids_only}
    return adopted


@pytest.mark.parametrize("serial", [10, 30])  # in the whole-entry read; in the ids-only read
def test_a_takeover_never_adopts_a_log_it_cannot_read_whole(serial: int) -> None:
    replicas = Replicas()
    old = entries(3, 1, *(f"m{n}" for n in range(1, 51)))
    for name in STORES:
        replicas.write(name, old)
    config = RoleConfig(recovery_full_entries_max=15, recovery_ids_per_read=7)
    damaged = _adopted_first(old, config)
    replicas.storages[damaged].damage("ch", 50 - serial, "missing")
    role = ChannelRole("ch", 9, config, 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    assert role.state is RoleState.SERVING and role.last == 50
    assert [(name, kind) for _, name, kind, _ in effects.replica_faults] == [(damaged, "damaged")]
    effects = publish(replicas, role, 1, f"m{50 - serial}", "new")  # the dedup window is whole
    assert [(r.serials, r.duplicates) for _, r in effects.results] == [((50 - serial, 51), (True, False))]
    _settle(replicas, role)
    assert replicas.ids(damaged) == replicas.ids(next(name for name in STORES if name != damaged))


def test_damage_a_replica_reports_itself_is_avoided_in_a_takeover_and_repaired() -> None:
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, entries(3, 1, "a", "b", "c", "d"))
    replicas.storages["store-b"].damage("ch", 2, "corrupt")
    assert replicas.logs["store-b"].mark_damaged("ch", 2) == "corrupt"  # its scrub found it
    role = ChannelRole("ch", 9, RoleConfig(), 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    assert role.state is RoleState.SERVING and role.last == 4
    assert ("store-b", "damaged") in [(name, kind) for _, name, kind, _ in effects.replica_faults]
    recovered_from = {name for name, r in effects.sends if isinstance(r, ReadRequest) and r.channel == "ch"}
    assert "store-b" not in recovered_from or role.replicas["store-b"].unreadable
    # Rewritten from its first bad serial by the takeover's own appends: filled, and whole again.
    assert replicas.ids("store-b") == replicas.ids("store-a") == [(1, 3, "a"), (2, 3, "b"), (3, 3, "c"), (4, 9, "d")]
    assert replicas.storages["store-b"].damaged("ch") == 0 and role.replicas["store-b"].damaged == 0
