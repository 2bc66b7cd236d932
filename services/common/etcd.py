"""ringcast's only door to etcd: membership records, their leases, and watching them change.

This is the one module that imports the etcd client library (etcd3aio today), so the library can be
swapped without touching the services. Callers see `Etcd`, `MemberRecord`, `Registration` (registration.py) and
`EtcdUnavailable`, never the library's types.

Rules:

1. A member is one key, `{MEMBERS_PREFIX}{kind}/{id}`, whose value is JSON `{"address", "zone",
   "floor"}`, attached to a lease owned by the member's own process. When the process stops
   renewing, etcd deletes the key and every watcher sees the member leave. `floor` is the newest
   ring version the member knows of (a store: the one its highest fence was made under), written
   with each registration: what lets placement keep versions growing when etcd loses its data.
2. Every membership change has an etcd revision. `members()` returns the revision it read at and
   `watch_members()` yields the revision of every change, so the member set at revision R is the same
   for everyone who asks. Every write to a member key is a change, even one that leaves the member
   set as it was: a member that re-registers gets a new revision, and a channel node serves only
   under rings at least that new (services/core/node.py). Beside the members, under the same
   prefix, `VERSION_OFFSET_KEY` holds the offset placement adds to revisions to make ring versions;
   it is read and watched with them, so its value at revision R is known to all who read R.
5. etcd can lose its data (a wiped data directory, a replacement cluster): its revisions then start
   again below what was seen. A watch or read that finds etcd behind the revision it had reached says
   so in the log and starts again from a fresh read, marked `reset`; so does a watch that resumes
   after a disconnect and finds etcd's keys at its revision differ from those it followed (the new
   history already went past that revision); a registration that gets a
   revision below its last one registers on and says so. Nothing waits for etcd to "catch up".
3. Lease deadlines are measured by the member's own monotonic clock from the moment a grant or
   keep-alive was *sent*, plus the TTL. etcd starts the TTL when it receives the request, which is
   later, so our deadline is never later than etcd's expiry (clock rate drift aside).
4. Every call to etcd has a timeout; every retry loop doubles its delay up to a bound.
6. Nothing needs etcd to be up first. Connecting is lazy, and a host name that does not resolve yet
   (a compose stack whose etcd container has not started) is waited for, saying so in the log every
   `etcd_wait_log_interval_s`, instead of failing the process.

What etcd3aio 0.3.0 does that this module works around:
- Its watch iterator reconnects by itself and resumes from the header revision of the last response
  it saw, including a `created` response, whose header revision is the *current* revision, not the
  last event delivered. A reconnect right after creating a watch from an old revision would then skip
  events. So on any reconnect (a second `created` response) this module restarts the watch from the
  last revision it actually delivered.
- After a compaction, etcd cancels the watch but the library keeps the stream open forever; this
  module notices the cancel and re-reads the member set.
- Its keep-alive helper renews every max(1, TTL // 3) whole seconds, which for a 1 s lease is once per
  TTL; this module sends its own keep-alives every TTL / 4.
- It dials an `ipv4:` target, so endpoints must be IPv4 addresses; `Etcd.connect` resolves host
  names once at connect time (waiting until they resolve).
- Its gRPC channel reconnects with gRPC's default backoff (up to 120 s between attempts after a long
  outage); this module caps it at `etcd_reconnect_backoff_ms_max`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import etcd3aio
import grpc

from services.common import tls
from services.core.invariants import invariant

log = logging.getLogger("ringcast.etcd")

RINGCAST_PREFIX = "/ringcast/"
MEMBERS_PREFIX = "/ringcast/members/"
VERSION_OFFSET_KEY = "/ringcast/version-offset"
"""Decimal: what placement adds to an etcd revision to make the ring version (services/placement)."""

etcd_call_timeout_s = 2.0
"""Deadline of one unary call to etcd (read, put, grant, revoke)."""

etcd_retry_delay_s_min = 0.05
etcd_retry_delay_s_max = 1.0

etcd_wait_log_interval_s = 10.0
"""While waiting for etcd's name to resolve, say so at most this often."""
"""Retry loops start at the minimum delay and double it up to the maximum."""

etcd_watch_reconnect_delay_s_max = 0.5
"""Longest wait between etcd3aio's own attempts to re-open a broken watch stream."""

etcd_reconnect_backoff_ms_min = 100
etcd_reconnect_backoff_ms_max = 1_000
"""Bounds of the gRPC channel's own reconnect backoff while etcd is unreachable."""

members_count_max = 10_000
"""The most member keys one read returns; a larger membership is an error, never a silent truncation."""

keep_alive_retry_delay_s_max = 0.1
"""After a failed keep-alive, the next attempt comes this soon (or sooner: TTL / 4)."""

T = TypeVar("T")


class EtcdUnavailable(Exception):
    """etcd did not answer in time, refused the call, or could not be reached."""


class _RevisionUnavailable(EtcdUnavailable):
    """A read or watch at a revision etcd no longer has (compacted) or does not have yet."""


class _EtcdWentBack(EtcdUnavailable):
    """etcd is at a revision below one already seen from it: it lost its data or was replaced."""


@dataclass(frozen=True)
class MemberRecord:
    """A registered process: what kind it is, its unique id, where to reach it, its zone."""

    kind: str
    id: str
    address: str
    zone: str = ""
    floor: int = field(default=0, compare=False)
    """The newest ring version this member knows of when it registered (rule 1)."""

    @property
    def key(self) -> str:
        return f"{MEMBERS_PREFIX}{self.kind}/{self.id}"

    def value(self) -> bytes:
        fields: dict[str, str | int] = {"address": self.address, "zone": self.zone}
        if self.floor:
            fields["floor"] = self.floor
        return json.dumps(fields, sort_keys=True).encode()

    def validate(self) -> None:
        for name, text in (("kind", self.kind), ("id", self.id)):
            if not text or "/" in text:
                raise ValueError(f"member {name} must be non-empty and contain no '/', got {text!r}")
        if not self.address:
            raise ValueError(f"member {self.kind}/{self.id} needs an address")


def _record_from_entry(key: bytes, value: bytes) -> MemberRecord | None:
    """The member a key-value pair describes, or None (with a warning) when it is malformed."""
    try:
        text = key.decode()
        invariant(text.startswith(MEMBERS_PREFIX), f"key outside the members prefix: {text!r}")
        kind, _, member_id = text[len(MEMBERS_PREFIX) :].partition("/")
        fields = json.loads(value)
        floor = int(fields.get("floor", 0))
        record = MemberRecord(kind, member_id, str(fields["address"]), str(fields.get("zone", "")), max(floor, 0))
        record.validate()
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring malformed member key %r: %s", key, error)
        return None
    return record


def _sorted_members(records: Iterable[MemberRecord]) -> list[MemberRecord]:
    return sorted(records, key=lambda record: (record.kind, record.id))


def _offset_from(value: bytes) -> int | None:
    """The version offset a key holds; None (with a warning) when it is not a number."""
    try:
        offset = int(value.decode())
    except (UnicodeDecodeError, ValueError):
        log.warning("ignoring a malformed version offset %r", value)
        return None
    return offset if offset >= 0 else None


@dataclass(frozen=True)
class Membership:
    """What placement follows: the members and the version offset, as of one etcd revision."""

    revision: int
    members: list[MemberRecord]
    version_offset: int | None
    """None when etcd holds no offset (a new etcd, or one that lost its data)."""
    reset: bool = False
    """etcd went back to a revision below one seen before: this is a fresh read of a new history."""


@dataclass(slots=True)
class _State:
    """Member keys and the offset, kept while following etcd's events."""

    records: dict[bytes, MemberRecord]
    offset: int | None

    def apply(self, key: bytes, value: bytes | None) -> None:
        if key == VERSION_OFFSET_KEY.encode():
            self.offset = None if value is None else _offset_from(value)
            return
        if not key.startswith(MEMBERS_PREFIX.encode()):
            return
        record = _record_from_entry(key, value) if value is not None else None
        if record is None:
            self.records.pop(key, None)
        else:
            self.records[key] = record

    def at(self, revision: int, reset: bool = False) -> Membership:
        return Membership(revision, _sorted_members(self.records.values()), self.offset, reset)


def _parse_endpoints(endpoints: str) -> list[tuple[str, int]]:
    parsed = []
    for item in endpoints.split(","):
        host, separator, port = item.strip().rpartition(":")
        if not separator or not host or not port.isdigit():
            raise ValueError(f"etcd endpoint must be host:port, got {item!r}")
        parsed.append((host, int(port)))
    if not parsed:
        raise ValueError("no etcd endpoints given")
    return parsed


async def _resolve_ipv4(host: str, port: int) -> str:
    """`ip:port`: etcd3aio dials an `ipv4:` target, which takes addresses, not names.

    A name that does not resolve yet is waited for (rule 6): in a compose stack etcd's name exists
    only once its container runs, and every service may start before it.
    """
    with contextlib.suppress(OSError):
        socket.inet_aton(host)
        return f"{host}:{port}"
    loop = asyncio.get_running_loop()
    delay_s, waited_s, said_s = etcd_retry_delay_s_min, 0.0, -etcd_wait_log_interval_s
    while True:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM), etcd_call_timeout_s
            )
            if infos:
                if waited_s:
                    log.info("etcd host %r resolves to %s after %.1f s", host, infos[0][4][0], waited_s)
                return f"{infos[0][4][0]}:{port}"
            problem = "no IPv4 address"
        except (OSError, TimeoutError) as error:
            problem = f"{type(error).__name__}: {error}"
        if waited_s - said_s >= etcd_wait_log_interval_s:
            said_s = waited_s
            log.warning("etcd host %r does not resolve yet (%s); waiting for it", host, problem)
        await asyncio.sleep(delay_s)
        waited_s += delay_s
        delay_s = min(delay_s * 2, etcd_retry_delay_s_max)


async def poll(read: Callable[[], Awaitable[T]], on_change: Callable[[T], None], what: str, interval_s: float) -> None:
    """Call `read` every `interval_s` and hand each value unlike the last to `on_change`, for ever.
    etcd being down (EtcdUnavailable) keeps the last value, and says so once per outage."""
    last: T | None = None
    failing = False
    while True:
        try:
            current = await read()
        except EtcdUnavailable as error:
            if not failing:
                log.warning("cannot read %s from etcd (%s); keeping the last ones read", what, error)
            failing = True
        else:
            if failing:
                log.info("reading %s from etcd again", what)
            failing = False
            if current != last:
                on_change(current)
                last = current
        await asyncio.sleep(interval_s)


class Etcd:
    """A connection to an etcd cluster. Connecting is lazy: calls fail with EtcdUnavailable until it answers."""

    def __init__(self, client: etcd3aio.Etcd3Client, endpoints: list[str]) -> None:
        self._client = client
        self._endpoints = endpoints
        self._closed = False

    @classmethod
    async def connect(cls, endpoints: str) -> Etcd:
        """A client for `host:port[,host:port...]`; it does not wait for etcd to be up."""
        parsed = _parse_endpoints(endpoints)
        addresses = [await _resolve_ipv4(host, port) for host, port in parsed]
        identity = tls.identity()
        secure: dict[str, Any] = {}
        if identity is not None:
            # mTLS with this process's certificate; the server's is checked against the name dialled
            # (etcd3aio dials resolved addresses, so the host name is passed on for verification).
            secure = dict(
                ca_cert=identity.ca, cert_key=identity.key, cert_chain=identity.cert, tls_server_name=parsed[0][0]
            )
        client = etcd3aio.Etcd3Client(
            addresses,
            **secure,
            # One attempt per call: the retry loops here decide when to try again.
            rpc_max_attempts=1,
            watch_reconnect_backoff_seconds=etcd_retry_delay_s_min,
            watch_max_reconnect_backoff_seconds=etcd_watch_reconnect_delay_s_max,
        )
        # etcd3aio offers no way to pass channel options; its connection manager keeps them in a list
        # that `connect` reads. Without this, gRPC's default reconnect backoff grows to 120 s.
        options = getattr(getattr(client, "_manager", None), "grpc_options", None)
        if isinstance(options, list):
            options.extend(
                [
                    ("grpc.initial_reconnect_backoff_ms", etcd_reconnect_backoff_ms_min),
                    ("grpc.min_reconnect_backoff_ms", etcd_reconnect_backoff_ms_min),
                    ("grpc.max_reconnect_backoff_ms", etcd_reconnect_backoff_ms_max),
                ]
            )
        await client.connect()
        return cls(client, addresses)

    async def close(self) -> None:
        self._closed = True
        await self._client.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ----------------------------------------------------------------------------- calls

    def _services(self) -> tuple[Any, Any, Any]:
        client = self._client
        if self._closed or client.kv is None or client.lease is None or client.watch is None:
            raise EtcdUnavailable("etcd client is closed")
        return client.kv, client.lease, client.watch

    @staticmethod
    async def _call(operation: str, call: Awaitable[T]) -> T:
        """Await one etcd call, turning every way it can fail into EtcdUnavailable."""
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            message = f"{operation}: {error.code().name} {error.details()}"
            if error.code() == grpc.StatusCode.OUT_OF_RANGE:
                raise _RevisionUnavailable(message) from error
            raise EtcdUnavailable(message) from error
        except (etcd3aio.EtcdError, TimeoutError, OSError) as error:
            raise EtcdUnavailable(f"{operation}: {type(error).__name__} {error}") from error

    async def _read_state(self, revision: int = 0) -> tuple[int, _State]:
        """The member keys and the version offset at `revision` (0: now), and the revision read at."""
        kv, _, _ = self._services()
        response = await self._call(
            "read members",
            kv.get(
                RINGCAST_PREFIX,
                etcd3aio.prefix_range_end(RINGCAST_PREFIX),
                revision=revision,
                limit=members_count_max + 1,
                timeout=etcd_call_timeout_s,
            ),
        )
        if response.more:
            raise EtcdUnavailable(f"more than {members_count_max} member keys: refusing a truncated member set")
        state = _State({}, None)
        for entry in response.kvs:
            state.apply(bytes(entry.key), bytes(entry.value))
        # A read at an old revision still answers with the current revision in its header.
        return (revision or int(response.header.revision)), state

    async def members(self) -> Membership:
        """Every member (sorted by kind, id) and the version offset, at the revision read at."""
        revision, state = await self._read_state()
        return state.at(revision)

    async def ring_version_ceiling(self) -> int:
        """The highest ring version there can be now: etcd's revision plus the version offset (ring
        versions are the revisions of membership changes plus the offset)."""
        kv, _, _ = self._services()
        response = await self._call("read version offset", kv.get(VERSION_OFFSET_KEY, timeout=etcd_call_timeout_s))
        offset = _offset_from(bytes(response.kvs[0].value)) if response.kvs else None
        return int(response.header.revision) + (offset or 0)

    async def create_version_offset(self, offset: int) -> int:
        """Write the version offset if etcd holds none; the offset etcd holds afterwards."""
        kv, _, _ = self._services()
        key = VERSION_OFFSET_KEY
        response = await self._call(
            "create version offset",
            kv.txn(
                [kv.txn_compare_create_revision(key, 0)],
                [kv.txn_op_put(key, str(offset))],
                [kv.txn_op_get(key)],
                timeout=etcd_call_timeout_s,
            ),
        )
        if response.succeeded:
            return offset
        held = _offset_from(bytes(response.responses[0].response_range.kvs[0].value))
        return offset if held is None else held

    async def raise_version_offset(self, expected: int, offset: int) -> bool:
        """Replace the version offset `expected` with the larger `offset`; False if it was no longer
        `expected` (someone else raised it first)."""
        invariant(offset > expected, "the version offset only grows")
        kv, _, _ = self._services()
        key = VERSION_OFFSET_KEY
        response = await self._call(
            "raise version offset",
            kv.txn(
                [kv.txn_compare_value(key, str(expected))],
                [kv.txn_op_put(key, str(offset))],
                timeout=etcd_call_timeout_s,
            ),
        )
        return bool(response.succeeded)

    async def read_prefix(self, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        """Every key under `prefix` with its value (at most `limit`; more is an error, not a cut)."""
        kv, _, _ = self._services()
        response = await self._call(
            "read " + prefix,
            kv.get(prefix, etcd3aio.prefix_range_end(prefix), limit=limit + 1, timeout=etcd_call_timeout_s),
        )
        if response.more or len(response.kvs) > limit:
            raise EtcdUnavailable(f"more than {limit} keys under {prefix}")
        return [(bytes(entry.key).decode(errors="replace"), bytes(entry.value)) for entry in response.kvs]

    async def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (lease id, TTL etcd granted in seconds, which may be longer than asked)."""
        _, lease, _ = self._services()
        response = await self._call("grant lease", lease.grant(ttl_s, timeout=etcd_call_timeout_s))
        return int(response.ID), int(response.TTL)

    async def put(self, key: str, value: bytes, lease_id: int) -> int:
        """Write `key` attached to `lease_id`; the revision of the write."""
        kv, _, _ = self._services()
        response = await self._call("put", kv.put(key, value, lease=lease_id, timeout=etcd_call_timeout_s))
        return int(response.header.revision)

    async def delete(self, key: str) -> bool:
        """Delete `key`; whether it was there."""
        kv, _, _ = self._services()
        response = await self._call("delete", kv.delete(key, timeout=etcd_call_timeout_s))
        return int(response.deleted) > 0

    async def keep_alive(self, lease_id: int, timeout_s: float) -> int:
        """Renew `lease_id` once: its TTL in seconds, or 0 when etcd no longer has the lease."""
        _, lease, _ = self._services()
        # etcd3aio's raw keep-alive stream sends one request; read its one answer and hang up.
        stream = lease.keep_alive(lease_id)
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._call("keep-alive", stream.read())
        except TimeoutError as error:
            raise EtcdUnavailable(f"keep-alive: no answer within {timeout_s:.3f} s") from error
        finally:
            stream.cancel()
        if response is grpc.aio.EOF:
            raise EtcdUnavailable("keep-alive: stream ended without an answer")
        return max(0, int(response.TTL))

    async def revoke(self, lease_id: int) -> None:
        """Revoke `lease_id`, deleting every key attached to it at once (done, too, if it is gone)."""
        _, lease, _ = self._services()
        try:
            await self._call("revoke lease", lease.revoke(lease_id, timeout=etcd_call_timeout_s))
        except EtcdUnavailable as error:
            cause = error.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.NOT_FOUND:
                return  # Already expired or revoked: the keys are gone, which is what revoking is for.
            raise

    async def revoke_member(self, record: MemberRecord) -> bool:
        """Revoke the lease `record`'s key is attached to, if the key still holds `record`: the
        member leaves the member set at once. False when the key is gone or describes another
        registration (the process came back, maybe elsewhere)."""
        kv, _, _ = self._services()
        response = await self._call("read member", kv.get(record.key, timeout=etcd_call_timeout_s))
        if not response.kvs:
            return False
        entry = response.kvs[0]
        if _record_from_entry(entry.key, entry.value) != record or not entry.lease:
            return False
        await self.revoke(int(entry.lease))
        return True

    # ----------------------------------------------------------------------------- watching

    async def watch_members(self, after_revision: int) -> AsyncGenerator[Membership, None]:
        """The members and the version offset at each revision after `after_revision` that wrote
        either.

        Runs until the consumer stops iterating or the client is closed. Survives etcd restarts and
        disconnects by watching again from the last revision yielded. When etcd has compacted that
        history, it reads afresh and yields what it read (once, at the read's revision, even if it
        looks unchanged), then watches on from there. When etcd is found behind the last revision
        yielded (it lost its data, rule 5), it reads afresh and yields that with `reset` set, at the
        lower revision, then watches on from there.
        """
        revision = after_revision
        state: _State | None = None
        went_back = False
        delay_s = etcd_retry_delay_s_min
        while not self._closed:
            try:
                if state is None:
                    read_revision, state = await self._state_at(revision)
                    went_back = went_back or read_revision < revision
                    if read_revision > revision or went_back:
                        revision = read_revision
                        yield state.at(revision, reset=went_back)
                        went_back = False
                if not await self._same_history(revision, state):
                    # etcd lost its data and its new history already went past our revision (a
                    # second wipe soon after the first, or while the consumer held our last yield):
                    # revisions alone cannot tell, its keys can.
                    raise _EtcdWentBack(f"its keys at revision {revision} are not the ones followed")
                async with contextlib.aclosing(self._watch_from(revision, state)) as changes:
                    async for change in changes:
                        invariant(change.revision > revision, "watched revisions only grow")
                        revision = change.revision
                        delay_s = etcd_retry_delay_s_min
                        yield change
            except _EtcdWentBack as error:
                log.warning("member watch at revision %d: %s; reading everything again", revision, error)
                state, went_back = None, True
            except _RevisionUnavailable as error:
                log.warning("member watch at revision %d: %s; reading the member set again", revision, error)
                state = None
            except EtcdUnavailable as error:
                if self._closed:
                    return
                log.warning("member watch at revision %d: %s; retrying in %.2f s", revision, error, delay_s)
            if self._closed:
                return
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, etcd_retry_delay_s_max)

    async def _same_history(self, revision: int, state: _State) -> bool:
        """Whether etcd's keys at `revision` are `state`, the ones followed up to it (rule 5). A
        revision etcd no longer has, or has not reached, counts as the same: the watch from it finds
        out (compacted, or behind)."""
        try:
            _, then = await self._read_state(revision)
        except _RevisionUnavailable:
            return True
        return then.records == state.records and then.offset == state.offset

    async def _state_at(self, revision: int) -> tuple[int, _State]:
        """The keys at `revision` (so events after it can be applied); if etcd no longer has that
        revision, or never had it, the keys now and the current revision — which is below `revision`
        when etcd lost its data (rule 5)."""
        if revision > 0:
            with contextlib.suppress(_RevisionUnavailable):
                return await self._read_state(revision)
        current_revision, state = await self._read_state()
        if current_revision < revision:
            log.warning(
                "etcd is at revision %d, behind the %d seen before: it lost its data or was replaced",
                current_revision,
                revision,
            )
        return current_revision, state

    async def _watch_from(self, revision: int, state: _State) -> AsyncGenerator[Membership, None]:
        """Apply the events after `revision` to `state`, yielding it after each revision.

        Returns when the watch has to start over from the last revision yielded (the library
        reconnected by itself, or etcd cancelled the watch); raises EtcdUnavailable on errors, and
        _EtcdWentBack when etcd answers from a revision below `revision`.
        """
        _, _, watch = self._services()
        stream = watch.watch(RINGCAST_PREFIX, etcd3aio.prefix_range_end(RINGCAST_PREFIX), start_revision=revision + 1)
        created_count = 0
        try:
            while True:
                response = await self._call("watch", anext(stream))
                if response.compact_revision > 0:
                    raise _RevisionUnavailable(f"compacted at revision {response.compact_revision}")
                if response.canceled:
                    log.warning("etcd cancelled the member watch: %s", response.cancel_reason)
                    return
                if response.created:
                    if int(response.header.revision) < revision:
                        # A watch from a future revision would wait, silently, for etcd to get there.
                        raise _EtcdWentBack(f"etcd is at revision {response.header.revision}, behind {revision}")
                    created_count += 1
                    if created_count > 1:
                        log.info("etcd watch reconnected; watching again from revision %d", revision)
                        return
                    continue
                for change_revision, events in _group_by_revision(response.events):
                    for event in events:
                        # mvccpb.Event.PUT is 0; DELETE is 1
                        state.apply(bytes(event.kv.key), bytes(event.kv.value) if event.type == 0 else None)
                    revision = change_revision
                    yield state.at(change_revision)
        except StopAsyncIteration:
            return
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()


def _group_by_revision(events: Iterable[Any]) -> Iterable[tuple[int, list[Any]]]:
    """Consecutive events of one revision (one etcd transaction) together, in order."""
    group: list[Any] = []
    group_revision = 0
    for event in events:
        event_revision = int(event.kv.mod_revision)
        if group and event_revision != group_revision:
            yield group_revision, group
            group = []
        invariant(event_revision >= group_revision, "events within a watch response are in revision order")
        group_revision = event_revision
        group.append(event)
    if group:
        yield group_revision, group


__all__ = [
    "MEMBERS_PREFIX",
    "VERSION_OFFSET_KEY",
    "Etcd",
    "EtcdUnavailable",
    "MemberRecord",
    "Membership",
]
