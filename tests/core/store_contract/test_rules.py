"""The store contract: the replica log rules (services/core/replica_log.py) hold over every storage engine.

One suite, run once per engine (`ENGINES`). Every rule test drives a `ReplicaLog` over the engine's
storage, each operation in its own transaction where the engine has them (as the server runs it),
and checks the replies and what the engine holds. A randomized run then applies the same sequence
of fences, appends (well formed, stale, mismatched, malformed), reads and rolled-back transactions
to the engine and to the in-memory reference, and requires identical replies and identical logs.

To add an engine, add one entry to `ENGINES`: a function that opens a fresh, empty storage in a
directory and wraps it in an `Engine`. The Redis engine runs against a real redis-server (started
once for the module, with the flags `ringcast up --engine redis` uses); each storage gets a key
prefix of its own. The SQLite-only and Redis-only properties follow the contract suite.
"""

from __future__ import annotations

import pytest

from services.core import replica_log as log_module
from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.replica_log import (
    AppendReply,
    AppendStatus,
    FenceReply,
    ReadReply,
)
from tests.core.store_contract.harness import (
    Engine,
    Replica,
    channel,
    damage_at_rest,
    engine_state,
    held_entries,
    make_entries,
    other_channel,
    replica_with,
    with_checksum,
)

# --------------------------------------------------------------------------------- the storage itself


def test_an_empty_storage_holds_nothing(engine: Engine) -> None:
    storage = engine.storage
    assert storage.fence_of(channel) == 0
    assert storage.last(channel) == ORIGIN
    assert storage.epoch_at(channel, 0) == 0
    assert storage.epoch_at(channel, 1) is None
    assert storage.read(channel, 0, 10) == []


def test_storage_positions_and_epochs(engine: Engine) -> None:
    replica_with(engine, [1, 1, 3, 3, 3, 4])
    storage = engine.storage
    assert storage.last(channel) == Position(6, 4)
    assert [storage.epoch_at(channel, serial) for serial in range(8)] == [0, 1, 1, 3, 3, 3, 4, None]
    assert [storage.first_serial_of_epoch(channel, epoch) for epoch in (1, 3, 4)] == [1, 3, 6]
    # The other channel is untouched.
    assert (storage.fence_of(other_channel), storage.last(other_channel)) == (0, ORIGIN)


def test_stored_messages_come_back_identical_and_intact(engine: Engine) -> None:
    message = Message("id-1", "event", bytes(range(256)), (("a", "1"), ("b", "é"), ("z", "")), 1_700_000_000_123)
    entry = Entry.make(1, 7, message)
    Replica(engine).append(channel, 7, ORIGIN, [entry])
    [stored] = held_entries(engine)
    assert stored == entry
    assert stored.message.headers == message.headers
    assert stored.intact()


# --------------------------------------------------------------------------------- rule 1: fence


def test_fence_raises_the_fence_and_answers_the_last_position(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 2])
    reply = replica.fence(channel, 4)
    assert (reply.fenced, reply.fence_epoch, reply.last) == (False, 4, Position(3, 2))
    assert engine.storage.fence_of(channel) == 4


def test_fence_with_a_lower_epoch_is_fenced_and_changes_nothing(engine: Engine) -> None:
    replica = replica_with(engine, [1, 3], fence=5)
    before = engine_state(engine)
    reply = replica.fence(channel, 4)
    assert (reply.fenced, reply.fence_epoch, reply.last) == (True, 5, Position(2, 3))
    assert engine_state(engine) == before


def test_fence_at_the_same_epoch_is_not_fenced(engine: Engine) -> None:
    replica = replica_with(engine, [2], fence=2)
    assert replica.fence(channel, 2) == FenceReply(False, 2, Position(1, 2))


def test_fences_of_channels_are_independent(engine: Engine) -> None:
    replica = Replica(engine)
    replica.fence(channel, 7)
    assert not replica.fence(other_channel, 1).fenced
    assert (engine.storage.fence_of(channel), engine.storage.fence_of(other_channel)) == (7, 1)


# --------------------------------------------------------------------------------- rule 2: FENCED, MISMATCH


def test_append_below_the_fence_is_fenced_and_changes_nothing(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1], fence=3)
    before = engine_state(engine)
    reply = replica.append(channel, 2, Position(2, 1), make_entries(3, [2]))
    assert (reply.status, reply.fence_epoch, reply.last) == (AppendStatus.FENCED, 3, Position(2, 1))
    assert engine_state(engine) == before


def test_append_at_a_higher_epoch_raises_the_fence(engine: Engine) -> None:
    replica = replica_with(engine, [1], fence=1)
    reply = replica.append(channel, 4, Position(1, 1), make_entries(2, [4]))
    assert (reply.status, reply.fence_epoch, reply.match_serial) == (AppendStatus.OK, 4, 2)
    assert engine.storage.fence_of(channel) == 4
    assert replica.append(channel, 1, Position(2, 4), make_entries(3, [1])).status is AppendStatus.FENCED


def test_append_after_the_end_of_a_short_log_is_a_mismatch_with_no_conflict(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1], fence=2)
    before = engine_state(engine)
    reply = replica.append(channel, 2, Position(5, 2), make_entries(6, [2]))
    assert reply == AppendReply(AppendStatus.MISMATCH, 2, Position(2, 1))
    assert engine_state(engine) == before


def test_mismatch_at_a_higher_epoch_raises_the_fence_but_keeps_the_log(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1], fence=1)
    before = held_entries(engine)
    reply = replica.append(channel, 3, Position(5, 1), make_entries(6, [3]))
    assert (reply.status, reply.fence_epoch) == (AppendStatus.MISMATCH, 3)
    assert engine.storage.fence_of(channel) == 3
    assert held_entries(engine) == before


@pytest.mark.parametrize(
    ("epochs", "prev_serial", "conflict_epoch", "conflict_first_serial"),
    [
        ([3], 1, 3, 1),
        ([1, 1, 2, 2, 2, 4], 4, 2, 3),
        ([1, 2, 3, 3, 3], 5, 3, 3),
        ([1, 2, 3, 3, 3], 2, 2, 2),
        ([1, 1, 1, 1], 3, 1, 1),
    ],
)
def test_mismatch_with_a_conflicting_epoch_names_it_and_its_first_serial(
    engine: Engine, epochs: list[int], prev_serial: int, conflict_epoch: int, conflict_first_serial: int
) -> None:
    replica = replica_with(engine, epochs, fence=9)
    before = engine_state(engine)
    # The owner at epoch 9 claims prev is at epoch 8, which no entry of this log has.
    reply = replica.append(channel, 9, Position(prev_serial, 8), make_entries(prev_serial + 1, [9]))
    assert reply == AppendReply(
        AppendStatus.MISMATCH,
        9,
        Position(len(epochs), epochs[-1]),
        conflict_epoch=conflict_epoch,
        conflict_first_serial=conflict_first_serial,
    )
    assert engine_state(engine) == before


# --------------------------------------------------------------------------------- rule 3: truncation, duplicates


def test_append_truncates_the_conflicting_suffix_then_writes(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 2, 2, 2], fence=2)
    kept = held_entries(engine)[:2]
    new = make_entries(3, [3], tag="owner-3")
    reply = replica.append(channel, 3, Position(2, 1), new)
    assert (reply.status, reply.match_serial, reply.last) == (AppendStatus.OK, 3, Position(3, 3))
    assert held_entries(engine) == kept + new
    assert engine.storage.last(channel) == Position(3, 3)
    assert engine.storage.epoch_at(channel, 4) is None


def test_append_skips_held_entries_and_truncates_at_the_first_conflict_inside_the_batch(engine: Engine) -> None:
    replica = replica_with(engine, [1, 2, 2, 2, 2], fence=2)
    held = held_entries(engine)
    batch = [held[1], held[2], *make_entries(4, [3, 3], tag="owner-3")]
    reply = replica.append(channel, 3, Position(1, 1), batch)
    assert (reply.status, reply.match_serial, reply.last) == (AppendStatus.OK, 5, Position(5, 3))
    assert held_entries(engine) == held[:3] + batch[2:]


def test_truncation_to_the_origin_then_a_new_log(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 1], fence=1)
    new = make_entries(1, [2, 2], tag="owner-2")
    assert replica.append(channel, 2, ORIGIN, new).status is AppendStatus.OK
    assert held_entries(engine) == new
    assert engine.storage.first_serial_of_epoch(channel, 2) == 1


def test_late_duplicate_of_an_old_append_never_truncates_later_entries(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 1, 1, 1], fence=1)
    held = held_entries(engine)
    before = engine_state(engine)
    reply = replica.append(channel, 1, Position(1, 1), held[1:3])
    assert (reply.status, reply.match_serial, reply.last) == (AppendStatus.OK, 3, Position(5, 1))
    assert engine_state(engine) == before


def test_late_duplicate_at_an_older_epoch_within_the_fence_never_truncates(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 2, 2], fence=2)
    before = engine_state(engine)
    reply = replica.append(channel, 2, ORIGIN, held_entries(engine)[:3])
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 3)
    assert engine_state(engine) == before


def test_append_overlapping_the_end_extends_only_with_the_new_entries(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 1], fence=1)
    held = held_entries(engine)
    new = make_entries(4, [1, 1], tag="late")
    reply = replica.append(channel, 1, Position(1, 1), [*held[1:], *new])
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 5)
    assert held_entries(engine) == held + new


# --------------------------------------------------------------------------------- rule 4: malformed appends


_good = make_entries(4, [3, 4, 5], tag="new")
MALFORMED = {
    "bad checksum": (Position(3, 2), [_good[0], with_checksum(_good[1], _good[1].checksum ^ 1)], AppendStatus.CORRUPT),
    "content changed": (
        Position(3, 2),
        [Entry(_good[0].serial, _good[0].epoch, Message("other"), _good[0].checksum)],
        AppendStatus.CORRUPT,
    ),
    "first serial is not prev + 1": (Position(3, 2), make_entries(5, [3, 4]), AppendStatus.INVALID),
    "first serial repeats prev": (Position(3, 2), make_entries(3, [3, 4]), AppendStatus.INVALID),
    "gap inside the batch": (Position(3, 2), [*make_entries(4, [3]), *make_entries(6, [3])], AppendStatus.INVALID),
    "epochs decrease inside": (Position(3, 2), make_entries(4, [4, 3]), AppendStatus.INVALID),
    "first entry below prev epoch": (Position(3, 2), make_entries(4, [1]), AppendStatus.INVALID),
    "entry epoch above the append epoch": (Position(3, 2), make_entries(4, [3, 6]), AppendStatus.INVALID),
    "prev epoch above the append epoch": (Position(3, 6), make_entries(4, [6]), AppendStatus.INVALID),
    "origin serial with an epoch": (Position(0, 1), make_entries(1, [1]), AppendStatus.INVALID),
    "negative prev serial": (Position(-1, 0), make_entries(0, [1]), AppendStatus.INVALID),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_append_is_refused_and_changes_nothing(engine: Engine, case: str) -> None:
    prev, entries, expected = MALFORMED[case]
    replica = replica_with(engine, [1, 1, 2], fence=2)
    before = engine_state(engine)
    # Epoch 5 is above the fence (2): an engine that wrongly kept part of the append would raise the fence.
    reply = replica.append(channel, 5, prev, entries)
    assert (reply.status, reply.fence_epoch, reply.last, reply.match_serial) == (expected, 2, Position(3, 2), 0)
    assert reply.detail
    assert engine_state(engine) == before


def test_malformed_append_that_would_also_conflict_is_refused_without_truncating(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 2, 2], fence=2)
    before = engine_state(engine)
    new = make_entries(3, [3, 3])
    assert replica.append(channel, 3, Position(2, 1), [new[0], with_checksum(new[1], 0)]).status is (
        AppendStatus.CORRUPT
    )
    assert engine_state(engine) == before


# --------------------------------------------------------------------------------- reads


def test_read_returns_the_requested_range_in_order_with_epochs(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 6 + [2] * 4)
    held = held_entries(engine)
    reply = replica.read(channel, 3, 4)
    assert reply.entries == tuple(held[3:7])
    assert [(entry.serial, entry.epoch) for entry in reply.entries] == [(4, 1), (5, 1), (6, 1), (7, 2)]
    assert (reply.last, reply.damaged) == (Position(10, 2), 0)
    assert replica.read(channel, 0, 100).entries == tuple(held)
    assert replica.read(channel, 8, 100).entries == tuple(held[8:])
    assert replica.read(channel, -5, 2).entries == tuple(held[:2])


@pytest.mark.parametrize("after_serial", [10, 11, 1_000])
def test_read_after_the_end_is_empty(engine: Engine, after_serial: int) -> None:
    replica = replica_with(engine, [1] * 10)
    assert replica.read(channel, after_serial, 5) == ReadReply((), Position(10, 1), 0)


@pytest.mark.parametrize("limit", [0, -1])
def test_read_with_no_room_is_empty(engine: Engine, limit: int) -> None:
    replica = replica_with(engine, [1] * 3)
    assert replica.read(channel, 0, limit).entries == ()


def test_read_of_an_unknown_channel_is_empty(engine: Engine) -> None:
    assert Replica(engine).read("nowhere", 0, 10) == ReadReply((), ORIGIN, 0)


def test_read_limit_is_capped_by_read_entries_max(engine: Engine) -> None:
    count_max = log_module.read_entries_max
    replica = replica_with(engine, [1] * (count_max + 7))
    reply = replica.read(channel, 0, count_max * 3)
    assert [entry.serial for entry in reply.entries] == list(range(1, count_max + 1))
    assert reply.last == Position(count_max + 7, 1)
    tail = replica.read(channel, count_max, count_max * 3)
    assert [entry.serial for entry in tail.entries] == list(range(count_max + 1, count_max + 8))


def test_ids_only_reads_give_each_entrys_message_id_and_timestamp(engine: Engine) -> None:
    replica = replica_with(engine, [1] * 6 + [2] * 4)
    held = held_entries(engine)
    reply = replica.read_ids(channel, 3, 4)
    assert reply.ids == tuple((entry.message.id, entry.message.timestamp_ms) for entry in held[3:7])
    assert (reply.entries, reply.last, reply.damaged) == ((), Position(10, 2), 0)
    assert [message_id for message_id, _ in replica.read_ids(channel, 0, 100).ids] == [e.message.id for e in held]
    assert replica.read_ids(channel, 10, 5).ids == ()
    assert replica.read_ids(channel, 0, 0).ids == ()
    assert Replica(engine).read_ids("nowhere", 0, 10) == ReadReply((), ORIGIN, 0)


def test_ids_only_reads_are_capped_by_ids_read_max(engine: Engine) -> None:
    count_max = log_module.ids_read_max
    replica = replica_with(engine, [1] * (count_max + 3))
    reply = replica.read_ids(channel, 0, count_max * 2)
    assert len(reply.ids) == count_max
    assert reply.ids[-1][0] == held_entries(engine)[count_max - 1].message.id


def test_reads_of_channels_are_independent(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1])
    other = make_entries(1, [5], tag="other")
    replica.append(other_channel, 5, ORIGIN, other)
    assert replica.read(other_channel, 0, 10).entries == tuple(other)
    assert len(replica.read(channel, 0, 10).entries) == 2


# --------------------------------------------------------------------------------- rule 8: defence in depth


def test_an_entry_other_than_the_one_held_at_its_serial_and_epoch_is_refused_as_data_loss(engine: Engine) -> None:
    """The attack: an entry forged at the owner's (serial, epoch) must never let the owner's real
    entry be acknowledged as held; and the forged-first order the other way round too."""
    replica = replica_with(engine, [1, 1, 1], fence=1)
    held = held_entries(engine)
    before = engine_state(engine)
    (forged,) = make_entries(2, [1], tag="forged")
    assert (forged.serial, forged.epoch) == (held[1].serial, held[1].epoch) and forged.checksum != held[1].checksum
    reply = replica.append(channel, 1, Position(1, 1), [forged, held[2]])
    assert (reply.status, reply.match_serial) == (AppendStatus.DATA_LOSS, 0), reply
    assert "entry 2 at epoch 1 differs" in reply.detail
    assert engine_state(engine) == before  # nothing written, nothing truncated
    assert replica.rules.found == [(channel, 2, "conflict")]
    same = replica.append(channel, 1, Position(1, 1), held[1:3])  # the entries it holds: a plain duplicate
    assert (same.status, same.match_serial) == (AppendStatus.OK, 3)


def test_a_held_copy_that_fails_its_own_checksum_is_replaced_not_refused(engine: Engine) -> None:
    replica = replica_with(engine, [1, 1, 1], fence=1)
    held = held_entries(engine)
    damage_at_rest(engine, 2, "corrupt")
    reply = replica.append(channel, 1, Position(1, 1), held[1:3])
    assert (reply.status, reply.match_serial) == (AppendStatus.OK, 3), reply
    assert held_entries(engine) == held  # the owner's copy replaced the rotten one
