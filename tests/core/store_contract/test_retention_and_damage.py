"""The store contract, retention (rules 5 and 6) and damage at rest (rule 7), over every engine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.replica_log import (
    AppendReply,
    AppendStatus,
    FenceReply,
    ReadReply,
    Retention,
)
from tests.core.store_contract.harness import (
    Engine,
    Replica,
    by_count,
    channel,
    damage_at_rest,
    held_entries,
    make_entries,
    replica_with,
)

# --------------------------------------------------------------------------------- retention (rules 5 and 6)

# Retention by count only: nothing here is old or recent enough for time to matter.


def _stamped(first_serial: int, epoch: int, timestamps_ms: Sequence[int]) -> list[Entry]:
    return [
        Entry.make(first_serial + index, epoch, Message(f"t-{first_serial + index}", timestamp_ms=timestamp_ms))
        for index, timestamp_ms in enumerate(timestamps_ms)
    ]


def test_an_append_tells_the_replica_what_is_committed_as_far_as_it_matches(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 4)
    assert engine.storage.committed(channel) == 0
    # The owner's commit is 9, but this append shows the replica matches only up to 6.
    replica.append(channel, 1, Position(4, 1), make_entries(5, [1, 1]), commit=9)
    assert engine.storage.committed(channel) == 6
    replica.append(channel, 1, Position(2, 1), make_entries(3, [1]), commit=3)  # a late one: never lowers it
    assert engine.storage.committed(channel) == 6


def test_trim_drops_only_committed_entries_beyond_the_newest_entries_max(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 10)
    assert replica.trim(channel, 0, by_count) == 0, "nothing is known committed yet"
    replica.append(channel, 1, Position(10, 1), (), commit=6)
    assert replica.trim(channel, 0, by_count) == 6  # the count alone would allow 8
    assert engine.storage.base(channel) == Position(6, 1)
    assert engine.storage.last(channel) == Position(10, 1)
    assert [entry.serial for entry in held_entries(engine)] == [7, 8, 9, 10]
    assert engine.storage.epoch_at(channel, 6) == 1 and engine.storage.epoch_at(channel, 5) is None
    replica.append(channel, 1, Position(10, 1), (), commit=10)
    assert replica.trim(channel, 0, by_count) == 2
    assert [entry.serial for entry in held_entries(engine)] == [9, 10]


def test_trim_drops_by_age_but_never_what_is_younger_than_keep_recent(engine: Engine) -> None:
    replica = Replica(engine)
    replica.fence(channel, 1)
    replica.append(channel, 1, ORIGIN, _stamped(1, 1, [1_000 * n for n in range(1, 11)]), commit=10)
    retention = Retention(age_ms=5_000, entries_max=10**6, keep_recent_ms=1_000)
    assert replica.trim(channel, 10_000, retention) == 5  # timestamps 1,000 .. 5,000 are 5 s old or more
    assert engine.storage.base(channel) == Position(5, 1)
    everything = Retention(age_ms=0, entries_max=0, keep_recent_ms=3_000)
    assert replica.trim(channel, 10_000, everything) == 2  # 8,000 and younger stay: inside keep_recent
    assert [entry.serial for entry in held_entries(engine)] == [8, 9, 10]


def test_one_trim_looks_at_scan_max_entries_at_most(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 10)
    replica.append(channel, 1, Position(10, 1), (), commit=10)
    bounded = Retention(age_ms=0, entries_max=0, keep_recent_ms=0, scan_max=4)
    assert [replica.trim(channel, 0, bounded) for _ in range(4)] == [4, 4, 2, 0]


def test_a_log_trimmed_to_its_end_keeps_its_position_and_goes_on(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 2])
    replica.append(channel, 2, Position(3, 2), (), commit=3)
    assert replica.trim(channel, 0, Retention(age_ms=0, entries_max=0, keep_recent_ms=0)) == 3
    assert engine.storage.last(channel) == Position(3, 2) == engine.storage.base(channel)
    assert replica.read(channel, 0, 10) == ReadReply((), Position(3, 2), 0, Position(3, 2))
    assert replica.fence(channel, 3) == FenceReply(False, 3, Position(3, 2))
    assert replica.append(channel, 3, Position(3, 2), make_entries(4, [3])).status is AppendStatus.OK
    assert [entry.serial for entry in held_entries(engine)] == [4]


def test_reads_from_below_the_base_start_after_it_and_name_it(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 6)
    replica.append(channel, 1, Position(6, 1), (), commit=6)
    replica.trim(channel, 0, by_count)
    reply = replica.read(channel, 1, 10)
    assert [entry.serial for entry in reply.entries] == [5, 6] and reply.base == Position(4, 1)
    ids = replica.read_ids(channel, 0, 10)
    assert [message_id for message_id, _ in ids.ids] == [entry.message.id for entry in reply.entries]
    assert ids.base == Position(4, 1)
    assert replica.read(channel, 5, 10).entries == reply.entries[1:]


def test_an_append_from_below_the_base_skips_the_trimmed_entries(engine: Engine) -> None:
    owner_log = make_entries(1, [1] * 8)
    replica = Replica(engine)
    replica.fence(channel, 1)
    replica.append(channel, 1, ORIGIN, owner_log[:6], commit=6)
    replica.trim(channel, 0, by_count)  # base (4, 1)
    assert replica.append(channel, 1, owner_log[1].position, owner_log[2:8]).match_serial == 8
    assert held_entries(engine) == owner_log[4:8]
    assert replica.append(channel, 1, owner_log[0].position, owner_log[1:3]) == AppendReply(
        AppendStatus.OK, 1, Position(8, 1), match_serial=3, base=Position(4, 1)
    )
    assert held_entries(engine) == owner_log[4:8]
    # The entry at the base restamped by a later takeover (same message, newer epoch): the replica
    # takes the stamp, and drops what it holds after the base (written at older epochs).
    restamped = [owner_log[2], owner_log[3].with_epoch(2)]
    reply = replica.append(channel, 2, owner_log[1].position, restamped)
    assert reply.status is AppendStatus.OK and reply.base == Position(4, 2) and held_entries(engine) == []
    assert engine.storage.last(channel) == Position(4, 2) and engine.storage.epoch_at(channel, 4) == 2
    # An older stamp than the base's is no owner's log: refused, and nothing changes.
    refused = replica.append(channel, 2, owner_log[3].position, owner_log[4:5])
    assert refused.status is AppendStatus.INVALID and refused.detail == "trimmed"
    assert engine.storage.base(channel) == Position(4, 2)


def test_an_append_from_a_base_resets_a_replica_too_far_behind(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 1])
    assert replica.append(channel, 2, Position(8, 2), make_entries(9, [2, 2])).status is AppendStatus.MISMATCH
    reply = replica.append(channel, 2, Position(8, 2), make_entries(9, [2, 2]), from_base=True)
    assert reply.status is AppendStatus.OK and reply.match_serial == 10
    assert engine.storage.base(channel) == Position(8, 2)
    assert [entry.serial for entry in held_entries(engine)] == [9, 10]


def test_an_append_from_a_base_drops_a_conflicting_log_whole(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 10)
    reply = replica.append(channel, 2, Position(5, 2), make_entries(6, [2]), from_base=True)
    assert reply.status is AppendStatus.OK and engine.storage.base(channel) == Position(5, 2)
    assert [(entry.serial, entry.epoch) for entry in held_entries(engine)] == [(6, 2)]


def test_an_append_from_a_base_the_replica_holds_changes_nothing_before_it(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 5)
    held = held_entries(engine)
    reply = replica.append(channel, 1, Position(3, 1), make_entries(4, [1, 1, 1]), from_base=True)
    assert reply.status is AppendStatus.OK and engine.storage.base(channel) == ORIGIN
    assert held_entries(engine)[:5] == held and len(held_entries(engine)) == 6


def test_channels_are_listed_in_pages(engine: Engine) -> None:
    replica = Replica(engine)
    names = [f"c{index:02}" for index in range(7)]
    for name in reversed(names):
        replica.fence(name, 1)
    assert engine.storage.channels_after("", 3) == names[:3]
    assert engine.storage.channels_after(names[2], 3) == names[3:6]
    assert engine.storage.channels_after(names[5], 3) == names[6:]
    assert engine.storage.channels_after(names[6], 3) == []


# --------------------------------------------------------------------------------- rule 7: damage at rest


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_read_stops_at_damage_and_returns_only_the_intact_run_before_it(engine: Engine, how: str) -> None:
    replica = replica_with(engine, [1] * 10)
    held = held_entries(engine)
    damage_at_rest(engine, 5, how)
    reply = replica.read(channel, 2, 100)
    assert (reply.entries, reply.damaged, reply.last) == (tuple(held[2:4]), 5, Position(10, 1))
    assert replica.read(channel, 4, 100).entries == ()
    assert replica.read(channel, 4, 100).damaged == 5
    assert replica.read(channel, 5, 100).entries == tuple(held[5:])  # after it, intact again
    if how == "missing":  # ids carry no checksum: a hole shows, a corrupt entry does not
        ids = replica.read_ids(channel, 0, 100)
        assert (len(ids.ids), ids.damaged) == (4, 5)


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_damage_is_recorded_reported_and_repaired_in_place_by_the_owners_append(engine: Engine, how: str) -> None:
    replica = replica_with(engine, [1] * 10)
    held = held_entries(engine)
    damage_at_rest(engine, 5, how)
    assert replica.engine.run(lambda: replica.rules.mark_damaged(channel, 5)) == how
    assert ("orders", 5, "missing") in replica.rules.found
    assert replica.fence(channel, 1) == FenceReply(False, 1, Position(10, 1), damaged=5)
    assert replica.engine.run(lambda: replica.rules.mark_damaged(channel, 5)) == "missing"  # still
    # The owner rewrites from the first bad serial: the missing entry is filled in place, and every
    # intact entry after it is kept (never a good copy removed by a repair).
    reply = replica.append(channel, 1, held[3].position, held[4:7])
    assert (reply.status, reply.match_serial, reply.damaged, reply.last) == (AppendStatus.OK, 7, 0, Position(10, 1))
    assert held_entries(engine) == held
    assert replica.read(channel, 0, 100) == ReadReply(tuple(held), Position(10, 1), 0)
    assert replica.engine.run(lambda: replica.rules.mark_damaged(channel, 5)) == ""  # intact now


def test_an_append_whose_prev_is_missing_is_refused_and_names_the_damage(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 10)
    held = held_entries(engine)
    damage_at_rest(engine, 6, "missing")
    reply = replica.append(channel, 1, held[5].position, held[6:8])
    assert (reply.status, reply.damaged) == (AppendStatus.MISMATCH, 6)
    # Unknown damage is found by the first entry compared, too: the owner's resend from before it.
    damage_at_rest(engine, 3, "missing")
    reply = replica.append(channel, 1, held[1].position, held[2:8])
    assert (reply.status, reply.match_serial, reply.damaged) == (AppendStatus.OK, 8, 0)
    assert held_entries(engine) == held


def test_a_late_duplicate_append_over_an_unknown_hole_never_cuts_the_log_there(engine: Engine) -> None:
    """Found by the simulator (seed 6315 of 20,000): a binary search for the first entry not held
    took a hole for a conflict and cut the log there, dropping committed entries after it."""
    replica = replica_with(engine, [1] * 12)
    held = held_entries(engine)
    damage_at_rest(engine, 9, "missing")  # the replica does not know yet
    reply = replica.append(channel, 1, held[4].position, held[5:9])  # an old append, 6..9, once more
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 9)
    assert held_entries(engine) == held  # the hole filled, 10..12 kept


def test_a_reset_from_a_base_the_replica_lost_to_damage_keeps_what_follows(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 12)
    held = held_entries(engine)
    damage_at_rest(engine, 6, "missing")
    reply = replica.append(channel, 1, held[5].position, held[6:8], from_base=True)
    assert (reply.status, reply.base) == (AppendStatus.OK, held[5].position)
    assert held_entries(engine) == held[6:]


def test_a_fence_drops_a_corrupt_last_entry_and_answers_what_the_replica_can_vouch_for(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 6)
    damage_at_rest(engine, 6, "corrupt")
    assert replica.fence(channel, 2) == FenceReply(False, 2, Position(5, 1))
    assert [entry.serial for entry in held_entries(engine)] == [1, 2, 3, 4, 5]
    assert replica.rules.found == [(channel, 6, "corrupt")]
