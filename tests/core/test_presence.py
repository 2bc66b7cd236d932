"""The presence core (services/core/presence.py): the fold, the owner's decisions, grace."""

from __future__ import annotations

import pytest

from ringcast.reasons import Reason
from services.core.entries import Message
from services.core.presence import (
    Action,
    Change,
    MemberSet,
    PresenceError,
    PresenceOwner,
    decode,
    is_presence_log,
    placement_key,
    presence_log,
)
from services.core.ring import Ring

ALICE = ("alice", "c1")
BOB = ("bob", "c2")
GRACE = 15_000


def test_a_presence_log_is_placed_with_its_channel() -> None:
    assert presence_log("chat:room") == "chat:room#presence" and is_presence_log("chat:room#presence")
    assert placement_key("chat:room#presence") == "chat:room" == placement_key("chat:room")
    ring = Ring(7, [f"channel-{n}" for n in range(10)])
    for n in range(200):
        assert ring.owner(presence_log(f"room-{n}")) == ring.owner(f"room-{n}")


def test_changes_go_through_messages_and_back() -> None:
    change = Change(Action.UPDATE, "alice", "c1", b"busy")
    assert decode(change.message("m1")) == change
    with pytest.raises(PresenceError):
        decode(Message("m2", name="publish", client_id="alice", headers=(("connection", "c"),)))
    with pytest.raises(PresenceError):
        decode(Message("m3", name="enter", client_id="alice"))  # no connection


def test_the_set_is_the_fold_of_the_log() -> None:
    folded = MemberSet()
    assert folded.apply(1, Change(Action.ENTER, *ALICE, b"hi"), 100)
    assert folded.apply(2, Change(Action.ENTER, *BOB), 101)
    assert folded.apply(3, Change(Action.UPDATE, *ALICE, b"busy"), 102)
    assert not folded.apply(4, Change(Action.ABSENT, *BOB), 103)  # not a change of the set
    assert folded.absent_since_ms == {BOB: 103}
    assert not folded.apply(5, Change(Action.PRESENT, *BOB), 104)
    assert folded.absent_since_ms == {}
    assert folded.apply(6, Change(Action.LEAVE, *BOB), 105)
    assert not folded.apply(7, Change(Action.UPDATE, *BOB, b"x"), 106)  # of a non-member: nothing
    assert [(m.client_id, m.data, m.serial) for m in folded.sorted()] == [("alice", b"busy", 3)]
    assert folded.serial == 7
    with pytest.raises(PresenceError):
        folded.apply(7, Change(Action.ENTER, *BOB), 107)


def test_the_owner_writes_only_changes_and_refuses_what_cannot_be() -> None:
    owner = PresenceOwner()
    owner.adopt(0, GRACE, 0)
    assert owner.enter(ALICE, b"hi", member_cap=1) == Change(Action.ENTER, *ALICE, b"hi")
    assert owner.enter(ALICE, b"hi", member_cap=1) is None  # again, the same: nothing to write
    assert owner.enter(ALICE, b"yo", member_cap=1) == Change(Action.UPDATE, *ALICE, b"yo")
    assert owner.enter(BOB, b"", member_cap=1) == Reason.MEMBER_CAP_REACHED
    assert owner.update(BOB, b"") == Reason.NOT_PRESENT
    assert owner.leave(BOB) is None  # idempotent: nothing to write
    assert owner.leave(ALICE) == Change(Action.LEAVE, *ALICE)
    assert owner.leave(ALICE) is None  # decided against the intended set: already leaving


def test_a_member_whose_last_connection_ends_is_absent_then_leaves_after_its_grace() -> None:
    owner = PresenceOwner()
    owner.adopt(0, GRACE, 0)
    assert owner.connected(ALICE) is None
    owner.enter(ALICE, b"", member_cap=10)
    assert owner.connected(ALICE) is None  # a second stream
    assert owner.disconnected(ALICE, 1_000, GRACE) is None  # one is still open
    assert owner.disconnected(ALICE, 2_000, GRACE) == Change(Action.ABSENT, *ALICE)
    assert owner.due(2_000 + GRACE - 1) == []
    assert owner.connected(ALICE) == Change(Action.PRESENT, *ALICE)  # back within its grace
    assert owner.due(2_000 + GRACE) == []
    assert owner.disconnected(ALICE, 20_000, GRACE) == Change(Action.ABSENT, *ALICE)
    assert owner.due(20_000 + GRACE) == [Change(Action.LEAVE, *ALICE)]
    assert owner.intended == {}


def test_a_new_owner_gives_absent_members_what_is_left_of_their_grace_and_others_all_of_it() -> None:
    log = MemberSet()
    log.apply(1, Change(Action.ENTER, *ALICE), 1_000)
    log.apply(2, Change(Action.ENTER, *BOB), 1_000)
    log.apply(3, Change(Action.ABSENT, *BOB), 10_000)  # bob's connection ended at wall 10 s
    owner = PresenceOwner(committed=log)
    owner.adopt(now_ms=500, grace_ms=GRACE, wall_now_ms=20_000)  # taken over at wall 20 s
    assert owner.leave_at_ms == {ALICE: 500 + GRACE, BOB: 500 + 5_000}
    assert owner.due(500 + 5_000) == [Change(Action.LEAVE, *BOB)]
    assert owner.connected(ALICE) is None  # its gateway opened its stream here again
    assert owner.due(500 + GRACE) == []
    assert set(owner.intended) == {ALICE}


def test_a_member_absent_longer_than_its_grace_when_taken_over_leaves_at_once() -> None:
    log = MemberSet()
    log.apply(1, Change(Action.ENTER, *ALICE), 1_000)
    log.apply(2, Change(Action.ABSENT, *ALICE), 2_000)
    owner = PresenceOwner(committed=log)
    owner.adopt(now_ms=0, grace_ms=GRACE, wall_now_ms=60_000)
    assert owner.due(0) == [Change(Action.LEAVE, *ALICE)]


def test_a_rejoin_keeps_a_present_member_s_data_and_never_brings_one_back() -> None:
    owner = PresenceOwner()
    owner.adopt(0, GRACE, 0)
    owner.enter(ALICE, b"first", member_cap=10)
    owner.update(ALICE, b"second")  # through another gateway, say
    assert owner.enter(ALICE, b"first", member_cap=10, rejoin=True) is None  # keeps "second"
    assert owner.intended[ALICE] == b"second"
    owner.leave(ALICE)  # written while the rejoining gateway was cut off
    assert owner.enter(ALICE, b"second", member_cap=10, rejoin=True) == Reason.NOT_PRESENT
    assert owner.enter(ALICE, b"second", member_cap=10) == Change(Action.ENTER, *ALICE, b"second")  # its client may
