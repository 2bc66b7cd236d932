"""Tests for the replica log rules (services/core/replica_log.py) over the in-memory storage engine.

Each test names one rule of the module docstring (DESIGN §3) and fails when that rule is broken. The
stateful test at the end drives one replica with a small model of owners, each holding its own copy
of the log, and compares every answer and every resulting log with a naive reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core import replica_log as log_module
from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.memory_log import MemoryLogStorage
from services.core.replica_log import AppendStatus, ReplicaLog

channel = "orders"
other_channel = "chat:lobby"

# Large enough to read any log these tests build, in one call to the storage (which has no cap).
whole_log_count = 1_000_000


def make_entries(first_serial: int, epochs: Sequence[int], tag: str = "m") -> list[Entry]:
    """Entries at first_serial, first_serial + 1, ... with the given epochs and distinct messages."""
    return [
        Entry.make(first_serial + index, epoch, Message(f"{tag}-{first_serial + index}-{epoch}"))
        for index, epoch in enumerate(epochs)
    ]


def held_entries(storage: MemoryLogStorage, name: str = channel) -> list[Entry]:
    return storage.read(name, 0, whole_log_count)


def _state(storage: MemoryLogStorage) -> dict[str, tuple[int, tuple[Entry, ...]]]:
    """Everything a replica holds: per channel, its fence and its whole log."""
    return {name: (storage.fence_of(name), tuple(held_entries(storage, name))) for name in storage.channels()}


def _replica_with(epochs: Sequence[int], fence: int | None = None) -> tuple[ReplicaLog, MemoryLogStorage]:
    """A replica whose log holds entries 1..len(epochs) at `epochs`, fenced at `fence` (default: the last epoch)."""
    storage = MemoryLogStorage()
    replica = ReplicaLog(storage)
    highest = max(epochs, default=0)
    fence = highest if fence is None else fence
    if fence:
        assert not replica.fence(channel, fence).fenced
    if epochs:
        reply = replica.append(channel, fence, ORIGIN, make_entries(1, epochs))
        assert reply.status is AppendStatus.OK
    assert [entry.epoch for entry in held_entries(storage)] == list(epochs)
    return replica, storage


# Rule 1: fence.


def test_fence_raises_the_fence_and_answers_the_last_position() -> None:
    replica, storage = _replica_with([1, 1, 2])
    reply = replica.fence(channel, 4)
    assert not reply.fenced
    assert reply.fence_epoch == 4
    assert reply.last == Position(3, 2)
    assert storage.fence_of(channel) == 4


def test_fence_on_an_empty_log_answers_the_origin() -> None:
    replica = ReplicaLog(MemoryLogStorage())
    reply = replica.fence(channel, 1)
    assert (reply.fenced, reply.fence_epoch, reply.last) == (False, 1, ORIGIN)


def test_fence_with_a_lower_epoch_is_fenced_and_never_lowers_the_fence() -> None:
    replica, storage = _replica_with([1, 3], fence=5)
    before = _state(storage)
    reply = replica.fence(channel, 4)
    assert reply.fenced
    assert reply.fence_epoch == 5
    assert reply.last == Position(2, 3)
    assert _state(storage) == before


def test_fence_at_the_same_epoch_is_not_fenced() -> None:
    replica, storage = _replica_with([2], fence=2)
    reply = replica.fence(channel, 2)
    assert (reply.fenced, reply.fence_epoch, reply.last) == (False, 2, Position(1, 2))
    assert storage.fence_of(channel) == 2


@given(epochs=st.lists(st.integers(min_value=0, max_value=20), max_size=30))
def test_fence_is_the_running_maximum(epochs: list[int]) -> None:
    storage = MemoryLogStorage()
    replica = ReplicaLog(storage)
    highest = 0
    for epoch in epochs:
        reply = replica.fence(channel, epoch)
        assert reply.fenced == (epoch < highest)
        highest = max(highest, epoch)
        assert reply.fence_epoch == highest
        assert storage.fence_of(channel) == highest
        assert reply.last == ORIGIN


def test_fences_of_channels_are_independent() -> None:
    storage = MemoryLogStorage()
    replica = ReplicaLog(storage)
    replica.fence(channel, 7)
    assert not replica.fence(other_channel, 1).fenced
    assert storage.fence_of(other_channel) == 1
    assert storage.fence_of(channel) == 7


# Rule 2: the epoch check and the consistency check.


def test_append_below_the_fence_is_fenced_and_changes_nothing() -> None:
    replica, storage = _replica_with([1, 1], fence=3)
    before = _state(storage)
    reply = replica.append(channel, 2, Position(2, 1), make_entries(3, [2]))
    assert reply.status is AppendStatus.FENCED
    assert reply.fence_epoch == 3
    assert reply.last == Position(2, 1)
    assert _state(storage) == before


def test_append_at_a_higher_epoch_raises_the_fence() -> None:
    replica, storage = _replica_with([1], fence=1)
    reply = replica.append(channel, 4, Position(1, 1), make_entries(2, [4]))
    assert reply.status is AppendStatus.OK
    assert reply.fence_epoch == 4
    assert storage.fence_of(channel) == 4
    # The old owner is now stale.
    assert replica.append(channel, 1, Position(2, 4), make_entries(3, [1])).status is AppendStatus.FENCED
    assert replica.fence(channel, 3).fenced


def test_empty_append_at_a_higher_epoch_raises_the_fence() -> None:
    replica, storage = _replica_with([1, 1], fence=1)
    reply = replica.append(channel, 2, Position(2, 1), [])
    assert reply.status is AppendStatus.OK
    assert reply.match_serial == 2
    assert storage.fence_of(channel) == 2
    assert [entry.epoch for entry in held_entries(storage)] == [1, 1]


def test_mismatched_append_at_a_higher_epoch_still_raises_the_fence_but_keeps_the_log() -> None:
    replica, storage = _replica_with([1, 1], fence=1)
    before = held_entries(storage)
    reply = replica.append(channel, 3, Position(5, 1), make_entries(6, [3]))
    assert reply.status is AppendStatus.MISMATCH
    assert storage.fence_of(channel) == 3
    assert reply.fence_epoch == 3
    assert held_entries(storage) == before


def test_append_after_the_end_of_the_log_is_a_mismatch_with_no_conflict() -> None:
    replica, storage = _replica_with([1, 1], fence=2)
    before = _state(storage)
    reply = replica.append(channel, 2, Position(5, 2), make_entries(6, [2]))
    assert reply.status is AppendStatus.MISMATCH
    assert reply.last == Position(2, 1)
    assert reply.conflict_epoch == 0
    assert reply.conflict_first_serial == 0
    assert reply.match_serial == 0
    assert _state(storage) == before


def test_append_whose_prev_is_held_at_another_epoch_names_the_conflicting_epoch() -> None:
    replica, storage = _replica_with([1, 1, 2, 2, 2, 4], fence=4)
    before = _state(storage)
    # The owner believes serial 4 was written at epoch 3; this replica holds it at epoch 2.
    reply = replica.append(channel, 5, Position(4, 3), make_entries(5, [5]))
    assert reply.status is AppendStatus.MISMATCH
    assert reply.last == Position(6, 4)
    assert reply.conflict_epoch == 2
    assert reply.conflict_first_serial == 3
    # Only the fence moved (to the new owner's epoch); the log is untouched.
    assert held_entries(storage) == list(before[channel][1])
    assert storage.fence_of(channel) == 5


@pytest.mark.parametrize(
    ("epochs", "prev_serial", "conflict_epoch", "conflict_first_serial"),
    [
        ([3], 1, 3, 1),
        ([1, 2, 3, 3, 3], 5, 3, 3),
        ([1, 2, 3, 3, 3], 2, 2, 2),
        ([1, 1, 1, 1], 3, 1, 1),
    ],
)
def test_conflict_first_serial_is_the_first_serial_of_the_held_epoch(
    epochs: list[int], prev_serial: int, conflict_epoch: int, conflict_first_serial: int
) -> None:
    replica, _ = _replica_with(epochs, fence=9)
    # The owner at epoch 9 claims prev is at epoch 8, which no entry of this log has.
    reply = replica.append(channel, 9, Position(prev_serial, 8), [])
    assert reply.status is AppendStatus.MISMATCH
    assert (reply.conflict_epoch, reply.conflict_first_serial) == (conflict_epoch, conflict_first_serial)


# Rule 3: skip what is held, truncate at the first conflict, write the rest.


def test_append_truncates_the_conflicting_suffix_then_writes() -> None:
    replica, storage = _replica_with([1, 1, 2, 2, 2], fence=2)
    kept = held_entries(storage)[:2]
    new = make_entries(3, [3], tag="owner-3")
    reply = replica.append(channel, 3, Position(2, 1), new)
    assert reply.status is AppendStatus.OK
    assert reply.match_serial == 3
    assert reply.last == Position(3, 3)
    assert held_entries(storage) == kept + new


def test_append_skips_held_entries_and_truncates_at_the_first_conflict_inside_the_batch() -> None:
    replica, storage = _replica_with([1, 2, 2, 2, 2], fence=2)
    held = held_entries(storage)
    # The owner's log agrees up to serial 3, then it has entries at epoch 3.
    batch = [held[1], held[2], *make_entries(4, [3, 3], tag="owner-3")]
    reply = replica.append(channel, 3, Position(1, 1), batch)
    assert reply.status is AppendStatus.OK
    assert reply.match_serial == 5
    assert held_entries(storage) == held[:3] + batch[2:]
    assert reply.last == Position(5, 3)


def test_late_duplicate_of_an_old_append_never_truncates_later_entries() -> None:
    replica, storage = _replica_with([1, 1, 1, 1, 1], fence=1)
    held = held_entries(storage)
    before = _state(storage)
    reply = replica.append(channel, 1, Position(1, 1), held[1:3])
    assert reply.status is AppendStatus.OK
    assert reply.match_serial == 3
    assert reply.last == Position(5, 1)
    assert _state(storage) == before


def test_late_duplicate_at_an_older_epoch_within_the_fence_never_truncates() -> None:
    replica, storage = _replica_with([1, 1, 2, 2], fence=2)
    held = held_entries(storage)
    before = _state(storage)
    # An append from epoch 2 that is entirely held: the whole log is kept.
    reply = replica.append(channel, 2, ORIGIN, held[:3])
    assert reply.status is AppendStatus.OK
    assert reply.match_serial == 3
    assert _state(storage) == before


def test_append_overlapping_the_end_extends_only_with_the_new_entries() -> None:
    replica, storage = _replica_with([1, 1, 1], fence=1)
    held = held_entries(storage)
    new = make_entries(4, [1, 1], tag="late")
    reply = replica.append(channel, 1, Position(1, 1), [*held[1:], *new])
    assert reply.status is AppendStatus.OK
    assert reply.match_serial == 5
    assert held_entries(storage) == held + new


# Rule 4: malformed appends are refused whole and change nothing.


def _malformed_cases() -> list[tuple[str, Position, list[Entry], AppendStatus]]:
    """(name, prev, entries, expected status) for an append at epoch 5 onto the log [1, 1, 2]."""
    good = make_entries(4, [3, 4, 5], tag="new")
    bad_checksum = [good[0], Entry(good[1].serial, good[1].epoch, good[1].message, good[1].checksum + 1), good[2]]
    return [
        ("bad checksum", Position(3, 2), bad_checksum, AppendStatus.CORRUPT),
        (
            "bad checksum first",
            Position(3, 2),
            [Entry(4, 3, good[0].message, good[0].checksum + 1)],
            AppendStatus.CORRUPT,
        ),
        ("first serial is not prev + 1", Position(3, 2), make_entries(5, [3, 4]), AppendStatus.INVALID),
        ("first serial repeats prev", Position(3, 2), make_entries(3, [3, 4]), AppendStatus.INVALID),
        ("gap inside the batch", Position(3, 2), [*make_entries(4, [3]), *make_entries(6, [3])], AppendStatus.INVALID),
        (
            "serial repeated inside",
            Position(3, 2),
            [*make_entries(4, [3]), *make_entries(4, [3], tag="x")],
            AppendStatus.INVALID,
        ),
        ("epochs decrease inside", Position(3, 2), make_entries(4, [4, 3]), AppendStatus.INVALID),
        ("first entry below prev epoch", Position(3, 2), make_entries(4, [1]), AppendStatus.INVALID),
        ("entry epoch above the append epoch", Position(3, 2), make_entries(4, [3, 6]), AppendStatus.INVALID),
        ("prev epoch above the append epoch", Position(3, 6), make_entries(4, [6]), AppendStatus.INVALID),
        ("prev epoch above, no entries", Position(3, 6), [], AppendStatus.INVALID),
        ("origin serial with an epoch", Position(0, 1), make_entries(1, [1]), AppendStatus.INVALID),
        ("negative prev serial", Position(-1, 0), make_entries(0, [1]), AppendStatus.INVALID),
    ]


@pytest.mark.parametrize(
    ("prev", "entries", "expected"),
    [case[1:] for case in _malformed_cases()],
    ids=[case[0] for case in _malformed_cases()],
)
def test_malformed_append_is_refused_and_changes_nothing(
    prev: Position, entries: list[Entry], expected: AppendStatus
) -> None:
    journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=journal)
    replica = ReplicaLog(storage)
    assert replica.append(channel, 2, ORIGIN, make_entries(1, [1, 1, 2])).status is AppendStatus.OK
    before, journal_length = _state(storage), len(journal)
    # Epoch 5 is above the fence (2): a replica that wrongly accepted part of it would raise the fence.
    reply = replica.append(channel, 5, prev, entries)
    assert reply.status is expected
    assert reply.detail
    assert reply.last == Position(3, 2)
    assert reply.fence_epoch == 2
    assert reply.match_serial == 0
    assert _state(storage) == before
    assert len(journal) == journal_length


def test_malformed_append_that_would_also_conflict_is_refused_without_truncating() -> None:
    replica, storage = _replica_with([1, 1, 2, 2], fence=2)
    before = _state(storage)
    # prev (2, 1) is held, so a well-formed append would truncate serials 3 and 4; this one is corrupt.
    new = make_entries(3, [3, 3])
    corrupt = [new[0], Entry(new[1].serial, new[1].epoch, new[1].message, new[1].checksum + 1)]
    assert replica.append(channel, 3, Position(2, 1), corrupt).status is AppendStatus.CORRUPT
    assert _state(storage) == before


# Reads.


def test_read_returns_the_requested_range_and_the_last_position() -> None:
    replica, storage = _replica_with([1] * 6 + [2] * 4)
    held = held_entries(storage)
    reply = replica.read(channel, 3, 4)
    assert reply.entries == tuple(held[3:7])
    assert [entry.serial for entry in reply.entries] == [4, 5, 6, 7]
    assert reply.last == Position(10, 2)
    assert not reply.damaged
    assert replica.read(channel, 0, 100).entries == tuple(held)
    assert replica.read(channel, 8, 100).entries == tuple(held[8:])
    assert replica.read(channel, -5, 2).entries == tuple(held[:2])


@pytest.mark.parametrize("after_serial", [10, 11, 1_000])
def test_read_after_the_end_is_empty(after_serial: int) -> None:
    replica, _ = _replica_with([1] * 10)
    reply = replica.read(channel, after_serial, 5)
    assert reply.entries == ()
    assert reply.last == Position(10, 1)
    assert not reply.damaged


@pytest.mark.parametrize("limit", [0, -1])
def test_read_with_no_room_is_empty(limit: int) -> None:
    replica, _ = _replica_with([1] * 3)
    assert replica.read(channel, 0, limit).entries == ()


def test_read_of_an_unknown_channel_is_empty() -> None:
    reply = ReplicaLog(MemoryLogStorage()).read("nowhere", 0, 10)
    assert (reply.entries, reply.last, reply.damaged) == ((), ORIGIN, 0)


def test_read_limit_is_capped_by_read_entries_max() -> None:
    storage = MemoryLogStorage()
    storage.extend(channel, make_entries(1, [1] * (log_module.read_entries_max + 7)))
    replica = ReplicaLog(storage)
    reply = replica.read(channel, 0, log_module.read_entries_max * 3)
    assert len(reply.entries) == log_module.read_entries_max
    assert reply.entries[-1].serial == log_module.read_entries_max
    assert reply.last == Position(log_module.read_entries_max + 7, 1)
    tail = replica.read(channel, log_module.read_entries_max, log_module.read_entries_max * 3)
    assert [entry.serial for entry in tail.entries] == list(range(1001, 1008))


def test_read_flags_a_corrupted_stored_entry() -> None:
    storage = MemoryLogStorage()
    good = make_entries(1, [1, 1, 1, 1])
    damaged = Entry(good[2].serial, good[2].epoch, Message("flipped-bits"), good[2].checksum)
    # Corruption at rest: the engine hands back an entry whose checksum no longer matches.
    storage.extend(channel, [good[0], good[1], damaged, good[3]])
    replica = ReplicaLog(storage)
    assert replica.read(channel, 0, 10).damaged == 3
    assert replica.read(channel, 0, 10).entries == tuple(good[:2])  # only the intact run before it
    assert replica.read(channel, 2, 1).damaged == 3
    assert not replica.read(channel, 0, 2).damaged
    assert not replica.read(channel, 3, 10).damaged


# The deliberate bug the simulator's self-test relies on.


def test_no_epoch_check_bug_accepts_a_stale_append() -> None:
    correct, correct_storage = _replica_with([1, 1], fence=3)
    stale = make_entries(3, [1], tag="stale")
    assert correct.append(channel, 1, Position(2, 1), stale).status is AppendStatus.FENCED
    assert len(held_entries(correct_storage)) == 2

    storage = correct_storage.clone()
    buggy = ReplicaLog(storage, bugs=frozenset({"no-epoch-check"}))
    reply = buggy.append(channel, 1, Position(2, 1), stale)
    assert reply.status is AppendStatus.OK
    assert held_entries(storage)[2:] == stale
    assert storage.fence_of(channel) == 3


def test_unknown_bug_names_leave_the_epoch_check_on() -> None:
    replica = ReplicaLog(MemoryLogStorage(), bugs=frozenset({"something-else"}))
    replica.fence(channel, 3)
    assert replica.append(channel, 1, ORIGIN, make_entries(1, [1])).status is AppendStatus.FENCED


# Journal, replay and clone.


def _drive(replica: ReplicaLog) -> None:
    """A few mutations of every kind on two channels."""
    replica.fence(channel, 1)
    replica.append(channel, 1, ORIGIN, make_entries(1, [1, 1, 1]))
    replica.fence(other_channel, 2)
    replica.append(other_channel, 2, ORIGIN, make_entries(1, [2]))
    replica.append(channel, 2, Position(1, 1), make_entries(2, [2], tag="owner-2"))
    replica.append(channel, 3, Position(2, 2), make_entries(3, [3, 3], tag="owner-3"))
    replica.fence(channel, 2)  # fenced: changes nothing


def test_journal_records_each_mutation_in_order() -> None:
    journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=journal)
    replica = ReplicaLog(storage)
    replica.fence(channel, 1)
    first = make_entries(1, [1, 1, 1])
    replica.append(channel, 1, ORIGIN, first)
    second = make_entries(2, [2], tag="owner-2")
    replica.append(channel, 2, Position(1, 1), second)
    assert journal == [
        ("fence", channel, 1),
        ("extend", channel, tuple(first)),
        ("fence", channel, 2),
        ("truncate", channel, 1),
        ("extend", channel, tuple(second)),
    ]


def test_refused_and_duplicate_appends_and_repeated_fences_record_nothing() -> None:
    journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=journal)
    replica = ReplicaLog(storage)
    held = make_entries(1, [2, 2, 2])
    replica.append(channel, 2, ORIGIN, held)
    length = len(journal)
    replica.fence(channel, 2)  # same epoch
    replica.fence(channel, 1)  # fenced
    replica.append(channel, 1, ORIGIN, make_entries(1, [1]))  # fenced
    replica.append(channel, 2, Position(7, 2), make_entries(8, [2]))  # mismatch
    replica.append(channel, 2, ORIGIN, held[:2])  # late duplicate of a prefix
    replica.append(channel, 2, Position(1, 2), held[1:])  # late duplicate reaching the end of the log
    assert journal[length:] == []


def test_replay_onto_a_fresh_storage_reproduces_the_state() -> None:
    journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=journal)
    _drive(ReplicaLog(storage))
    replayed = MemoryLogStorage()
    replayed.replay(journal)
    assert _state(replayed) == _state(storage)
    assert replayed.last(channel) == storage.last(channel) == Position(4, 3)
    assert replayed.fence_of(channel) == 3
    assert replayed.fence_of(other_channel) == 2


def test_replay_of_a_prefix_reproduces_the_state_at_that_point() -> None:
    journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=journal)
    replica = ReplicaLog(storage)
    replica.append(channel, 1, ORIGIN, make_entries(1, [1, 1]))
    snapshot, length = _state(storage), len(journal)
    replica.append(channel, 2, Position(1, 1), make_entries(2, [2]))
    replayed = MemoryLogStorage()
    replayed.replay(journal[:length])
    assert _state(replayed) == snapshot


def test_clone_copies_the_state_and_records_only_later_mutations() -> None:
    original_journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=original_journal)
    _drive(ReplicaLog(storage))
    original_state, original_length = _state(storage), len(original_journal)

    clone_journal: list[tuple[str, str, object]] = []
    copy = storage.clone(journal=clone_journal)
    assert _state(copy) == original_state
    assert clone_journal == []

    ReplicaLog(copy).append(channel, 4, Position(1, 1), make_entries(2, [4], tag="owner-4"))
    assert [kind for kind, _, _ in clone_journal] == ["fence", "truncate", "extend"]
    # The copy is independent of the original, which neither changed nor recorded anything.
    assert _state(storage) == original_state
    assert len(original_journal) == original_length
    assert [entry.epoch for entry in held_entries(copy)] == [1, 4]

    # Replaying the original's journal then the clone's reproduces the clone.
    replayed = MemoryLogStorage()
    replayed.replay(original_journal)
    replayed.replay(clone_journal)
    assert _state(replayed) == _state(copy)


def test_clone_without_a_journal_records_nothing() -> None:
    journal: list[tuple[str, str, object]] = []
    storage = MemoryLogStorage(journal=journal)
    storage.set_fence(channel, 1)
    copy = storage.clone()
    copy.set_fence(channel, 2)
    assert copy.journal is None
    assert journal == [("fence", channel, 1)]
    assert storage.fence_of(channel) == 1
