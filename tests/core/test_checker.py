"""Tests for the history checker (services/core/checker.py): a clean history passes, and each kind of
violation the module docstring lists is reported, alone, for a history that shows exactly it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.checker import ContinuityLost, History, Outcome, PublishOp, SubscriberRecord, Violation, check

channel = "orders"
other_channel = "chat:lobby"

Delivery = tuple[int, str] | ContinuityLost


def _op(
    op_id: int,
    message_ids: Sequence[str],
    outcome: Outcome = Outcome.OK,
    serials: Sequence[int] = (),
    name: str = channel,
) -> PublishOp:
    return PublishOp(op_id, name, tuple(message_ids), outcome, tuple(serials))


def _log(*message_ids: str) -> list[tuple[int, str]]:
    return [(serial, message_id) for serial, message_id in enumerate(message_ids, start=1)]


def _subscriber(received: Sequence[Delivery], start_after: int = 0, name: str = channel) -> SubscriberRecord:
    return SubscriberRecord("subscriber-1", name, start_after, list(received))


def _kinds(violations: list[Violation]) -> Counter[str]:
    return Counter(violation.kind for violation in violations)


def _published_abc() -> list[PublishOp]:
    return [_op(1, ["a", "b"], serials=[1, 2]), _op(2, ["c"], serials=[3])]


# A clean history.


def test_clean_history_has_no_violations() -> None:
    history = History(
        publishes=[
            _op(1, ["a", "b"], serials=[1, 2]),
            _op(2, ["c"], Outcome.UNKNOWN),  # stored, outcome unknown to the client: fine
            _op(3, ["d"], Outcome.UNKNOWN),  # not stored: fine
            _op(4, ["e"], Outcome.FAIL),  # not stored: fine
            _op(5, ["f"], serials=[4]),
            _op(6, ["x"], serials=[1], name=other_channel),
        ],
        subscribers=[
            _subscriber([(1, "a"), (2, "b"), (3, "c"), (4, "f")]),
            _subscriber([(3, "c"), (4, "f")], start_after=2),
            _subscriber([(1, "a"), ContinuityLost(4), (4, "f")]),
            _subscriber([(1, "x")], name=other_channel),
            _subscriber([], start_after=4),
        ],
        final_logs={channel: _log("a", "b", "c", "f"), other_channel: _log("x")},
    )
    assert check(history) == []


def test_empty_history_has_no_violations() -> None:
    assert check(History()) == []


@st.composite
def clean_histories(draw: st.DrawFn) -> History:
    """A history that keeps every rule: publishes that were stored in order, some with unknown outcomes,
    some failed or unknown and never stored; subscribers that follow the log, possibly told of jumps."""
    count = draw(st.integers(min_value=0, max_value=12))
    ids = [f"m{serial}" for serial in range(1, count + 1)]
    publishes: list[PublishOp] = []
    serial = 1
    while serial <= count:
        size = draw(st.integers(min_value=1, max_value=count - serial + 1))
        batch = range(serial, serial + size)
        outcome = draw(st.sampled_from([Outcome.OK, Outcome.OK, Outcome.UNKNOWN]))
        serials = list(batch) if outcome is Outcome.OK else []
        publishes.append(_op(len(publishes) + 1, [ids[s - 1] for s in batch], outcome, serials))
        serial += size
    for index in range(draw(st.integers(min_value=0, max_value=3))):
        outcome = draw(st.sampled_from([Outcome.FAIL, Outcome.UNKNOWN]))
        publishes.append(_op(len(publishes) + 1, [f"absent-{index}"], outcome))
    publishes = draw(st.permutations(publishes))
    subscribers = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        start_after = draw(st.integers(min_value=0, max_value=count))
        received: list[Delivery] = []
        next_serial = start_after + 1
        while next_serial <= count and draw(st.integers(min_value=0, max_value=5)):
            if draw(st.integers(min_value=0, max_value=4)) == 0:
                next_serial = draw(st.integers(min_value=next_serial, max_value=count))
                received.append(ContinuityLost(next_serial))
            received.append((next_serial, ids[next_serial - 1]))
            next_serial += 1
        subscribers.append(_subscriber(received, start_after))
    return History(publishes=list(publishes), subscribers=subscribers, final_logs={channel: _log(*ids)})


@given(history=clean_histories())
def test_generated_clean_histories_have_no_violations(history: History) -> None:
    assert check(history) == []


@given(history=clean_histories(), data=st.data())
def test_losing_the_last_acknowledged_message_is_reported_as_lost(history: History, data: st.DataObject) -> None:
    log = history.final_logs[channel]
    acked = {message_id for op in history.publishes if op.outcome is Outcome.OK for message_id in op.message_ids}
    if not log or log[-1][1] not in acked:
        return
    history.final_logs[channel] = log[:-1]
    history.subscribers = []
    assert _kinds(check(history)) == Counter({"LOST": 1})


# One test per violation kind.


def test_lost_acknowledged_message() -> None:
    history = History(publishes=_published_abc(), final_logs={channel: _log("a", "b")})
    violations = check(history)
    assert _kinds(violations) == Counter({"LOST": 1})
    assert violations[0].channel == channel
    assert "id=c" in violations[0].detail


def test_lost_on_a_channel_with_no_final_log_at_all() -> None:
    history = History(publishes=[_op(1, ["a"], serials=[1], name=other_channel)])
    violations = check(history)
    assert _kinds(violations) == Counter({"LOST": 1})
    assert violations[0].channel == other_channel


def test_serial_changed_when_acked_at_one_serial_and_stored_at_another() -> None:
    history = History(publishes=_published_abc(), final_logs={channel: _log("b", "a", "c")})
    violations = check(history)
    assert _kinds(violations) == Counter({"SERIAL_CHANGED": 2})
    assert {violation.detail for violation in violations} == {
        "id=a acked at 1, stored at [2]",
        "id=b acked at 2, stored at [1]",
    }


def test_serial_changed_when_one_id_is_acked_with_two_serials() -> None:
    history = History(
        publishes=[_op(1, ["a"], serials=[1]), _op(2, ["a"], serials=[2])],
        final_logs={channel: _log("a")},
    )
    violations = check(history)
    assert set(_kinds(violations)) == {"SERIAL_CHANGED"}
    assert any("acked as 1 and 2" in violation.detail for violation in violations)


def test_same_id_acked_twice_with_the_same_serial_is_fine() -> None:
    # A deduplicated retry returns the original serial.
    history = History(
        publishes=[_op(1, ["a"], serials=[1]), _op(2, ["a"], serials=[1])],
        final_logs={channel: _log("a")},
    )
    assert check(history) == []


def test_serial_reused_for_two_acknowledged_messages() -> None:
    history = History(
        publishes=[_op(1, ["a"], serials=[1]), _op(2, ["b"], serials=[1])],
        final_logs={channel: _log("a", "b")},
    )
    # b is in the log but not at the serial it was acked with, so it is also SERIAL_CHANGED.
    assert _kinds(check(history)) == Counter({"SERIAL_REUSED": 1, "SERIAL_CHANGED": 1})


def test_serial_reused_and_the_loser_lost() -> None:
    history = History(
        publishes=[_op(1, ["a"], serials=[1]), _op(2, ["b"], serials=[1])],
        final_logs={channel: _log("a")},
    )
    assert _kinds(check(history)) == Counter({"SERIAL_REUSED": 1, "LOST": 1})


def test_duplicate_message_in_the_log() -> None:
    history = History(publishes=[_op(1, ["a"], serials=[1])], final_logs={channel: _log("a", "a")})
    violations = check(history)
    assert _kinds(violations) == Counter({"DUPLICATE": 1})
    assert "[1, 2]" in violations[0].detail


def test_duplicate_of_an_unknown_outcome_message() -> None:
    history = History(publishes=[_op(1, ["a"], Outcome.UNKNOWN)], final_logs={channel: _log("a", "a")})
    assert _kinds(check(history)) == Counter({"DUPLICATE": 1})


@pytest.mark.parametrize(
    "log",
    [
        [(1, "a"), (3, "c")],  # a hole
        [(2, "b"), (3, "c")],  # does not start at 1
        [(2, "b")],  # one entry, not at 1
        [(1, "a"), (3, "c"), (2, "b")],  # out of order
    ],
    ids=["hole", "late-start", "only-entry-late", "unordered"],
)
def test_log_gap(log: list[tuple[int, str]]) -> None:
    publishes = [_op(1, ["a"], Outcome.UNKNOWN), _op(2, ["b"], Outcome.UNKNOWN), _op(3, ["c"], Outcome.UNKNOWN)]
    history = History(publishes=publishes, final_logs={channel: log})
    assert _kinds(check(history)) == Counter({"LOG_GAP": 1})


def test_failed_but_stored() -> None:
    history = History(
        publishes=[_op(1, ["a"], serials=[1]), _op(2, ["b"], Outcome.FAIL)],
        final_logs={channel: _log("a", "b")},
    )
    violations = check(history)
    assert _kinds(violations) == Counter({"FAILED_BUT_STORED": 1})
    assert "id=b" in violations[0].detail


def test_unknown_message() -> None:
    history = History(publishes=[_op(1, ["a"], serials=[1])], final_logs={channel: _log("a", "z")})
    violations = check(history)
    assert _kinds(violations) == Counter({"UNKNOWN_MESSAGE": 1})
    assert "id=z" in violations[0].detail


def test_message_published_on_another_channel_is_unknown_here() -> None:
    history = History(
        publishes=[_op(1, ["a"], Outcome.UNKNOWN, name=other_channel)],
        final_logs={channel: _log("a")},
    )
    violations = check(history)
    assert _kinds(violations) == Counter({"UNKNOWN_MESSAGE": 1})
    assert violations[0].channel == channel


def _with_subscriber(received: Sequence[Delivery], start_after: int = 0) -> History:
    return History(
        publishes=_published_abc(),
        subscribers=[_subscriber(received, start_after)],
        final_logs={channel: _log("a", "b", "c")},
    )


def test_subscriber_gap() -> None:
    violations = check(_with_subscriber([(1, "a"), (3, "c")]))
    assert _kinds(violations) == Counter({"SUBSCRIBER_GAP": 1})
    assert "expected 2 got 3" in violations[0].detail


def test_subscriber_gap_at_the_start() -> None:
    assert _kinds(check(_with_subscriber([(2, "b"), (3, "c")]))) == Counter({"SUBSCRIBER_GAP": 1})
    assert _kinds(check(_with_subscriber([(3, "c")], start_after=1))) == Counter({"SUBSCRIBER_GAP": 1})


def test_subscriber_duplicate() -> None:
    violations = check(_with_subscriber([(1, "a"), (2, "b"), (2, "b"), (3, "c")]))
    assert _kinds(violations) == Counter({"SUBSCRIBER_DUPLICATE": 1})


def test_subscriber_redelivery_of_an_older_message_is_a_reorder() -> None:
    assert _kinds(check(_with_subscriber([(1, "a"), (2, "b"), (3, "c"), (1, "a")]))) == Counter(
        {"SUBSCRIBER_REORDER": 1}
    )


def test_subscriber_continuing_in_order_after_a_stray_old_message_is_judged_once() -> None:
    history = History(
        publishes=[_op(1, ["a", "b", "c", "d"], serials=[1, 2, 3, 4])],
        subscribers=[_subscriber([(1, "a"), (2, "b"), (3, "c"), (1, "a"), (4, "d")])],
        final_logs={channel: _log("a", "b", "c", "d")},
    )
    assert _kinds(check(history)) == Counter({"SUBSCRIBER_REORDER": 1})


def test_subscriber_swap_is_a_gap_then_a_reorder() -> None:
    assert _kinds(check(_with_subscriber([(1, "a"), (3, "c"), (2, "b")]))) == Counter(
        {"SUBSCRIBER_GAP": 1, "SUBSCRIBER_REORDER": 1}
    )


def test_subscriber_receiving_what_it_started_after_is_a_duplicate() -> None:
    assert _kinds(check(_with_subscriber([(2, "b"), (3, "c")], start_after=2))) == Counter({"SUBSCRIBER_DUPLICATE": 1})


@pytest.mark.parametrize(
    "received",
    [
        [(1, "x")],  # another message at a stored serial
        [(1, "a"), (2, "c")],  # a stored message at the wrong serial
        [(1, "a"), (2, "b"), (3, "c"), (4, "d")],  # beyond the end of the log
    ],
    ids=["other-message", "wrong-serial", "beyond-the-log"],
)
def test_phantom_delivery(received: list[Delivery]) -> None:
    violations = check(_with_subscriber(received))
    assert _kinds(violations) == Counter({"PHANTOM_DELIVERY": 1})


def test_subscriber_of_a_channel_without_a_final_log_receives_phantoms() -> None:
    history = History(subscribers=[_subscriber([(1, "a")], name="elsewhere")])
    assert _kinds(check(history)) == Counter({"PHANTOM_DELIVERY": 1})


# ContinuityLost: the one allowed jump.


def test_continuity_lost_allows_exactly_the_announced_jump() -> None:
    assert check(_with_subscriber([ContinuityLost(3), (3, "c")])) == []
    assert check(_with_subscriber([(1, "a"), ContinuityLost(3), (3, "c")])) == []


def test_continuity_lost_does_not_allow_a_further_jump() -> None:
    violations = check(_with_subscriber([ContinuityLost(2), (3, "c")]))
    assert _kinds(violations) == Counter({"SUBSCRIBER_GAP": 1})
    assert "expected 2 got 3" in violations[0].detail


def test_continuity_lost_does_not_excuse_a_later_jump() -> None:
    history = History(
        publishes=[_op(1, ["a", "b", "c", "d", "e"], serials=[1, 2, 3, 4, 5])],
        subscribers=[_subscriber([(1, "a"), ContinuityLost(3), (3, "c"), (5, "e")])],
        final_logs={channel: _log("a", "b", "c", "d", "e")},
    )
    violations = check(history)
    assert _kinds(violations) == Counter({"SUBSCRIBER_GAP": 1})
    assert "expected 4 got 5" in violations[0].detail


def test_continuity_lost_then_a_repeat_is_a_duplicate() -> None:
    assert _kinds(check(_with_subscriber([ContinuityLost(3), (3, "c"), (3, "c")]))) == Counter(
        {"SUBSCRIBER_DUPLICATE": 1}
    )


def test_continuity_lost_then_an_earlier_message_is_not_allowed() -> None:
    assert set(_kinds(check(_with_subscriber([ContinuityLost(3), (1, "a")])))) == {"SUBSCRIBER_REORDER"}


def test_continuity_lost_backwards_does_not_excuse_redelivery() -> None:
    violations = check(_with_subscriber([(1, "a"), (2, "b"), (3, "c"), ContinuityLost(2), (2, "b"), (3, "c")]))
    assert violations
    assert set(_kinds(violations)) <= {"SUBSCRIBER_DUPLICATE", "SUBSCRIBER_REORDER"}


# Operations whose outcome is not OK.


@pytest.mark.parametrize("outcome", [Outcome.UNKNOWN, Outcome.FAIL])
def test_operations_not_acknowledged_whose_messages_are_absent_are_fine(outcome: Outcome) -> None:
    history = History(
        publishes=[_op(1, ["a"], serials=[1]), _op(2, ["b", "c"], outcome)],
        final_logs={channel: _log("a")},
    )
    assert check(history) == []


def test_unknown_operations_whose_messages_are_present_are_fine() -> None:
    history = History(
        publishes=[_op(1, ["a"], Outcome.UNKNOWN), _op(2, ["b", "c"], Outcome.UNKNOWN), _op(3, ["d"], serials=[4])],
        subscribers=[_subscriber([(1, "a"), (2, "b"), (3, "c"), (4, "d")])],
        final_logs={channel: _log("a", "b", "c", "d")},
    )
    assert check(history) == []


def test_unknown_operation_whose_messages_are_partly_present_is_fine() -> None:
    history = History(publishes=[_op(1, ["a", "b"], Outcome.UNKNOWN)], final_logs={channel: _log("a")})
    assert check(history) == []


def test_failed_publish_retried_successfully_with_the_same_id_is_fine() -> None:
    history = History(
        publishes=[_op(1, ["a"], Outcome.FAIL), _op(2, ["a"], serials=[1])],
        final_logs={channel: _log("a")},
    )
    assert check(history) == []


def test_violations_are_reported_per_channel_in_channel_order() -> None:
    history = History(
        publishes=[_op(1, ["a"], serials=[1], name="zeta"), _op(2, ["b"], serials=[1], name="alpha")],
        final_logs={"zeta": [], "alpha": []},
    )
    violations = check(history)
    assert [(violation.kind, violation.channel) for violation in violations] == [("LOST", "alpha"), ("LOST", "zeta")]
