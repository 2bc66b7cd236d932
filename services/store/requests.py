"""What a store accepts, checked before anything is applied (bounds, value ranges, channel names),
and the replies it sends, in their wire form."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ringcast.reasons import Reason
from services.common import convert
from services.common.errors import invalid
from services.core.entries import Entry, Position
from services.core.replica_log import (
    COMMIT_ID_KEY,
    COMMIT_MS_KEY,
    COMMIT_REQUESTS_KEY,
    AppendReply,
    FenceReply,
    ReadReply,
    ids_read_max,
    read_entries_max,
)
from services.internal.v1 import store_service_pb2 as store_pb2
from services.store.writer import Committed

append_channels_max = 1_024
"""ChannelAppends one Append call may carry (an owner sends at most a few hundred)."""


fence_channels_max = 1_024
"""ChannelFences one Fence call may carry."""


read_channels_max = 64
"""ChannelReads one Read call may carry."""


read_response_bytes_max = 2 * 1024 * 1024
"""Message data one Read answer carries before each further read gets only its first entry.

With `read_channels_max` reads of one largest message each on top, an answer stays under the
gRPC message limit whatever the messages' sizes.
"""


read_entries_default = 100
"""Entries a read returns when the caller asks for `limit` 0."""


channel_chars_max = 256
"""Longest channel name stored (DESIGN §7)."""


stored_value_max = (1 << 63) - 1
"""Largest serial or epoch an SQLite INTEGER holds; the proto's uint64 can say more."""


def checked_channel(name: str) -> str:
    if not name:
        raise invalid(Reason.CHANNEL_NAME_EMPTY, "channel name is empty")
    if len(name) > channel_chars_max:
        raise invalid(
            Reason.CHANNEL_NAME_TOO_LONG,
            f"channel name has {len(name)} chars; at most {channel_chars_max}",
            limit=str(channel_chars_max),
        )
    return name


def stored_value(value: int, field: str, value_max: int) -> int:
    if value > value_max:
        raise invalid(Reason.VALUE_OUT_OF_RANGE, f"{field} is above {value_max}", field=field)
    return value


def parsed_fences(protos: Sequence[store_pb2.ChannelFence], value_max: int) -> list[tuple[str, int]]:
    at_most(len(protos), fence_channels_max, Reason.TOO_MANY_FENCES, "fences")
    return [(checked_channel(proto.channel), stored_value(proto.epoch, "epoch", value_max)) for proto in protos]


ReadAsked = tuple[str, int, int, bool]
"""(channel, after serial, limit, ids only)"""


def parsed_reads(protos: Sequence[store_pb2.ChannelRead], value_max: int) -> list[ReadAsked]:
    at_most(len(protos), read_channels_max, Reason.TOO_MANY_READS, "reads")
    return [
        (
            checked_channel(proto.channel),
            stored_value(proto.after_serial, "after_serial", value_max),
            min(proto.limit or read_entries_default, ids_read_max if proto.ids_only else read_entries_max),
            proto.ids_only,
        )
        for proto in protos
    ]


def within_budget(reply: ReadReply, budget: int) -> ReadReply:
    """An ids-only reply cut to about `budget` bytes, but never to fewer than one id."""
    size = 0
    for index, (message_id, _) in enumerate(reply.ids):
        size += len(message_id) + 8
        if index and size > budget:
            return dataclasses.replace(reply, ids=reply.ids[:index])
    return reply


def at_most(count: int, limit: int, reason: str, what: str) -> None:
    if count > limit:
        raise invalid(reason, f"{count} {what} in one call; at most {limit}", limit=str(limit))


AppendAsked = tuple[str, int, Position, tuple[Entry, ...], int, bool]  # ..., commit, from_base


def parsed_appends(protos: Sequence[store_pb2.ChannelAppend], value_max: int) -> list[AppendAsked]:
    at_most(len(protos), append_channels_max, Reason.TOO_MANY_APPENDS, "appends")
    appends = []
    for proto in protos:
        channel = checked_channel(proto.channel)
        epoch = stored_value(proto.epoch, "epoch", value_max)
        prev = Position(
            stored_value(proto.prev.serial, "prev.serial", value_max),
            stored_value(proto.prev.epoch, "prev.epoch", value_max),
        )
        for entry in proto.entries:
            stored_value(entry.serial, "entries.serial", value_max)
            stored_value(entry.epoch, "entries.epoch", value_max)
        entries = tuple(convert.entry_from_proto(entry, keep_encoded=True) for entry in proto.entries)
        commit = stored_value(proto.commit, "commit", value_max)
        appends.append((channel, epoch, prev, entries, commit, proto.from_base))
    return appends


def commit_metadata(committed: Committed[Any]) -> tuple[tuple[str, str], ...]:
    return (
        (COMMIT_ID_KEY, str(committed.commit_id)),
        (COMMIT_REQUESTS_KEY, str(committed.commit_requests)),
        (COMMIT_MS_KEY, f"{committed.commit_ms:.3f}"),
    )


def fence_to_proto(reply: FenceReply) -> store_pb2.ChannelFenceResult:
    return store_pb2.ChannelFenceResult(
        fenced=reply.fenced,
        fence_epoch=reply.fence_epoch,
        last=convert.position_to_proto(reply.last),
        damaged_serial=reply.damaged,
    )


def append_to_proto(reply: AppendReply, now_ms: int) -> store_pb2.ChannelAppendResult:
    return store_pb2.ChannelAppendResult(
        status=store_pb2.AppendStatus.Value(f"APPEND_STATUS_{reply.status.name}"),
        fence_epoch=reply.fence_epoch,
        last=convert.position_to_proto(reply.last),
        match_serial=reply.match_serial,
        conflict_epoch=reply.conflict_epoch,
        conflict_first_serial=reply.conflict_first_serial,
        detail=reply.detail,
        base=convert.position_to_proto(reply.base),
        damaged_serial=reply.damaged,
        store_now_ms=now_ms,
    )
