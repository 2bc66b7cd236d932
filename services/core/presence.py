"""Presence: who is in a channel now, as entries of a fenced log (DESIGN §11, issue #19).

Rules:

1. A channel's presence changes are entries of its own log, the channel's *presence log*
   (`presence_log("room")` is `room#presence`; `#` is not allowed in channel names, so no channel
   can be named like one). It is placed with its channel (the ring hashes `placement_key`), so the
   channel's owner writes it, at its epoch, committed by a quorum, with serials of its own: every
   rule of the replication protocol holds for it unchanged.
2. An entry is a `Message` whose `name` is the action (`enter`, `update`, `leave`), `client_id` the
   member's client id, the header `connection` its connection id, and `data` its data. A member is
   (client id, connection id).
3. The member set at serial S is the fold of the committed log up to S (`MemberSet.apply`), and
   nothing else: readers get the set with the serial it is valid at, and then the changes after it.
   A takeover rebuilds the set by folding the log it adopted — never from an owner's memory
   (`presence-from-memory` is that bug, for the simulator to catch) — so a relocation neither
   resurrects nor loses a member.
4. The owner writes only changes: entering again with the same data writes nothing (the SDK
   re-enters on every reconnect), with other data it writes an update; an update or leave of a
   non-member is refused (`NOT_PRESENT`), a leave of one changes nothing (a retried leave must not
   fail); an enter beyond the namespace's `member_cap` is refused.
   Decisions are made against the *intended* set (committed plus written, not yet committed); a write
   that fails drops the owner's presence state, to be folded from the log again.
5. A member is *connected* while at least one gateway holds its enter stream open at this owner.
   When the last one ends, the owner writes an ABSENT entry (the member stays, its absence has begun
   at that entry's timestamp) and gives it `grace_ms` to come back (any gateway, same ids): a stream
   opened again writes PRESENT; otherwise, once the grace is over, the owner writes its LEAVE.
   Absence is in the log so that grace survives a takeover: a new owner gives a member folded as
   absent what is left of its grace (by the entry's wall-clock timestamp), and every other member
   the full grace from the takeover, which the gateways' re-opened streams cancel. ABSENT and
   PRESENT are not changes of the set: readers never see them.

Pure: no I/O, no clock (every input that needs time takes `now_ms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ringcast.reasons import Reason
from services.core.entries import Message

PRESENCE_SUFFIX = "#presence"
"""What a channel's name is followed by in its presence log's name (rule 1)."""

CONNECTION_HEADER = "connection"


def presence_log(channel: str) -> str:
    return channel + PRESENCE_SUFFIX


def is_presence_log(name: str) -> bool:
    return name.endswith(PRESENCE_SUFFIX)


def placement_key(name: str) -> str:
    """What the ring hashes for a log: the channel's name, for the channel and its presence log."""
    return name.removesuffix(PRESENCE_SUFFIX)


class Action(StrEnum):
    ENTER = "enter"
    UPDATE = "update"
    LEAVE = "leave"
    ABSENT = "absent"
    """The member's last connection ended (rule 5); not a change of the set."""
    PRESENT = "present"
    """An absent member's connection is back (rule 5); not a change of the set."""


VISIBLE = frozenset({Action.ENTER, Action.UPDATE, Action.LEAVE})
"""The actions readers see: changes of the member set."""


MemberKey = tuple[str, str]
"""(client id, connection id)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One presence entry, decoded (rule 2)."""

    action: Action
    client_id: str
    connection_id: str
    data: bytes = b""

    @property
    def key(self) -> MemberKey:
        return (self.client_id, self.connection_id)

    def message(self, message_id: str) -> Message:
        return Message(
            message_id,
            name=str(self.action),
            data=self.data,
            headers=((CONNECTION_HEADER, self.connection_id),),
            client_id=self.client_id,
        )


class PresenceError(ValueError):
    """An entry of a presence log that is not a presence change."""


def decode(message: Message) -> Change:
    try:
        action = Action(message.name)
    except ValueError:
        raise PresenceError(f"not a presence action: {message.name!r}") from None
    connections = [value for name, value in message.headers if name == CONNECTION_HEADER]
    if len(connections) != 1 or not message.client_id:
        raise PresenceError(f"a presence entry names one client and one connection: {message.id!r}")
    return Change(action, message.client_id, connections[0], message.data)


@dataclass(frozen=True, slots=True)
class Member:
    client_id: str
    connection_id: str
    data: bytes
    serial: int
    """The serial of the entry that set the member as it is (its enter or last update)."""
    timestamp_ms: int


@dataclass(slots=True)
class MemberSet:
    """The fold of a presence log (rule 3): apply committed entries in serial order."""

    members: dict[MemberKey, Member] = field(default_factory=dict)
    serial: int = 0
    """The serial of the last entry applied: the set is valid at it."""
    absent_since_ms: dict[MemberKey, int] = field(default_factory=dict)
    """Members whose last connection ended, and when (the ABSENT entry's timestamp)."""

    def apply(self, serial: int, change: Change, timestamp_ms: int = 0) -> bool:
        """Apply the entry at `serial`; whether it changed the set. A log the owner wrote never
        holds an update or leave of a non-member, nor an enter of a member: such an entry is
        applied as the change it comes to (an enter as an update, an update of a non-member not
        at all), and `False` says it was not what it claimed."""
        if serial <= self.serial:
            raise PresenceError(f"entry {serial} applied after {self.serial}")
        self.serial = serial
        present = change.key in self.members
        if change.action is Action.ABSENT:
            if present:
                self.absent_since_ms[change.key] = timestamp_ms
            return False
        if change.action is not Action.UPDATE:  # an update changes data, not connections
            self.absent_since_ms.pop(change.key, None)
        if change.action is Action.PRESENT:
            return False
        if change.action is Action.LEAVE:
            return self.members.pop(change.key, None) is not None
        if change.action is Action.UPDATE and not present:
            return False
        self.members[change.key] = Member(change.client_id, change.connection_id, change.data, serial, timestamp_ms)
        return change.action is Action.UPDATE or not present

    def skip_to(self, serial: int) -> None:
        """Entries up to `serial` are not presence changes to apply (an owner's recovery rewrote
        one, say): the set is valid at `serial` as it is."""
        self.serial = max(self.serial, serial)

    def sorted(self) -> list[Member]:
        return [self.members[key] for key in sorted(self.members)]


@dataclass(slots=True)
class PresenceOwner:
    """An owner's presence state for one channel at one epoch (rules 4 and 5)."""

    committed: MemberSet = field(default_factory=MemberSet)
    intended: dict[MemberKey, bytes] = field(default_factory=dict)
    """The member set once every change written is committed: what decisions are made against."""
    streams: dict[MemberKey, int] = field(default_factory=dict)
    """Enter streams open at this owner, by member."""
    leave_at_ms: dict[MemberKey, int] = field(default_factory=dict)
    """Members with no stream open here, and when their grace ends."""
    absent: set[MemberKey] = field(default_factory=set)
    """Intended members whose absence is written (or being written)."""

    def adopt(self, now_ms: int, grace_ms: int, wall_now_ms: int) -> None:
        """The set is folded up to the log's commit: every member is intended; one folded as absent
        has what is left of its grace, every other the full grace to be connected here (rule 5)."""
        self.intended = {key: member.data for key, member in self.committed.members.items()}
        self.absent = set(self.committed.absent_since_ms)
        for key in self.intended:
            if self.streams.get(key):
                continue
            since = self.committed.absent_since_ms.get(key)
            left_ms = grace_ms if since is None else min(grace_ms, max(0, since + grace_ms - wall_now_ms))
            self.leave_at_ms[key] = now_ms + left_ms

    def apply(self, serial: int, change: Change, timestamp_ms: int = 0) -> bool:
        return self.committed.apply(serial, change, timestamp_ms)

    def enter(self, key: MemberKey, data: bytes, member_cap: int, *, rejoin: bool = False) -> Change | Reason | None:
        """The change entering `key` with `data` comes to (None: nothing to write). A `rejoin` (a
        gateway holding a member again, on a new stream) leaves a present member's data as it is,
        and is refused (NOT_PRESENT) for one that is no longer present: it left (its LEAVE may have
        been written while the gateway was cut off), or its grace ran out; its client decides
        whether to enter again, the gateway never does."""
        if key in self.intended:
            if rejoin or self.intended[key] == data:
                return None
            return self._intend(Change(Action.UPDATE, *key, data))
        if rejoin:
            return Reason.NOT_PRESENT
        if len(self.intended) >= member_cap:
            return Reason.MEMBER_CAP_REACHED
        return self._intend(Change(Action.ENTER, *key, data))

    def update(self, key: MemberKey, data: bytes) -> Change | Reason | None:
        if key not in self.intended:
            return Reason.NOT_PRESENT
        if self.intended[key] == data:
            return None
        return self._intend(Change(Action.UPDATE, *key, data))

    def leave(self, key: MemberKey) -> Change | None:
        """The LEAVE to write; None when `key` is not a member (a leave retried after it was
        written, say): leaving is idempotent."""
        if key not in self.intended:
            return None
        self.leave_at_ms.pop(key, None)
        return self._intend(Change(Action.LEAVE, *key))

    def _intend(self, change: Change) -> Change:
        if change.action is Action.ABSENT:
            self.absent.add(change.key)
            return change
        if change.action is not Action.UPDATE:  # an update changes data, not connections
            self.absent.discard(change.key)
        if change.action is Action.LEAVE:
            del self.intended[change.key]
        elif change.action is not Action.PRESENT:
            self.intended[change.key] = change.data
        return change

    def connected(self, key: MemberKey) -> Change | None:
        """A stream of `key` opened here; the PRESENT to write if its absence was written."""
        self.streams[key] = self.streams.get(key, 0) + 1
        self.leave_at_ms.pop(key, None)
        if key in self.absent and key in self.intended:
            return self._intend(Change(Action.PRESENT, *key))
        return None

    def disconnected(self, key: MemberKey, now_ms: int, grace_ms: int) -> Change | None:
        """A stream of `key` ended here; the ABSENT to write if it was the member's last."""
        left = self.streams.get(key, 0) - 1
        if left > 0:
            self.streams[key] = left
            return None
        self.streams.pop(key, None)
        if key not in self.intended:
            return None
        self.leave_at_ms[key] = now_ms + grace_ms
        if key in self.absent:
            return None
        return self._intend(Change(Action.ABSENT, *key))

    def due(self, now_ms: int) -> list[Change]:
        """LEAVEs of the members whose grace is over (rule 5), intended as written."""
        over = [key for key, at in self.leave_at_ms.items() if at <= now_ms]
        changes = []
        for key in over:
            del self.leave_at_ms[key]
            if key in self.intended and not self.streams.get(key):
                changes.append(self._intend(Change(Action.LEAVE, *key)))
        return changes

    def next_due_ms(self) -> int | None:
        return min(self.leave_at_ms.values(), default=None)


__all__ = [
    "CONNECTION_HEADER",
    "PRESENCE_SUFFIX",
    "VISIBLE",
    "Action",
    "Change",
    "Member",
    "MemberKey",
    "MemberSet",
    "PresenceError",
    "PresenceOwner",
    "decode",
    "is_presence_log",
    "placement_key",
    "presence_log",
]
