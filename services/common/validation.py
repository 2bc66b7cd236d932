"""Input limits of the public API (DESIGN §7), checked before anything reaches a channel owner.

Every check answers with a reason a program can act on. Nothing here has side effects: a refused
request changes nothing anywhere.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from services.common.errors import ServiceError, invalid

_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_\-:.@]+")


@dataclass(frozen=True, slots=True)
class Limits:
    """Defaults are the documented limits; every one is configurable."""

    channel_chars_max: int = 256
    message_data_bytes_max: int = 64 * 1024
    batch_messages_max: int = 100
    batch_bytes_max: int = 1024 * 1024
    message_id_chars_max: int = 128
    message_name_chars_max: int = 256
    message_headers_max: int = 64
    header_chars_max: int = 1024
    history_limit_default: int = 100
    history_limit_max: int = 1_000


def check_channel(name: str, limits: Limits) -> None:
    if not name:
        raise invalid(Reason.CHANNEL_NAME_EMPTY, "channel name is empty")
    if len(name) > limits.channel_chars_max:
        raise invalid(
            Reason.CHANNEL_NAME_TOO_LONG,
            f"channel name has {len(name)} chars; at most {limits.channel_chars_max}",
            limit=str(limits.channel_chars_max),
        )
    if not _CHANNEL_NAME.fullmatch(name):
        raise invalid(Reason.CHANNEL_NAME_INVALID, "channel name may only use A-Z a-z 0-9 _ - : . @")
    if name.startswith(":"):
        raise invalid(Reason.CHANNEL_NAME_INVALID, "channel name must not start with ':'")


def printable_id(message_id: str) -> bool:
    """The id rule: every character printable — none of Unicode's "other" categories (control,
    format, surrogate, private use, unassigned) nor a line or paragraph separator. Spaces are fine."""
    return not any(unicodedata.category(char)[0] == "C" or char in "\u2028\u2029" for char in message_id)


def check_batch(messages: Sequence[message_pb2.Message], limits: Limits, data_bytes_max: int | None = None) -> None:
    """The batch rules; `data_bytes_max` (a namespace's `message_bytes_max`) may lower the data limit."""
    data_max = (
        limits.message_data_bytes_max if data_bytes_max is None else min(data_bytes_max, limits.message_data_bytes_max)
    )
    if not messages:
        raise invalid(Reason.BATCH_EMPTY, "a publish needs at least one message")
    if len(messages) > limits.batch_messages_max:
        raise invalid(
            Reason.BATCH_TOO_MANY_MESSAGES,
            f"{len(messages)} messages in one batch; at most {limits.batch_messages_max}",
            limit=str(limits.batch_messages_max),
        )
    total = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not message.id:
            raise invalid(Reason.MESSAGE_ID_MISSING, f"{where}: id is required (it makes retries safe)")
        if len(message.id) > limits.message_id_chars_max:
            raise invalid(
                Reason.MESSAGE_ID_TOO_LONG,
                f"{where}: id longer than {limits.message_id_chars_max} chars",
                limit=str(limits.message_id_chars_max),
            )
        if not printable_id(message.id):
            raise invalid(Reason.MESSAGE_ID_INVALID, f"{where}: id has a control or other non-printable character")
        if len(message.name) > limits.message_name_chars_max:
            raise invalid(
                Reason.MESSAGE_NAME_TOO_LONG,
                f"{where}: name longer than {limits.message_name_chars_max} chars",
                limit=str(limits.message_name_chars_max),
            )
        if len(message.data) > data_max:
            raise invalid(
                Reason.MESSAGE_TOO_LARGE,
                f"{where}: {len(message.data)} bytes of data; at most {data_max}",
                limit=str(data_max),
            )
        if len(message.headers) > limits.message_headers_max:
            raise invalid(
                Reason.TOO_MANY_HEADERS,
                f"{where}: more than {limits.message_headers_max} headers",
                limit=str(limits.message_headers_max),
            )
        for key, value in message.headers.items():
            if not key or len(key) + len(value) > limits.header_chars_max:
                raise invalid(
                    Reason.HEADER_INVALID,
                    f"{where}: header {key[:32]!r} is empty, or key and value exceed {limits.header_chars_max} chars",
                    limit=str(limits.header_chars_max),
                )
        if message.serial or message.timestamp_ms or message.client_id:
            raise invalid(
                Reason.PLATFORM_FIELD_SET, f"{where}: serial, timestamp_ms and client_id are set by the platform"
            )
        total += message.ByteSize()
    if total > limits.batch_bytes_max:
        raise invalid(
            Reason.BATCH_TOO_LARGE,
            f"batch is {total} bytes; at most {limits.batch_bytes_max}",
            limit=str(limits.batch_bytes_max),
        )
    ids = [message.id for message in messages]
    if len(set(ids)) != len(ids):
        raise invalid(Reason.DUPLICATE_ID_IN_BATCH, "two messages of one batch have the same id")


def history_limit(requested: int, limits: Limits) -> int:
    if requested == 0:
        return limits.history_limit_default
    return min(requested, limits.history_limit_max)


__all__ = ["Limits", "ServiceError", "check_batch", "check_channel", "history_limit"]
