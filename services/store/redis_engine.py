"""The Redis engine: one replica's channel logs in one Redis (AOF on, `appendfsync always`).

Rules:

1. Keys: `<prefix>f:<channel>` holds the fence (a decimal string); `<prefix>e:<channel>` is a
   sorted set of the channel's entries, scored by serial, each member the entry packed as serial,
   epoch, checksum and the serialized ringcast.v1 Message (the serial first keeps members unique);
   `<prefix>channels` is the set of channel names.
2. Mutations happen only inside `begin()` ... `commit()`. Until the commit they live in this
   object (an overlay that the rules' own reads see), so a group of requests reads its own writes.
   `commit()` sends the whole group as one Lua script, which first checks that every channel it
   touches still has the fence and last serial this writer saw, and only then writes: the fence
   check and the write are one atomic step, and a second writer on the same Redis (a store process
   that should not be running) makes the commit fail rather than interleave. With `appendfsync
   always`, Redis answers the script only after the AOF write is synced: durable on return.
3. Fence and last position are cached per channel (bounded), like the SQLite engine; a rollback or
   a failed commit forgets the cache.
4. Serials and epochs are Redis sorted-set scores (doubles), exact up to 2**53: `value_max`. A
   read-only instance reads a channel's entries and its last position in one MULTI/EXEC, so a read
   answer is one consistent view.
5. A Redis that does not sync every write (`appendonly no`, or `appendfsync` other than `always`)
   is refused when the engine opens: acknowledged writes must survive a crash.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from services.common.entries import ORIGIN, Entry, Position
from services.common.invariants import invariant
from services.store.log import message_ids
from services.store.sqlite_engine import _BoundedCache, _entry_from_row, _message_bytes, channel_cache_entries_max

value_max = 2**53
"""Largest serial or epoch this engine stores exactly (sorted-set scores are doubles)."""

socket_timeout_s = 10.0
"""How long one Redis command may take before the engine gives up (the store answers UNAVAILABLE)."""

_HEADER = struct.Struct(">QQI")  # serial, epoch, checksum

# ARGV: prefix, channel count, then per channel: name, expected fence, expected last serial,
# new fence ('' = unchanged), truncate after ('' = none), entry count, then (serial, member) pairs.
_COMMIT_SCRIPT = """
local prefix = ARGV[1]
local count = tonumber(ARGV[2])
local at = 3
local plans = {}
for c = 1, count do
  local channel, fence, last = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local stored_fence = redis.call('GET', prefix .. 'f:' .. channel) or '0'
  if stored_fence ~= fence then
    return redis.error_reply('CONFLICT fence of ' .. channel .. ' is ' .. stored_fence .. ', expected ' .. fence)
  end
  local tail = redis.call('ZRANGE', prefix .. 'e:' .. channel, -1, -1, 'WITHSCORES')
  local stored_last = tail[2] or '0'
  if stored_last ~= last then
    return redis.error_reply('CONFLICT last of ' .. channel .. ' is ' .. stored_last .. ', expected ' .. last)
  end
  local entries = tonumber(ARGV[at + 5])
  plans[c] = {channel, ARGV[at + 3], ARGV[at + 4], at + 6, entries}
  at = at + 6 + 2 * entries
end
for c = 1, count do
  local channel, new_fence, truncate, first, entries = unpack(plans[c])
  local key = prefix .. 'e:' .. channel
  redis.call('SADD', prefix .. 'channels', channel)
  if new_fence ~= '' then
    redis.call('SET', prefix .. 'f:' .. channel, new_fence)
  end
  if truncate ~= '' then
    redis.call('ZREMRANGEBYSCORE', key, '(' .. truncate, '+inf')
  end
  for e = 0, entries - 1 do
    redis.call('ZADD', key, ARGV[first + 2 * e], ARGV[first + 2 * e + 1])
  end
end
return count
"""


class RedisConflict(Exception):
    """The commit found a channel changed by someone else since this writer read it."""


@dataclass(slots=True)
class _Pending:
    """One channel's uncommitted changes, and what this writer saw of it before them."""

    seen_fence: int
    seen_last: int
    fence: int | None = None
    truncate_after: int | None = None
    entries: list[Entry] = field(default_factory=list)


def _members(result: object) -> list[bytes]:
    """A sorted-set range reply: members as bytes (the client decodes nothing)."""
    invariant(isinstance(result, list), "a range answers a list")
    return cast(list[bytes], result)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pack(entry: Entry) -> bytes:
    return _HEADER.pack(entry.serial, entry.epoch, entry.checksum) + _message_bytes(entry.message)


def _unpack(member: bytes) -> Entry:
    serial, epoch, checksum = _HEADER.unpack_from(member)
    return _entry_from_row(serial, epoch, member[_HEADER.size :], checksum)


def open_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)


def check_durable(client: redis.Redis) -> None:
    """Refuse a Redis that would acknowledge writes it has not synced."""
    config: dict[str, str] = {}
    for name in ("appendonly", "appendfsync"):
        config.update({_text(k): _text(v) for k, v in cast(dict[Any, Any], client.config_get(name)).items()})
    if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
        raise SystemExit(
            f"redis at {client.connection_pool.connection_kwargs.get('host')}:"
            f"{client.connection_pool.connection_kwargs.get('port')} must run with appendonly yes and "
            f"appendfsync always (it has {config}): acknowledged writes must survive a crash"
        )


class RedisLogStorage:
    """A `LogStorage` (services/store/log.py) over one Redis."""

    value_max = value_max

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "rc:",
        read_only: bool = False,
        channel_cache_entries_max: int = channel_cache_entries_max,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.read_only = read_only
        cache_bound = 0 if read_only else channel_cache_entries_max
        self._fences: _BoundedCache[int] = _BoundedCache(cache_bound)
        self._lasts: _BoundedCache[Position] = _BoundedCache(cache_bound)
        self._pending: dict[str, _Pending] | None = None
        self._snapshot: dict[str, Position] | None = None  # read-only: last positions read with entries
        self._commit = client.register_script(_COMMIT_SCRIPT)

    # ----------------------------------------------------------------------------- transactions

    @property
    def in_transaction(self) -> bool:
        return self._pending is not None or self._snapshot is not None

    def begin(self) -> None:
        invariant(not self.in_transaction, "no transaction is open")
        if self.read_only:
            self._snapshot = {}
        else:
            self._pending = {}

    def commit(self) -> None:
        """Write the group atomically (one script); durable on return under `appendfsync always`."""
        invariant(self.in_transaction, "a transaction is open")
        pending, self._pending, self._snapshot = self._pending, None, None
        if not pending:
            return
        arguments: list[Any] = [self.prefix, len(pending)]
        for channel, change in pending.items():
            arguments += [
                channel,
                str(change.seen_fence),
                str(change.seen_last),
                "" if change.fence is None else str(change.fence),
                "" if change.truncate_after is None else str(change.truncate_after),
                len(change.entries),
            ]
            for entry in change.entries:
                arguments += [entry.serial, _pack(entry)]
        try:
            self._commit(args=arguments)
        except redis.ResponseError as error:  # the script refused: nothing was written
            self._forget_cache()
            if "CONFLICT" in str(error):
                raise RedisConflict(str(error)) from error
            raise
        except BaseException:
            self._forget_cache()
            raise
        for channel, change in pending.items():
            if change.fence is not None:
                self._fences.put(channel, change.fence)
            if change.entries:
                self._lasts.put(channel, change.entries[-1].position)
            elif change.truncate_after is not None:
                self._lasts.forget(channel)

    def rollback(self) -> None:
        self._pending = None
        self._snapshot = None
        self._forget_cache()

    def close(self) -> None:
        self.rollback()
        self.client.close()

    def _forget_cache(self) -> None:
        self._fences.clear()
        self._lasts.clear()

    def _change(self, channel: str) -> _Pending:
        invariant(not self.read_only, "a read-only store is never written")
        invariant(self._pending is not None, "store mutations run inside begin() ... commit()")
        assert self._pending is not None
        change = self._pending.get(channel)
        if change is None:
            change = self._pending[channel] = _Pending(self._stored_fence(channel), self._stored_last(channel).serial)
        return change

    # ----------------------------------------------------------------------------- stored state

    def _stored_fence(self, channel: str) -> int:
        fence = self._fences.get(channel)
        if fence is None:
            raw = self.client.get(self.prefix + "f:" + channel)
            fence = int(cast(bytes, raw)) if raw is not None else 0
            self._fences.put(channel, fence)
        return fence

    def _stored_last(self, channel: str) -> Position:
        if self._snapshot is not None and channel in self._snapshot:
            return self._snapshot[channel]
        last = self._lasts.get(channel)
        if last is None:
            members = _members(self.client.zrange(self.prefix + "e:" + channel, -1, -1))
            last = _unpack(members[0]).position if members else ORIGIN
            self._lasts.put(channel, last)
        return last

    def _stored_epoch_at(self, channel: str, serial: int) -> int | None:
        members = _members(self.client.zrangebyscore(self.prefix + "e:" + channel, serial, serial))
        return int(_HEADER.unpack_from(members[0])[1]) if members else None

    # ----------------------------------------------------------------------------- LogStorage

    def channels(self) -> list[str]:
        names = cast(set[bytes], self.client.smembers(self.prefix + "channels"))
        return sorted(name.decode() for name in names)

    def fence_of(self, channel: str) -> int:
        change = self._pending.get(channel) if self._pending is not None else None
        if change is not None and change.fence is not None:
            return change.fence
        return self._stored_fence(channel)

    def set_fence(self, channel: str, epoch: int) -> None:
        invariant(epoch >= self.fence_of(channel), "fence never decreases")
        self._change(channel).fence = epoch

    def last(self, channel: str) -> Position:
        change = self._pending.get(channel) if self._pending is not None else None
        if change is not None:
            if change.entries:
                return change.entries[-1].position
            if change.truncate_after is not None:
                serial = change.truncate_after
                epoch = self._stored_epoch_at(channel, serial) if serial else 0
                return Position(serial, epoch or 0)
        return self._stored_last(channel)

    def epoch_at(self, channel: str, serial: int) -> int | None:
        if serial == 0:
            return 0
        last = self.last(channel)
        if serial < 0 or serial > last.serial:
            return None
        if serial == last.serial:
            return last.epoch
        change = self._pending.get(channel) if self._pending is not None else None
        if change is not None and change.entries and serial >= change.entries[0].serial:
            return change.entries[serial - change.entries[0].serial].epoch
        epoch = self._stored_epoch_at(channel, serial)
        invariant(epoch is not None, "the log is contiguous up to its last entry")
        return epoch

    def first_serial_of_epoch(self, channel: str, epoch: int) -> int:
        """Epochs never decrease along a log: a binary search over serials finds the first."""
        low, high = 1, self.last(channel).serial + 1
        while low < high:
            middle = (low + high) // 2
            at = self.epoch_at(channel, middle)
            assert at is not None
            if at < epoch:
                low = middle + 1
            else:
                high = middle
        invariant(self.epoch_at(channel, low) == epoch, "epoch is in the log")
        return low

    def truncate_after(self, channel: str, serial: int) -> None:
        invariant(serial >= 0, "truncation point is a serial")
        change = self._change(channel)
        if change.entries and change.entries[0].serial <= serial:
            del change.entries[serial - change.entries[0].serial + 1 :]
            return
        change.entries.clear()
        change.truncate_after = serial if change.truncate_after is None else min(change.truncate_after, serial)

    def extend(self, channel: str, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        last = self.last(channel)
        change = self._change(channel)
        previous_serial, previous_epoch = last.serial, last.epoch
        for entry in entries:
            invariant(entry.serial == previous_serial + 1, "log stays contiguous")
            invariant(entry.epoch >= previous_epoch, "epochs never decrease")
            invariant(entry.serial <= value_max and entry.epoch <= value_max, "values within the engine's range")
            previous_serial, previous_epoch = entry.serial, entry.epoch
        change.entries.extend(entries)

    def read(self, channel: str, after_serial: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        change = self._pending.get(channel) if self._pending is not None else None
        if change is None or (change.truncate_after is None and not change.entries):
            return self._stored_read(channel, after_serial, limit)
        # Our own uncommitted writes: the stored log up to where they start, then them.
        after_serial = max(after_serial, 0)
        cut = change.entries[0].serial - 1 if change.entries else change.truncate_after
        assert cut is not None
        found = self._stored_read(channel, after_serial, min(limit, cut - after_serial)) if after_serial < cut else []
        found += [entry for entry in change.entries if entry.serial > after_serial][: limit - len(found)]
        return found

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[str, int]]:
        # Entries are stored whole in one sorted-set member each: nothing cheaper to fetch.
        return message_ids(self.read(channel, after_serial, limit))

    def _stored_read(self, channel: str, after_serial: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        key = self.prefix + "e:" + channel
        with self.client.pipeline(transaction=True) as pipeline:
            pipeline.zrangebyscore(key, f"({max(after_serial, 0)}", "+inf", start=0, num=limit)
            pipeline.zrange(key, -1, -1)
            found, tail = (_members(result) for result in pipeline.execute())
        if self._snapshot is not None:
            self._snapshot[channel] = _unpack(tail[0]).position if tail else ORIGIN
        return [_unpack(member) for member in found]
