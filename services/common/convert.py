"""Between the cores' types and the protobuf messages of ringcast.v1 (the adapters' one translation)."""

from __future__ import annotations

from collections.abc import Iterable

from ringcast.v1 import message_pb2, presence_pb2
from services.core.entries import Entry, Message, Position
from services.core.presence import Action, Change, Member
from services.internal.v1 import store_service_pb2


def message_from_proto(proto: message_pb2.Message, keep_encoded: bool = False) -> Message:
    """A core message from a client's; headers sorted so every replica computes the same checksum.
    With `keep_encoded` it keeps its wire form (`Message.encoded`), for a store to write as it is."""
    return Message(
        proto.id,
        proto.name,
        bytes(proto.data),
        tuple(sorted(proto.headers.items())),
        proto.timestamp_ms,
        proto.client_id,
        encoded=proto.SerializeToString() if keep_encoded else b"",
    )


def message_to_proto(message: Message, serial: int = 0) -> message_pb2.Message:
    return message_pb2.Message(
        id=message.id,
        name=message.name,
        data=message.data,
        headers=dict(message.headers),
        serial=serial,
        timestamp_ms=message.timestamp_ms,
        client_id=message.client_id,
    )


def entry_to_proto(entry: Entry) -> store_service_pb2.LogEntry:
    return store_service_pb2.LogEntry(
        serial=entry.serial,
        epoch=entry.epoch,
        message=message_to_proto(entry.message, entry.serial),
        checksum=entry.checksum,
    )


def entry_from_proto(proto: store_service_pb2.LogEntry, keep_encoded: bool = False) -> Entry:
    """An entry as sent; its checksum is kept as received, so corruption in transit is detected."""
    return Entry(proto.serial, proto.epoch, message_from_proto(proto.message, keep_encoded), proto.checksum)


def entries_to_proto(entries: Iterable[Entry]) -> list[store_service_pb2.LogEntry]:
    return [entry_to_proto(entry) for entry in entries]


def position_to_proto(position: Position) -> store_service_pb2.LogPosition:
    return store_service_pb2.LogPosition(serial=position.serial, epoch=position.epoch)


def position_from_proto(proto: store_service_pb2.LogPosition) -> Position:
    return Position(proto.serial, proto.epoch)


PRESENCE_ACTIONS = {
    Action.ENTER: presence_pb2.PRESENCE_ACTION_ENTER,
    Action.UPDATE: presence_pb2.PRESENCE_ACTION_UPDATE,
    Action.LEAVE: presence_pb2.PRESENCE_ACTION_LEAVE,
}


def member_to_proto(member: Member) -> presence_pb2.PresenceMember:
    return presence_pb2.PresenceMember(
        client_id=member.client_id,
        connection_id=member.connection_id,
        data=member.data,
        serial=member.serial,
        timestamp_ms=member.timestamp_ms,
    )


def change_to_proto(change: Change, serial: int, timestamp_ms: int) -> presence_pb2.PresenceChange:
    return presence_pb2.PresenceChange(
        action=PRESENCE_ACTIONS[change.action],
        member=presence_pb2.PresenceMember(
            client_id=change.client_id,
            connection_id=change.connection_id,
            data=change.data,
            serial=serial,
            timestamp_ms=timestamp_ms,
        ),
    )
