"""How the Redis engine lays out its values (rule 1 of redis_engine.py): packed entries, positions as
"serial epoch" text, reply parsing, and the one Lua script a commit runs (the check and the write as
one atomic step, rule 2)."""

from __future__ import annotations

import struct
from typing import cast

from services.core.entries import ORIGIN, Entry, Position
from services.core.invariants import invariant
from services.store.rows import entry_from_stored, message_bytes

ENTRY_HEADER = struct.Struct(">QQI")  # serial, epoch, checksum


# ARGV: prefix, channel count, then per channel: name, expected fence, expected base ("serial
# epoch"), expected committed serial, expected last serial (the base's when no entry is stored), new
# fence, new base, new committed serial, new damaged serial ('' = unchanged), truncate after ('' =
# none), count of serials to remove and those serials, count of entries to fill in and (serial,
# member) pairs, entry count, then (serial, member) pairs. In that order: removals, a new base (which
# drops every entry up to its serial), the truncation, the filled entries, the new entries.
COMMIT_SCRIPT = """
local prefix = ARGV[1]
local count = tonumber(ARGV[2])
local at = 3
local plans = {}
local function check(what, channel, stored, expected)
  if stored ~= expected then
    return redis.error_reply('CONFLICT ' .. what .. ' of ' .. channel .. ' is ' .. stored .. ', expected ' .. expected)
  end
end
for c = 1, count do
  local channel = ARGV[at]
  local stored_base = redis.call('GET', prefix .. 'b:' .. channel) or '0 0'
  local tail = redis.call('ZRANGE', prefix .. 'e:' .. channel, -1, -1, 'WITHSCORES')
  local conflict = check('fence', channel, redis.call('GET', prefix .. 'f:' .. channel) or '0', ARGV[at + 1])
    or check('base', channel, stored_base, ARGV[at + 2])
    or check('committed', channel, redis.call('GET', prefix .. 'c:' .. channel) or '0', ARGV[at + 3])
    or check('last', channel, tail[2] or string.match(stored_base, '^%d+'), ARGV[at + 4])
  if conflict then
    return conflict
  end
  local removes = tonumber(ARGV[at + 10])
  local fills_at = at + 11 + removes
  local fills = tonumber(ARGV[fills_at])
  local entries_at = fills_at + 1 + 2 * fills
  local entries = tonumber(ARGV[entries_at])
  plans[c] = {channel, ARGV[at + 5], ARGV[at + 6], ARGV[at + 7], ARGV[at + 8], ARGV[at + 9],
    at + 11, removes, fills_at + 1, fills, entries_at + 1, entries}
  at = entries_at + 1 + 2 * entries
end
for c = 1, count do
  local channel, new_fence, new_base, new_committed, new_damaged, truncate,
    removes_first, removes, fills_first, fills, first, entries = unpack(plans[c])
  local key = prefix .. 'e:' .. channel
  redis.call('SADD', prefix .. 'channels', channel)
  redis.call('ZADD', prefix .. 'names', 0, channel)
  if new_fence ~= '' then
    redis.call('SET', prefix .. 'f:' .. channel, new_fence)
  end
  if new_damaged ~= '' then
    redis.call('SET', prefix .. 'd:' .. channel, new_damaged)
  end
  for r = 0, removes - 1 do
    redis.call('ZREMRANGEBYSCORE', key, ARGV[removes_first + r], ARGV[removes_first + r])
  end
  if new_base ~= '' then
    redis.call('SET', prefix .. 'b:' .. channel, new_base)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.match(new_base, '^%d+'))
  end
  if new_committed ~= '' then
    redis.call('SET', prefix .. 'c:' .. channel, new_committed)
  end
  if truncate ~= '' then
    redis.call('ZREMRANGEBYSCORE', key, '(' .. truncate, '+inf')
  end
  for f = 0, fills - 1 do
    redis.call('ZADD', key, ARGV[fills_first + 2 * f], ARGV[fills_first + 2 * f + 1])
  end
  for e = 0, entries - 1 do
    redis.call('ZADD', key, ARGV[first + 2 * e], ARGV[first + 2 * e + 1])
  end
end
return count
"""


def members_of(result: object) -> list[bytes]:
    """A sorted-set range reply: members as bytes (the client decodes nothing)."""
    invariant(isinstance(result, list), "a range answers a list")
    return cast(list[bytes], result)


def text_of(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def position_text(position: Position) -> str:
    return f"{position.serial} {position.epoch}"


def position_of(raw: object) -> Position:
    """A stored base (`b:`); the origin when the key is absent."""
    if raw is None:
        return ORIGIN
    serial, epoch = text_of(raw).split()
    return Position(int(serial), int(epoch))


def serial_of(position: Position) -> int:
    return position.serial


def pack_entry(entry: Entry) -> bytes:
    return ENTRY_HEADER.pack(entry.serial, entry.epoch, entry.checksum) + message_bytes(entry.message)


def unpack_entry(member: bytes) -> Entry:
    serial, epoch, checksum = ENTRY_HEADER.unpack_from(member)
    return entry_from_stored(serial, epoch, member[ENTRY_HEADER.size :], checksum)
