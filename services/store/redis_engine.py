"""The Redis engine: one replica's channel logs in one Redis (AOF on, `appendfsync always`).

Rules:

1. Keys: `<prefix>f:<channel>` holds the fence (a decimal string); `<prefix>e:<channel>` is a
   sorted set of the channel's retained entries, scored by serial, each member the entry packed as
   serial, epoch, checksum and the serialized ringcast.v1 Message (the serial first keeps members
   unique); `<prefix>b:<channel>` holds the base the retained log follows, as "serial epoch" (absent:
   the origin, nothing dropped); `<prefix>c:<channel>` holds the serial known committed (absent: 0);
   `<prefix>channels` is the set of channel names, and `<prefix>names` the same names in a sorted
   set scored 0, so they can be paged in order (stores written before it existed get it on open);
   `<prefix>d:<channel>` holds the first serial known to be missing (replica_log.py rule 7; absent: none).
   The last position is the last entry's, or the base's when no entry is retained.
2. Mutations happen only inside `begin()` ... `commit()`. Until the commit they live in this
   object (an overlay that the rules' own reads see), so a group of requests reads its own writes.
   `commit()` sends the whole group as one Lua script, which first checks that every channel it
   touches still has the fence, base, committed serial and last serial this writer saw, and only
   then writes: the check and the write are one atomic step, and a second writer on the same Redis
   (a store process that should not be running) makes the commit fail rather than interleave. With
   `appendfsync always`, Redis answers the script only after the AOF write is synced: durable on
   return.
3. Fence, base, committed serial and last position are cached per channel (bounded), like the
   SQLite engine; a rollback or a failed commit forgets the cache.
4. Serials and epochs are Redis sorted-set scores (doubles), exact up to 2**53: `value_max`. A
   read-only instance reads a channel's base and last position together (one MULTI/EXEC), and
   inside `begin()` ... `commit()` keeps that view for the snapshot; a read there takes its entries,
   last position and base in one MULTI/EXEC too, so a read answer is one consistent view. Should the
   log have been trimmed past the read's start since the snapshot answered its base, the read
   answers no entries rather than entries after an unannounced gap (the next read sees the new base).
5. A Redis that does not sync every write (`appendonly no`, or `appendfsync` other than `always`)
   is refused when the engine opens: acknowledged writes must survive a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from services.core.entries import ORIGIN, Entry, Position
from services.core.invariants import invariant
from services.core.replica_log import base_advances, message_ids
from services.store.redis_codec import (
    COMMIT_SCRIPT,
    ENTRY_HEADER,
    members_of,
    pack_entry,
    position_of,
    position_text,
    serial_of,
    text_of,
    unpack_entry,
)
from services.store.rows import BoundedCache, channel_cache_entries_max

value_max = 2**53
"""Largest serial or epoch this engine stores exactly (sorted-set scores are doubles)."""

max_fence_page_channels = 1_000
"""Channels whose fences one read of `max_fence` asks for."""

socket_timeout_s = 10.0
"""How long one Redis command may take before the engine gives up (the store answers UNAVAILABLE)."""


class RedisConflict(Exception):
    """The commit found a channel changed by someone else since this writer read it."""


@dataclass(frozen=True, slots=True)
class _ChannelState:
    """A channel's fence, base and committed serial, as stored (its `f:`, `b:` and `c:` keys)."""

    fence: int = 0
    base: Position = ORIGIN
    committed: int = 0
    damaged: int = 0


@dataclass(frozen=True, slots=True)
class _View:
    """What a read-only instance saw of a channel in one MULTI/EXEC: its base and last position."""

    base: Position
    last: Position


@dataclass(slots=True)
class _Pending:
    """One channel's uncommitted changes, and what this writer saw of it before them.

    Whatever order the changes came in, they amount to: remove the stored entries at `removes`, drop
    those up to `base`, drop those after `truncate_after`, write `fills` where entries are missing,
    then add `entries` (which all lie after the rest).
    """

    seen: _ChannelState
    seen_last: int
    fence: int | None = None
    base: Position | None = None
    committed: int | None = None
    damaged: int | None = None
    truncate_after: int | None = None
    removes: set[int] = field(default_factory=set)
    fills: dict[int, Entry] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)

    def arguments(self) -> list[Any]:
        """This channel's part of the commit script's ARGV (after its name)."""
        seen = self.seen
        arguments: list[Any] = [
            str(seen.fence),
            position_text(seen.base),
            str(seen.committed),
            str(self.seen_last),
            "" if self.fence is None else str(self.fence),
            "" if self.base is None else position_text(self.base),
            "" if self.committed is None else str(self.committed),
            "" if self.damaged is None else str(self.damaged),
            "" if self.truncate_after is None else str(self.truncate_after),
            len(self.removes),
            *sorted(self.removes),
            len(self.fills),
        ]
        for serial, entry in sorted(self.fills.items()):
            arguments += [serial, pack_entry(entry)]
        arguments.append(len(self.entries))
        for entry in self.entries:
            arguments += [entry.serial, pack_entry(entry)]
        return arguments

    def state(self) -> _ChannelState:
        """The channel's fence, base and committed serial once this change is written."""
        seen = self.seen
        return _ChannelState(
            seen.fence if self.fence is None else self.fence,
            seen.base if self.base is None else self.base,
            seen.committed if self.committed is None else self.committed,
            seen.damaged if self.damaged is None else self.damaged,
        )

    def missing(self, serial: int) -> bool:
        """True when this change removed the stored entry at `serial` and filled nothing there."""
        return serial in self.removes and serial not in self.fills


def open_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)


def check_durable(client: redis.Redis) -> None:
    """Refuse a Redis that would acknowledge writes it has not synced."""
    config: dict[str, str] = {}
    for name in ("appendonly", "appendfsync"):
        config.update({text_of(k): text_of(v) for k, v in cast(dict[Any, Any], client.config_get(name)).items()})
    if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
        raise SystemExit(
            f"redis at {client.connection_pool.connection_kwargs.get('host')}:"
            f"{client.connection_pool.connection_kwargs.get('port')} must run with appendonly yes and "
            f"appendfsync always (it has {config}): acknowledged writes must survive a crash"
        )


class RedisLogStorage:
    """A `LogStorage` (services/core/replica_log.py) over one Redis."""

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
        self._states: BoundedCache[_ChannelState] = BoundedCache(cache_bound)
        self._lasts: BoundedCache[Position] = BoundedCache(cache_bound)
        self._pending: dict[str, _Pending] | None = None
        self._snapshot: dict[str, _View] | None = None  # read-only: what the snapshot saw of each channel
        self._commit = client.register_script(COMMIT_SCRIPT)
        if not read_only and not client.exists(prefix + "names"):
            # Written before channel names were also kept in order (retention pages through them).
            names = cast(set[bytes], client.smembers(prefix + "channels"))
            if names:
                client.zadd(prefix + "names", dict.fromkeys(names, 0))

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
            arguments += [channel, *change.arguments()]
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
            self._states.put(channel, change.state())
            if change.entries:
                self._lasts.put(channel, change.entries[-1].position)
            elif change.truncate_after is not None or change.base is not None or change.removes:
                self._lasts.forget(channel)

    def rollback(self) -> None:
        self._pending = None
        self._snapshot = None
        self._forget_cache()

    def close(self) -> None:
        self.rollback()
        self.client.close()

    def _forget_cache(self) -> None:
        self._states.clear()
        self._lasts.clear()

    def _pending_of(self, channel: str) -> _Pending | None:
        return self._pending.get(channel) if self._pending is not None else None

    def _change(self, channel: str) -> _Pending:
        invariant(not self.read_only, "a read-only store is never written")
        invariant(self._pending is not None, "store mutations run inside begin() ... commit()")
        assert self._pending is not None
        change = self._pending.get(channel)
        if change is None:
            change = self._pending[channel] = _Pending(self._stored_state(channel), self._stored_last(channel).serial)
        return change

    # ----------------------------------------------------------------------------- stored state

    def _stored_state(self, channel: str) -> _ChannelState:
        state = self._states.get(channel)
        if state is None:
            keys = [self.prefix + kind + channel for kind in ("f:", "b:", "c:", "d:")]
            fence, base, committed, damaged = cast(list[bytes | None], self.client.mget(keys))
            state = _ChannelState(int(fence or 0), position_of(base), int(committed or 0), int(damaged or 0))
            self._states.put(channel, state)
        return state

    def _stored_last(self, channel: str) -> Position:
        if self.read_only:
            return self._view(channel).last
        last = self._lasts.get(channel)
        if last is None:
            members = members_of(self.client.zrange(self.prefix + "e:" + channel, -1, -1))
            last = unpack_entry(members[0]).position if members else self._stored_state(channel).base
            self._lasts.put(channel, last)
        return last

    def _view(self, channel: str) -> _View:
        """Read-only: the channel's base and last position read together, kept for the snapshot."""
        view = self._snapshot.get(channel) if self._snapshot is not None else None
        if view is None:
            with self.client.pipeline(transaction=True) as pipeline:
                pipeline.get(self.prefix + "b:" + channel)
                pipeline.zrange(self.prefix + "e:" + channel, -1, -1)
                raw_base, tail = pipeline.execute()
            base = position_of(raw_base)
            view = _View(base, unpack_entry(members_of(tail)[0]).position if tail else base)
            if self._snapshot is not None:
                self._snapshot[channel] = view
        return view

    def _stored_epoch_at(self, channel: str, serial: int) -> int | None:
        members = members_of(self.client.zrangebyscore(self.prefix + "e:" + channel, serial, serial))
        return int(ENTRY_HEADER.unpack_from(members[0])[1]) if members else None

    # ----------------------------------------------------------------------------- LogStorage

    def channels(self) -> list[str]:
        names = cast(set[bytes], self.client.smembers(self.prefix + "channels"))
        return sorted(name.decode() for name in names)

    def max_fence(self) -> int:
        """The highest fence of any channel (0 when none), read a page of channels at a time."""
        highest, after = 0, ""
        while True:
            names = self.channels_after(after, max_fence_page_channels)
            if not names:
                return highest
            fences = cast(list[bytes | None], self.client.mget([self.prefix + "f:" + name for name in names]))
            highest = max(highest, *(int(fence or 0) for fence in fences))
            after = names[-1]

    def channels_after(self, channel: str, count: int) -> list[str]:
        """Channels written so far, in order (`<prefix>names`, all scored 0, paged by ZRANGEBYLEX),
        and those this transaction touched."""
        start = "(" + channel if channel else "-"
        stored = members_of(self.client.zrangebylex(self.prefix + "names", start, "+", 0, max(count, 0)))
        names = {name.decode() for name in stored} | {name for name in self._pending or () if name > channel}
        return sorted(names)[: max(count, 0)]

    def fence_of(self, channel: str) -> int:
        change = self._pending_of(channel)
        if change is not None and change.fence is not None:
            return change.fence
        return self._stored_state(channel).fence

    def set_fence(self, channel: str, epoch: int) -> None:
        invariant(epoch >= self.fence_of(channel), "fence never decreases")
        self._change(channel).fence = epoch

    def base(self, channel: str) -> Position:
        change = self._pending_of(channel)
        if change is not None and change.base is not None:
            return change.base
        return self._view(channel).base if self.read_only else self._stored_state(channel).base

    def drop_through(self, channel: str, base: Position) -> None:
        invariant(base_advances(base, self.base(channel)), "the base only moves forward")
        invariant(base.serial <= value_max and base.epoch <= value_max, "values within the engine's range")
        change = self._change(channel)
        change.base = base
        change.fills = {filled: entry for filled, entry in change.fills.items() if filled > base.serial}
        if change.entries:
            del change.entries[: max(base.serial - change.entries[0].serial + 1, 0)]

    def committed(self, channel: str) -> int:
        change = self._pending_of(channel)
        if change is not None and change.committed is not None:
            return change.committed
        return self._stored_state(channel).committed

    def set_committed(self, channel: str, serial: int) -> None:
        invariant(serial >= self.committed(channel), "what is known committed stays known")
        self._change(channel).committed = serial

    def last(self, channel: str) -> Position:
        change = self._pending_of(channel)
        if change is None:
            return self._stored_last(channel)
        if change.entries:
            return change.entries[-1].position
        stored = self._stored_last(channel)
        serial = stored.serial if change.truncate_after is None else min(stored.serial, change.truncate_after)
        base = self.base(channel)
        if serial <= base.serial:
            return base
        if serial == stored.serial and not change.missing(serial):
            return stored
        # The last entry that is there, at or below `serial` (entries may be missing: rule 7).
        found = max((entry.position for s, entry in change.fills.items() if s <= serial), default=base, key=serial_of)
        key = self.prefix + "e:" + channel
        ranged = self.client.zrevrangebyscore(key, serial, f"({found.serial}", 0, len(change.removes) + 1)
        for member in members_of(ranged):
            position = unpack_entry(member).position
            if not change.missing(position.serial):
                return position
        return found

    def epoch_at(self, channel: str, serial: int) -> int | None:
        if serial == 0:
            return 0
        base = self.base(channel)
        if serial == base.serial:
            return base.epoch
        last = self.last(channel)
        if serial < base.serial or serial > last.serial:
            return None
        if serial == last.serial:
            return last.epoch
        change = self._pending_of(channel)
        if change is not None:
            if change.entries and serial >= change.entries[0].serial:
                return change.entries[serial - change.entries[0].serial].epoch
            if serial in change.fills:
                return change.fills[serial].epoch
            if change.missing(serial):
                return None
        return self._stored_epoch_at(channel, serial)  # None: a missing entry (damage)

    def damaged(self, channel: str) -> int:
        change = self._pending_of(channel)
        if change is not None and change.damaged is not None:
            return change.damaged
        return self._stored_state(channel).damaged

    def set_damaged(self, channel: str, serial: int) -> None:
        self._change(channel).damaged = serial

    def remove(self, channel: str, serial: int) -> None:
        change = self._change(channel)
        change.fills.pop(serial, None)
        change.removes.add(serial)

    def fill(self, channel: str, entries: Sequence[Entry]) -> None:
        change = self._change(channel)
        for entry in entries:
            invariant(entry.serial <= value_max and entry.epoch <= value_max, "values within the engine's range")
            change.fills[entry.serial] = entry

    def first_serial_of_epoch(self, channel: str, epoch: int) -> int:
        """The base's serial when the base has `epoch`; otherwise, as epochs never decrease along a
        log, a binary search over the retained serials finds the first."""
        base = self.base(channel)
        if base.epoch == epoch and base.serial > 0:
            return base.serial
        low, high = base.serial + 1, self.last(channel).serial + 1
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
        change.fills = {filled: entry for filled, entry in change.fills.items() if filled <= serial}
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
        change = self._pending_of(channel)
        plain = change is None or not (change.truncate_after is not None or change.base is not None or change.entries)
        if change is None or (plain and not change.removes and not change.fills):
            return self._stored_read(channel, after_serial, limit)
        # Our own uncommitted writes: the stored log from the base up to where they start (without
        # what was removed, with what was filled in), then them.
        after_serial = max(after_serial, self.base(channel).serial)
        cut = change.entries[0].serial - 1 if change.entries else self.last(channel).serial
        found: list[Entry] = []
        if after_serial < cut:
            stored = self._stored_read(channel, after_serial, min(limit + len(change.removes), cut - after_serial))
            merged = {
                entry.serial: entry for entry in stored if entry.serial <= cut and not change.missing(entry.serial)
            }
            merged.update((s, e) for s, e in change.fills.items() if after_serial < s <= cut)
            found = [merged[serial] for serial in sorted(merged)][:limit]
        found += [entry for entry in change.entries if entry.serial > after_serial][: limit - len(found)]
        return found

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[int, str, int]]:
        # Entries are stored whole in one sorted-set member each: nothing cheaper to fetch.
        return message_ids(self.read(channel, after_serial, limit))

    def _stored_read(self, channel: str, after_serial: int, limit: int) -> list[Entry]:
        if limit <= 0:
            return []
        key = self.prefix + "e:" + channel
        start = f"({max(after_serial, 0)}"
        if self._snapshot is None:
            return [
                unpack_entry(member) for member in members_of(self.client.zrangebyscore(key, start, "+inf", 0, limit))
            ]
        with self.client.pipeline(transaction=True) as pipeline:
            pipeline.zrangebyscore(key, start, "+inf", start=0, num=limit)
            pipeline.zrange(key, -1, -1)
            pipeline.get(self.prefix + "b:" + channel)
            found, tail, raw_base = pipeline.execute()
        base = position_of(raw_base)
        seen = self._snapshot.get(channel)
        if seen is not None and base != seen.base and after_serial < base.serial:
            return []  # trimmed past `after_serial` since the snapshot answered its base: see rule 4
        self._snapshot[channel] = _View(base, unpack_entry(members_of(tail)[0]).position if tail else base)
        return [unpack_entry(member) for member in members_of(found)]
