"""Messages and log entries: the unit the whole platform moves around.

A `Message` is what a client published; an `Entry` is that message at a position of a channel's
log: (serial, epoch). Serials number the log 1, 2, 3, ... with no gaps; the epoch says which
ownership of the channel wrote the entry (a fencing token, strictly increasing per channel).

Every entry carries a CRC-32 over its serial, epoch and message content, computed once where the
entry is made and checked by every replica that stores it and every reader that reads it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from services.core.invariants import invariant

_HEADER = struct.Struct(">QQ")

EPOCH_ATTEMPTS_PER_VERSION = 1 << 16
"""Takeover attempts one node may make for one channel under one ring version."""


def make_epoch(ring_version: int, attempt: int) -> int:
    """The epoch of takeover attempt `attempt` under ring `ring_version`: every attempt of a later ring
    version orders after every attempt of an earlier one."""
    invariant(0 <= attempt < EPOCH_ATTEMPTS_PER_VERSION, "attempt within its bound")
    return ring_version * EPOCH_ATTEMPTS_PER_VERSION + attempt


def epoch_ring_version(epoch: int) -> int:
    """The ring version an epoch was made under."""
    return epoch // EPOCH_ATTEMPTS_PER_VERSION


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a channel's log: the entry with `serial`, written at `epoch`.

    `Position(0, 0)` is the empty log: every log matches there.
    """

    serial: int
    epoch: int


ORIGIN = Position(0, 0)


@dataclass(frozen=True, slots=True)
class Message:
    """A published message. `timestamp_ms` is set by the channel owner when it assigns a serial."""

    id: str
    name: str = ""
    data: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    timestamp_ms: int = 0
    client_id: str = ""
    """Who published it (the token's `sub`, stamped by the gateway); empty without tokens."""
    content_crc: int = field(default=-1, compare=False, repr=False)
    encoded: bytes = field(default=b"", compare=False, repr=False)
    """The message as it arrived on the wire (a ringcast.v1.Message), when it did: what a store
    writes, so it need not encode it again. Empty when the message was made here."""

    def __post_init__(self) -> None:
        if self.content_crc < 0:
            object.__setattr__(self, "content_crc", _content_crc(self))

    def stamped(self, timestamp_ms: int) -> Message:
        """This message with the owner's timestamp."""
        return Message(self.id, self.name, self.data, self.headers, timestamp_ms, self.client_id)


def _content_crc(message: Message) -> int:
    crc = zlib.crc32(message.id.encode())
    crc = zlib.crc32(b"\0" + message.name.encode(), crc)
    crc = zlib.crc32(b"\0" + message.data, crc)
    for key, value in message.headers:
        crc = zlib.crc32(b"\0" + key.encode() + b"=" + value.encode(), crc)
    crc = zlib.crc32(struct.pack(">q", message.timestamp_ms), crc)
    if message.client_id:  # only when set: entries written before client ids keep their checksums
        crc = zlib.crc32(b"\0client=" + message.client_id.encode(), crc)
    return crc


def entry_checksum(serial: int, epoch: int, message: Message) -> int:
    """CRC-32 of (serial, epoch, message content); chained onto the message's cached content CRC."""
    return zlib.crc32(_HEADER.pack(serial, epoch), message.content_crc)


@dataclass(frozen=True, slots=True)
class Entry:
    """One message at one position of one channel's log."""

    serial: int
    epoch: int
    message: Message
    checksum: int

    @classmethod
    def make(cls, serial: int, epoch: int, message: Message) -> Entry:
        return cls(serial, epoch, message, entry_checksum(serial, epoch, message))

    @property
    def position(self) -> Position:
        return Position(self.serial, self.epoch)

    def with_epoch(self, epoch: int) -> Entry:
        """The same message at the same serial, rewritten by a later owner at `epoch`."""
        return Entry.make(self.serial, epoch, self.message)

    def intact(self) -> bool:
        """True when the checksum still matches the content."""
        return self.checksum == entry_checksum(self.serial, self.epoch, self.message)
