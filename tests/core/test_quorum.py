"""Tests for the quorum and commit arithmetic (services/core/quorum.py), against naive references."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.entries import Position
from services.core.quorum import advance_commit, most_up_to_date, quorum_match, quorum_size

match_lists = st.lists(st.integers(min_value=0, max_value=30), max_size=7)


def _naive_quorum_match(matches: Sequence[int], quorum: int) -> int:
    """The largest s in {0} ∪ matches that at least `quorum` replicas hold (match ≥ s); 0 when none is."""
    held = [s for s in {0, *matches} if sum(1 for match in matches if match >= s) >= quorum]
    return max(held, default=0)


def _naive_advance_commit(commit: int, matches: Sequence[int], quorum: int, epoch_start_serial: int) -> int:
    candidate = _naive_quorum_match(matches, quorum)
    return candidate if candidate > commit and candidate >= epoch_start_serial else commit


def _naive_most_up_to_date(lasts: Sequence[tuple[str, Position]]) -> str:
    best_index = 0
    for index, (_, last) in enumerate(lasts):
        best = lasts[best_index][1]
        if (last.epoch, last.serial) > (best.epoch, best.serial):
            best_index = index
    return lasts[best_index][0]


# quorum_size.


@pytest.mark.parametrize(("replica_count", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_quorum_size_is_the_smallest_strict_majority(replica_count: int, expected: int) -> None:
    assert quorum_size(replica_count) == expected
    # A strict majority, and the smallest one: two quorums always intersect, one fewer would not.
    assert 2 * expected > replica_count
    assert 2 * (expected - 1) <= replica_count


# quorum_match.


@given(matches=match_lists, quorum=st.integers(min_value=1, max_value=8))
def test_quorum_match_agrees_with_the_naive_reference(matches: list[int], quorum: int) -> None:
    assert quorum_match(matches, quorum) == _naive_quorum_match(matches, quorum)


@given(matches=match_lists, data=st.data())
def test_quorum_match_does_not_depend_on_replica_order(matches: list[int], data: st.DataObject) -> None:
    quorum = quorum_size(max(len(matches), 1))
    shuffled = data.draw(st.permutations(matches))
    assert quorum_match(shuffled, quorum) == quorum_match(matches, quorum)


@given(matches=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=7), data=st.data())
def test_quorum_match_is_held_by_a_quorum_and_one_more_is_not(matches: list[int], data: st.DataObject) -> None:
    quorum = data.draw(st.integers(min_value=1, max_value=len(matches)))
    result = quorum_match(matches, quorum)
    assert sum(1 for match in matches if match >= result) >= quorum
    assert sum(1 for match in matches if match >= result + 1) < quorum


@pytest.mark.parametrize(
    ("matches", "quorum", "expected"),
    [
        ([], 1, 0),
        ([5], 1, 5),
        ([5, 3, 9], 2, 5),
        ([5, 3, 9], 3, 3),
        ([5, 3, 9], 1, 9),
        ([7, 7, 0], 2, 7),
        ([4, 0, 0], 2, 0),
        ([9, 9], 3, 0),
    ],
)
def test_quorum_match_examples(matches: list[int], quorum: int, expected: int) -> None:
    assert quorum_match(matches, quorum) == expected


@given(matches=match_lists, quorum=st.integers(min_value=1, max_value=8), data=st.data())
def test_quorum_match_never_decreases_when_a_replica_catches_up(
    matches: list[int], quorum: int, data: st.DataObject
) -> None:
    if not matches:
        return
    index = data.draw(st.integers(min_value=0, max_value=len(matches) - 1))
    raised = list(matches)
    raised[index] += data.draw(st.integers(min_value=0, max_value=10))
    assert quorum_match(raised, quorum) >= quorum_match(matches, quorum)


# advance_commit.


@given(
    commit=st.integers(min_value=0, max_value=30),
    matches=match_lists,
    quorum=st.integers(min_value=1, max_value=8),
    epoch_start_serial=st.integers(min_value=1, max_value=30),
)
def test_advance_commit_agrees_with_the_naive_reference(
    commit: int, matches: list[int], quorum: int, epoch_start_serial: int
) -> None:
    result = advance_commit(commit, matches, quorum, epoch_start_serial)
    assert result == _naive_advance_commit(commit, matches, quorum, epoch_start_serial)
    assert result >= commit
    # Commit only moves through an entry of the owner's own epoch.
    assert result == commit or result >= epoch_start_serial
    assert result == commit or sum(1 for match in matches if match >= result) >= quorum


@given(
    replica_count=st.integers(min_value=1, max_value=7),
    epoch_start_serial=st.integers(min_value=1, max_value=10),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=20)), max_size=40
    ),
)
def test_advance_commit_never_decreases_and_never_commits_below_the_epoch_start(
    replica_count: int, epoch_start_serial: int, steps: list[tuple[int, int]]
) -> None:
    """A run of an owner: replicas report match serials in any order (late, stale, or lowered by a
    truncation after a replica restarts) and the owner folds each report into its commit point."""
    quorum = quorum_size(replica_count)
    matches = [0] * replica_count
    commit = 0
    for replica, match in steps:
        matches[replica % replica_count] = match
        new_commit = advance_commit(commit, matches, quorum, epoch_start_serial)
        assert new_commit >= commit
        assert new_commit == 0 or new_commit >= epoch_start_serial
        assert new_commit == commit or new_commit == quorum_match(matches, quorum)
        commit = new_commit


def test_commit_waits_for_an_entry_of_the_current_epoch() -> None:
    # Entries 1..4 were adopted from older epochs; the owner rewrote from serial 5 at its own epoch.
    assert advance_commit(0, [4, 4, 0], 2, 5) == 0
    assert advance_commit(0, [5, 4, 0], 2, 5) == 0
    assert advance_commit(0, [5, 5, 0], 2, 5) == 5
    assert advance_commit(5, [6, 9, 9], 2, 5) == 9
    # A lagging report never moves commit back.
    assert advance_commit(9, [2, 2, 9], 2, 5) == 9


# most_up_to_date.


positions = st.builds(Position, st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=4))


@given(lasts=st.lists(positions, min_size=1, max_size=7))
def test_most_up_to_date_agrees_with_the_naive_reference(lasts: list[Position]) -> None:
    named = [(f"replica-{index}", last) for index, last in enumerate(lasts)]
    chosen = most_up_to_date(named)
    assert chosen == _naive_most_up_to_date(named)
    best = dict(named)[chosen]
    # Highest last epoch, then the longest; the first replica in order among equals.
    assert all((last.epoch, last.serial) <= (best.epoch, best.serial) for _, last in named)
    first_best = next(name for name, last in named if last == best)
    assert chosen == first_best


@pytest.mark.parametrize(
    ("lasts", "expected"),
    [
        ([("a", Position(9, 1)), ("b", Position(3, 2))], "b"),  # a higher epoch beats a longer log
        ([("a", Position(3, 2)), ("b", Position(4, 2))], "b"),  # same epoch: the longer log
        ([("a", Position(4, 2)), ("b", Position(4, 2))], "a"),  # equal: the first in order
        ([("b", Position(4, 2)), ("a", Position(4, 2))], "b"),
        ([("a", Position(0, 0)), ("b", Position(0, 0)), ("c", Position(1, 1))], "c"),
        ([("only", Position(0, 0))], "only"),
    ],
)
def test_most_up_to_date_examples(lasts: list[tuple[str, Position]], expected: str) -> None:
    assert most_up_to_date(lasts) == expected
