"""What both store engines share: how an entry is kept as bytes, and a bounded cache.

An entry is stored as its serialized ringcast.v1 Message with the checksum it was received with, so
corruption at rest is found when it is read back (`Entry.intact()`); bytes that no longer parse come
back as an entry that is not intact, never as a skipped one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from ringcast.v1 import message_pb2
from services.common.convert import message_from_proto, message_to_proto
from services.core.entries import Entry, Message, entry_checksum
from services.core.invariants import invariant

channel_cache_entries_max = 100_000
"""Channels whose fence and last position the writer keeps in memory (least recently used dropped)."""

Value = TypeVar("Value")


class BoundedCache(Generic[Value]):
    """A least-recently-used map with at most `entries_max` entries (0: caches nothing)."""

    def __init__(self, entries_max: int) -> None:
        invariant(entries_max >= 0, "cache bound is not negative")
        self._entries_max = entries_max
        self._values: OrderedDict[str, Value] = OrderedDict()

    def get(self, key: str) -> Value | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: str, value: Value) -> None:
        if self._entries_max == 0:
            return
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self._entries_max:
            self._values.popitem(last=False)

    def forget(self, key: str) -> None:
        self._values.pop(key, None)

    def clear(self) -> None:
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)


def id_and_timestamp(data: bytes) -> tuple[str, int]:
    try:
        message = message_pb2.Message.FromString(data)
    except Exception:  # unparsable bytes (see entry_from_stored): an id no retry can match
        return "", 0
    return message.id, message.timestamp_ms


def message_bytes(message: Message) -> bytes:
    # The proto's header map keeps no order, and every entry is read back with its headers sorted:
    # a message whose headers are not sorted by key (and unique) would come back with another checksum.
    keys = [key for key, _ in message.headers]
    invariant(all(a < b for a, b in zip(keys, keys[1:], strict=False)), "message headers are sorted and unique")
    if message.encoded:  # as it came: reading it back gives the same message (its serial is ignored)
        return message.encoded
    return bytes(message_to_proto(message).SerializeToString())


def entry_from_stored(serial: int, epoch: int, data: bytes, checksum: int) -> Entry:
    """The stored entry; one whose bytes no longer parse comes back as an entry that is not intact."""
    try:
        proto = message_pb2.Message.FromString(data)
    # google.protobuf.message.DecodeError in practice; caught by its base class here because the
    # protobuf runtime ships no type information for mypy to check the narrower import against.
    except Exception:
        placeholder = Message(id="")
        # Make sure the placeholder can never pass for intact, whatever the stored checksum is.
        if checksum == entry_checksum(serial, epoch, placeholder):
            checksum ^= 1
        return Entry(serial, epoch, placeholder, checksum)
    return Entry(serial, epoch, message_from_proto(proto), checksum)
