"""The channel role under retention (rule 7): commit notices, explicit gaps, trimmed logs adopted
from their base, replicas reset to another's base."""

from __future__ import annotations

import pytest

from services.core.entries import Position
from services.core.role import (
    ChannelRole,
    Effects,
    RoleConfig,
    RoleState,
)
from tests.core.role_harness import STORES, Replicas, publish, take_over


def _tell_commit(replicas: Replicas, role: ChannelRole, now_ms: int) -> None:
    """Let time pass until the role's commit notices have gone out and been answered."""
    effects = role.notify_commit(now_ms + role.config.commit_notice_ms)
    assert effects.sends
    replicas.run(role, effects, now_ms + role.config.commit_notice_ms)


def test_appends_carry_the_commit_point_and_an_idle_channel_sends_it_once_more() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    for index in range(3):
        publish(replicas, role, index, f"m{index}", now_ms=index)
    assert role.commit == 3
    assert [replicas.storages[name].committed("ch") for name in STORES] == [2, 2, 2]  # told by the next append
    assert role.quiet  # nothing waits on time: the node's sweep sends the notice
    assert not role.notify_commit(role.config.commit_notice_ms - 10).sends  # the last append is too recent
    _tell_commit(replicas, role, 2)
    assert [replicas.storages[name].committed("ch") for name in STORES] == [3, 3, 3]
    assert not role.notify_commit(10 * role.config.commit_notice_ms).sends  # told: nothing owed


def test_a_reader_from_before_the_retained_range_gets_an_explicit_gap() -> None:
    config = RoleConfig(tail_entries_max=4)
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config)
    for index in range(20):
        publish(replicas, role, index, f"m{index}")
    _tell_commit(replicas, role, 0)
    assert [replicas.trim(name, 6) for name in STORES] == [14, 14, 14]
    effects = Effects()
    effects.extend(role.subscribe(5, 3, 0))
    effects.extend(role.read_history(6, 3, 4, 0))
    replicas.run(role, effects)
    (delivery,) = [delivery for token, delivery in effects.deliveries if token == 5 and delivery.gap_next_serial]
    assert delivery.gap_next_serial == 15 and delivery.entries[0].serial == 15
    delivered = [e.serial for token, d in effects.deliveries if token == 5 for e in d.entries]
    assert delivered == list(range(15, 21))  # after the gap, every retained entry once, in order
    ((token, history),) = effects.histories
    assert token == 6 and history.gap_next_serial == 15 and [e.serial for e in history.entries] == [15, 16, 17, 18]
    effects = Effects()
    effects.extend(role.subscribe(8, 16, 0))  # from inside the retained range: no gap
    replicas.run(role, effects)
    assert [(d.gap_next_serial, [e.serial for e in d.entries]) for _, d in effects.deliveries] == [
        (0, [17, 18, 19, 20])
    ]


def test_what_a_replica_trimmed_is_not_served_from_memory_either() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)  # its in-memory tail keeps all 20 entries
    for index in range(20):
        publish(replicas, role, index, f"m{index}")
    _tell_commit(replicas, role, 0)
    replicas.trim("store-a", 6)
    effects = Effects()
    effects.extend(role.subscribe(5, 0, 0))
    assert effects.deliveries[0][1].entries[0].serial == 1  # nobody said anything was trimmed yet
    publish(replicas, role, 99, "m20")  # store-a's reply shows its base
    effects = Effects()
    effects.extend(role.subscribe(6, 0, 0))
    effects.extend(role.read_history(7, 2, 3, 0))
    assert [(d.gap_next_serial, [e.serial for e in d.entries][:1]) for _, d in effects.deliveries] == [
        (15, []),
        (0, [15]),
    ]
    ((_, history),) = effects.histories
    assert history.gap_next_serial == 15 and [e.serial for e in history.entries] == [15, 16, 17]


def test_a_replica_that_refuses_an_append_is_not_sent_it_again_in_a_loop() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    publish(replicas, role, 1, "m1", "m2")
    storage = replicas.storages["store-c"]
    storage.drop_through("ch", Position(2, 9))  # a stamp no owner at epoch 7 can hold: INVALID "trimmed"
    role.replicas["store-c"].match, role.replicas["store-c"].next = 1, 2  # as if it had to catch up
    effects = publish(replicas, role, 2, "m3", now_ms=10)
    refused = [request for name, request in effects.sends if name == "store-c"]
    assert len(refused) == 1 and any("trimmed" in event for event in effects.events)
    effects = Effects()
    effects.extend(role.tick(10 + role.config.append_timeout_ms - 1))
    assert not [request for name, request in effects.sends if name == "store-c"]  # still backing off
    effects = Effects()
    effects.extend(role.tick(10 + role.config.append_timeout_ms))
    assert [name for name, _ in effects.sends] == ["store-c"]  # and then tried again, once


@pytest.mark.parametrize("kept", [3, 0])
def test_a_takeover_of_a_trimmed_log_starts_at_its_base(kept: int) -> None:
    replicas = Replicas()
    first = take_over(replicas, epoch=7)
    for index in range(10):
        publish(replicas, first, index, f"m{index}")
    _tell_commit(replicas, first, 0)
    for name in STORES:
        replicas.trim(name, kept)
    config = RoleConfig(recovery_full_entries_max=5, recovery_read_entries_max=8)
    second = take_over(replicas, epoch=9, config=config)
    assert second.state is RoleState.SERVING
    assert (second.tail_base, second.last, second.commit) == (10 - kept, 10, 10)
    assert len(second.dedup) == kept  # what was trimmed is older than any dedup window
    effects = publish(replicas, second, 1, "m9", "new")  # m9 is serial 10: retained only when kept
    expected = ((10, 11), (True, False)) if kept else ((11, 12), (False, False))
    assert [(r.serials, r.duplicates) for _, r in effects.results] == [expected]
    assert [replicas.storages[name].last("ch").serial for name in STORES] == [expected[0][-1]] * 3


def test_a_replica_behind_every_other_replicas_base_is_reset_and_caught_up() -> None:
    config = RoleConfig(tail_entries_max=4, read_entries_max=3)
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config)
    replicas.down = {"store-c"}
    for index in range(12):
        publish(replicas, role, index, f"m{index}")
    _tell_commit(replicas, role, 0)
    replicas.trim("store-a", 2)
    replicas.trim("store-b", 2)
    replicas.down = set()
    for now_ms in range(2_000, 20_000, 2_000):
        effects = Effects()
        effects.extend(role.tick(now_ms))
        replicas.run(role, effects, now_ms)
    assert replicas.storages["store-c"].base("ch") == replicas.storages["store-a"].base("ch")
    assert replicas.ids("store-c") == replicas.ids("store-a")
    assert role.replicas["store-c"].match == 12
    effects = publish(replicas, role, 99, "after", now_ms=20_000)
    assert [r.serials for _, r in effects.results] == [(13,)]
    assert replicas.ids("store-c")[-1] == (13, 7, "after")
