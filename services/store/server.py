"""The store replica process: the replica log rules (services/core/replica_log.py) behind `StoreService`.

Rules:

1. Nothing is answered before it is durable. Every write request (Fence, Append) goes through one
   bounded queue to one writer thread, which takes everything queued (up to
   `group_commit_requests_max` requests), applies the rules to all of it in one SQLite transaction,
   commits once (one fsync for the whole group: group commit), and only then settles each caller.
2. SQLite is synchronous, so it never runs on the event loop: writes on the writer thread, reads on
   a small pool of threads, each with its own read-only connection, which WAL lets run alongside the
   writer and which only ever sees committed transactions.
3. If applying a group fails, the group is rolled back and its requests are applied again one by
   one, each in its own transaction, so one bad request fails alone. A request that still fails is
   answered with an error; what it would have written was rolled back, never half-applied.
4. A stored entry that reads back corrupt is never served: that channel's read answers no entries
   and names the corrupt serial (the other channels of the call are answered as usual). Bad input
   fails with INVALID_ARGUMENT and a reason, and changes nothing.
5. Every call carries many channels (an owner coalesces its requests per replica), within named
   bounds: fences, appends and reads per call, and the message data one Read answer may carry.
6. Retention (DESIGN §7; the rules are replica_log.py's rule 5): a background pass every `trim_every_s`
   walks every channel, a page at a time, and trims what `Retention` no longer keeps, judging ages
   by the earlier of this store's wall clock and its owners' (sent with their appends): one bad
   clock never makes entries look old, and before any owner has said the time nothing is trimmed. Each page is
   one write request through the same writer (so trimming is group-committed and interleaves with
   appends), and drops at most `trim_entries_per_request` entries, so it never holds the writer long.
   A channel whose namespace (or `default`) has options in etcd keeps their hours and entries; the
   rest keep this store's; the dedup window (`keep_recent_ms`) is this store's floor for all.
7. Damage at rest (replica_log.py rule 7) is looked for by every read, and by a background scrub that reads
   every channel's whole log at no more than `scrub_entries_per_s`, over and over. Whatever either
   finds goes through the writer (`mark_damaged`): a corrupt entry is dropped, the first missing
   serial recorded, logged and counted, and the owner learns it from the next fence or append reply.

Each Append reply carries trailing metadata `ringcast-commit-id` (the number of the group commit
that made it durable) and `ringcast-commit-requests` (how many requests that commit carried), so
a caller or a test can see group commit at work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import queue
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import propagate, trace

from services.common import convert, metrics, tracing
from services.common.clock import PeerClock
from services.common.errors import ServiceError, abort, answers_errors
from services.core.namespaces import Namespaces
from services.core.presence import is_presence_log
from services.core.replica_log import (
    ReadReply,
    ReplicaLog,
    Retention,
)
from services.internal.v1 import store_service_pb2 as store_pb2
from services.store import redis_engine
from services.store.epoch_ceiling import EpochCeiling
from services.store.redis_engine import RedisLogStorage, check_durable, open_redis
from services.store.requests import (
    ReadAsked,
    append_to_proto,
    commit_metadata,
    fence_to_proto,
    parsed_appends,
    parsed_fences,
    parsed_reads,
    read_response_bytes_max,
    stored_value_max,
    within_budget,
)
from services.store.sqlite_engine import SqliteLogStorage
from services.store.writer import Committed, GroupCommitStats, GroupCommitWriter

log = logging.getLogger("ringcast.store")


read_threads_max = 4
"""Threads (each with its own read-only connection) serving reads at once."""


trim_channels_per_request = 256
"""Channels one trimming write request looks at."""

trim_entries_per_request = 10_000
"""Entries one trimming write request drops at most (it stops early, and the next pass goes on)."""

scrub_page_entries = 256
"""Entries the scrub reads and checks at a time."""

scrub_pass_pause_s = 10.0
"""Pause between two whole passes of the scrub."""

scrub_read_cost_entries = 32
"""What one read costs the scrub's budget at least, in entries: a read of a channel with few entries
costs about as much as checking this many, so 10,000 short channels do not make the scrub read a
thousand times a second (half a core) while its entry count stays under the rate."""

database_file_name = "store.sqlite3"
lock_file_name = "store.lock"


Storage = SqliteLogStorage | RedisLogStorage


class LogReaders:
    """Read-only connections, one per read thread; a read sees one committed snapshot."""

    def __init__(
        self, open_reader: Callable[[], Storage], threads: int = read_threads_max, bugs: frozenset[str] = frozenset()
    ) -> None:
        self.bugs = bugs
        self._storages: queue.SimpleQueue[Storage] = queue.SimpleQueue()
        self._all = [open_reader() for _ in range(threads)]
        for storage in self._all:
            self._storages.put(storage)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store-read")

    async def read_many(self, reads: Sequence[ReadAsked], bytes_max: int) -> list[ReadReply]:
        """Each (channel, after serial, limit, ids only), from one snapshot; see `read_response_bytes_max`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read_many, reads, bytes_max)

    def _read_many(self, reads: Sequence[ReadAsked], bytes_max: int) -> list[ReadReply]:
        # As many connections as threads, so a thread always finds one free.
        storage = self._storages.get_nowait()
        try:
            storage.begin()  # one snapshot for all the entries and last positions
            try:
                replica, replies, budget = ReplicaLog(storage, bugs=self.bugs), [], bytes_max
                for channel, after_serial, limit, ids_only in reads:
                    if ids_only:
                        reply = within_budget(replica.read_ids(channel, after_serial, limit), budget)
                        budget -= sum(len(message_id) + 8 for message_id, _ in reply.ids)
                    else:
                        reply = replica.read(channel, after_serial, limit, bytes_max=budget)
                        budget -= sum(len(entry.message.data) for entry in reply.entries)
                    replies.append(reply)
                return replies
            finally:
                storage.commit()
        finally:
            self._storages.put(storage)

    def max_fence(self) -> int:
        """The highest fence of any channel, read on the caller's thread (it is one quick query)."""
        storage = self._storages.get_nowait()
        try:
            return storage.max_fence()
        finally:
            self._storages.put(storage)

    async def channels_after(self, channel: str, count: int) -> list[str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._channels_after, channel, count)

    def _channels_after(self, channel: str, count: int) -> list[str]:
        storage = self._storages.get_nowait()
        try:
            return storage.channels_after(channel, count)
        finally:
            self._storages.put(storage)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for storage in self._all:
            storage.close()


class StoreService:
    """One replica's StoreService over one data directory.

    It implements every RPC of the service itself, so it does not subclass the generated
    `StoreServiceServicer` (whose only use would be UNIMPLEMENTED defaults, and which mypy sees as Any).
    """

    def __init__(
        self,
        data_dir: str,
        *,
        redis_url: str = "",
        redis_prefix: str = "rc:",
        retention: Retention | None = None,
        trim_every_s: float = 10.0,
        scrub_entries_per_s: float = 2_000.0,
        bugs: frozenset[str] = frozenset(),
    ) -> None:
        """Over SQLite in `data_dir`; or, with `redis_url`, over that Redis (`data_dir` then holds only
        the lock that keeps a second store process off the same data). `retention` None: keep all.
        `scrub_entries_per_s` 0: no background scrub (reads still check what they return)."""
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        self.retention = retention
        self.namespaces = Namespaces()
        """Every namespace's options, as last read from etcd: a channel whose namespace (or `default`)
        has options is kept as they say, the rest as `retention` says (rule 6)."""
        self.trim_every_s = trim_every_s
        self.scrub_entries_per_s = scrub_entries_per_s
        self._trimmer: asyncio.Task[None] | None = None
        self._scrubber: asyncio.Task[None] | None = None
        self.owner_clock = PeerClock("owners")  # the owners' wall clocks, from their appends
        self.epochs = EpochCeiling(None)  # no etcd: epochs unchecked (main gives it one)
        self._lock = _lock_data_dir(data_dir)
        open_reader: Callable[[], Storage]
        if redis_url:
            client = open_redis(redis_url)
            check_durable(client)
            writer: Storage = RedisLogStorage(client, prefix=redis_prefix)
            self.value_max = redis_engine.value_max

            def open_reader() -> Storage:
                return RedisLogStorage(open_redis(redis_url), prefix=redis_prefix, read_only=True)

            where = f"{redis_url} (keys {redis_prefix}*)"
        else:
            path = os.path.join(data_dir, database_file_name)
            writer = SqliteLogStorage(path)
            self.value_max = stored_value_max

            def open_reader() -> Storage:
                return SqliteLogStorage(path, read_only=True)

            where = path
        self.writer = GroupCommitWriter(writer, bugs)
        self.readers = LogReaders(open_reader, bugs=bugs)
        self.writer.start()
        log.info("store data in %s", where)

    @property
    def stats(self) -> GroupCommitStats:
        return self.writer.stats

    def readiness(self) -> str:
        """ "" when the engine answers: the writer runs and its last write did not fail in the engine
        (appends, fences and trim passes all write, so a dead Redis shows within a trim pass or a call)."""
        if not self.writer.alive:
            return "the store's writer thread has stopped"
        if self.stats.engine_error:
            return f"the last write failed: {self.stats.engine_error}"
        return ""

    def max_fence(self) -> int:
        """The highest fence this replica holds for any channel (what placement must stay above)."""
        return self.readers.max_fence()

    def set_namespaces(self, current: Namespaces) -> None:
        self.namespaces = current

    def start_trimming(self) -> None:
        """Begin the background retention passes (rule 6); needs a running event loop."""
        if self.retention is not None and self._trimmer is None:
            self._trimmer = asyncio.create_task(self._trim_forever(), name="store-trim")

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self.trim_every_s)
            try:
                await self.trim_pass()
            except ServiceError as error:  # the writer is busy or failing: the next pass tries again
                log.warning("retention pass stopped: %s", error)
            except Exception:  # a bug; keep the store serving, and say so loudly
                log.exception("retention pass failed")

    def trim_now_ms(self) -> int | None:
        """The wall-clock time retention judges ages by: the earlier of ours and our owners' (the
        median of the clocks they send with appends), so that one bad clock — ours, or an owner's —
        never makes entries look old. None until an owner has said: then nothing is trimmed."""
        owners = self.owner_clock.now_ms()
        return None if owners is None else min(int(time.time() * 1000), owners)

    async def trim_pass(self) -> int:
        """Trim every channel as far as retention allows; returns how many entries were dropped."""
        assert self.retention is not None
        self.owner_clock.check()
        now_ms = self.trim_now_ms()
        if now_ms is None:
            metrics.store_trim_passes.inc()
            return 0  # no owner has told us the time yet: a bad clock of ours must not decide alone
        after: str | None = ""
        dropped: dict[str, int] = {}
        namespaces = self.namespaces  # one set of options for the whole pass
        retention_for = functools.partial(_retention_for, self.retention, namespaces)
        while after is not None:
            trim_page = functools.partial(
                _trim_page, retention_for=retention_for, label=namespaces.label, after=after, now_ms=now_ms
            )
            committed = await self.writer.submit(trim_page)
            after, counts = committed.value
            for label, count in counts.items():
                dropped[label] = dropped.get(label, 0) + count
        metrics.store_trim_passes.inc()
        for label, count in dropped.items():
            metrics.store_trimmed_entries.labels(label).inc(count)
        total = sum(dropped.values())
        if total:
            log.info("retention dropped %d entries", total)
        return total

    def start_scrubbing(self) -> None:
        """Begin the background scrub (rule 7); needs a running event loop."""
        if self.scrub_entries_per_s > 0 and self._scrubber is None:
            self._scrubber = asyncio.create_task(self._scrub_forever(), name="store-scrub")

    async def _scrub_forever(self) -> None:
        while True:
            try:
                await self.scrub_pass()
            except ServiceError as error:
                log.warning("scrub pass stopped: %s", error)
            except Exception:  # a bug; keep the store serving, and say so loudly
                log.exception("scrub pass failed")
            await asyncio.sleep(scrub_pass_pause_s)

    async def scrub_pass(self, entries_per_s: float | None = None) -> int:
        """Read every entry of every channel once and check it (rule 7), at no more than
        `entries_per_s` (default: the store's setting); returns how many channels were found damaged."""
        rate = entries_per_s or self.scrub_entries_per_s or float("inf")
        after, damaged = "", 0
        while True:
            channels = await self.readers.channels_after(after, trim_channels_per_request)
            for channel in channels:
                serial = 0
                while True:
                    (reply,) = await self.readers.read_many(
                        [(channel, serial, scrub_page_entries, False)], read_response_bytes_max
                    )
                    metrics.store_scrubbed_entries.inc(len(reply.entries))
                    await asyncio.sleep(max(len(reply.entries), scrub_read_cost_entries) / rate)  # every read
                    if reply.damaged:
                        log.error("scrub: channel %r is damaged at serial %d", channel, reply.damaged)
                        self.mark_damaged(channel, reply.damaged)
                        damaged += 1
                        break
                    if not reply.entries or reply.entries[-1].serial >= reply.last.serial:
                        break
                    serial = reply.entries[-1].serial
            if len(channels) < trim_channels_per_request:
                return damaged
            after = channels[-1]

    async def close(self) -> None:
        for task in (self._trimmer, self._scrubber):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.writer.close()
        self.writer.storage.close()
        self.readers.close()
        os.close(self._lock)
        log.info("store closed: %s", self.stats.summary())

    # ----------------------------------------------------------------------------- RPCs

    @answers_errors
    async def Fence(
        self, request: store_pb2.FenceRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.FenceResponse:
        fences = parsed_fences(request.fences, self.value_max)
        if not fences:
            return store_pb2.FenceResponse()
        await self.epochs.check("fence", (epoch for _, epoch in fences))
        committed = await self.writer.submit(
            lambda replica: [replica.fence(channel, epoch) for channel, epoch in fences]
        )
        context.set_trailing_metadata(commit_metadata(committed))
        return store_pb2.FenceResponse(results=[fence_to_proto(reply) for reply in committed.value])

    async def _append(
        self, request: store_pb2.AppendRequest, peer: str
    ) -> tuple[store_pb2.AppendResponse, Committed[Any] | None]:
        """`peer`: the calling connection (an owner), whose clock the request carries."""
        received_ns = time.time_ns()
        appends = parsed_appends(request.appends, self.value_max)
        if not appends:
            return store_pb2.AppendResponse(), None
        await self.epochs.check("append", (append[1] for append in appends))
        self.owner_clock.observe(peer, max(append.owner_now_ms for append in request.appends))
        committed = await self.writer.submit(
            lambda replica: [
                replica.append(channel, epoch, prev, entries, commit=commit, from_base=from_base)
                for channel, epoch, prev, entries, commit, from_base in appends
            ]
        )
        if tracing.enabled():
            _trace_appends(request, committed, received_ns)
        now_ms = int(time.time() * 1000)
        response = store_pb2.AppendResponse(
            results=[append_to_proto(reply, now_ms) for reply in committed.value],
            commit=store_pb2.StoreCommit(
                id=committed.commit_id, requests=committed.commit_requests, ms=committed.commit_ms
            ),
        )
        return response, committed

    @answers_errors
    async def Append(
        self, request: store_pb2.AppendRequest, context: grpc.aio.ServicerContext
    ) -> store_pb2.AppendResponse:
        response, committed = await self._append(request, context.peer())
        if committed is not None:
            context.set_trailing_metadata(commit_metadata(committed))
        return response

    async def AppendStream(  # noqa: N802
        self, request_iterator: AsyncIterator[store_pb2.AppendRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[store_pb2.AppendResponse]:
        peer = context.peer()
        async for request in request_iterator:
            try:
                response, _ = await self._append(request, peer)
            except ServiceError as error:
                await abort(context, error)
                return
            yield response

    @answers_errors
    async def Read(self, request: store_pb2.ReadRequest, context: grpc.aio.ServicerContext) -> store_pb2.ReadResponse:
        reads = parsed_reads(request.reads, self.value_max)
        replies = await self.readers.read_many(reads, read_response_bytes_max)
        results = []
        for (channel, _, _, ids_only), reply in zip(reads, replies, strict=True):
            last, base = convert.position_to_proto(reply.last), convert.position_to_proto(reply.base)
            if reply.damaged:
                self.mark_damaged(channel, reply.damaged)
            if ids_only:
                results.append(
                    store_pb2.ChannelReadResult(
                        last=last,
                        ids=[message_id for message_id, _ in reply.ids],
                        timestamps_ms=[timestamp_ms for _, timestamp_ms in reply.ids],
                        base=base,
                        damaged_serial=reply.damaged,
                    )
                )
            else:
                results.append(
                    store_pb2.ChannelReadResult(
                        entries=convert.entries_to_proto(reply.entries),
                        last=last,
                        base=base,
                        damaged_serial=reply.damaged,
                    )
                )
        return store_pb2.ReadResponse(results=results)

    def mark_damaged(self, channel: str, serial: int) -> None:
        """A read found `channel` damaged at `serial`: record it through the writer (replica_log.py rule 7).
        Queued before the read is answered, so it is in place before any append the answer leads to."""
        with contextlib.suppress(ServiceError):  # the writer is full: the next read or scrub finds it again
            self.writer.enqueue(functools.partial(_mark_damaged, channel=channel, serial=serial))


def _trace_appends(request: store_pb2.AppendRequest, committed: Committed[Any], received_ns: int) -> None:
    """The replica's span of each channel append that carried a trace context (the owner's span
    for that replica is its parent): from receipt to the answer, with two children, `queue` (waiting
    for the writer and applying the rules, alongside the other requests of the group) and `commit`
    (the group's commit, its sync to disk included)."""
    answered_ns = time.time_ns()
    commit_ns = max(received_ns, answered_ns - int(committed.commit_ms * 1_000_000))
    for append, reply in zip(request.appends, committed.value, strict=True):
        if not append.trace_context:
            continue
        span = tracing.tracer.start_span(
            "StoreService/Append",
            context=propagate.extract(dict(append.trace_context)),
            kind=trace.SpanKind.SERVER,
            start_time=received_ns,
            attributes={
                "ringcast.channel": append.channel,
                "ringcast.epoch": append.epoch,
                "ringcast.entries": len(append.entries),
                "ringcast.append_status": reply.status.name,
                "ringcast.store.commit_id": committed.commit_id,
                "ringcast.store.commit_requests": committed.commit_requests,
            },
        )
        inside = trace.set_span_in_context(span)
        tracing.tracer.start_span("queue", context=inside, start_time=received_ns).end(end_time=commit_ns)
        tracing.tracer.start_span(
            "commit", context=inside, start_time=commit_ns, attributes={"ringcast.store.commit_ms": committed.commit_ms}
        ).end(end_time=answered_ns)
        span.end(end_time=answered_ns)


def _mark_damaged(replica: ReplicaLog, *, channel: str, serial: int) -> str:
    return replica.mark_damaged(channel, serial)


_KEEP_FOREVER_MS = 1 << 62
_KEEP_FOREVER_ENTRIES = 1 << 62


def _retention_for(retention: Retention, namespaces: Namespaces, channel: str) -> Retention:
    if is_presence_log(channel):
        # The member set is the fold of the whole presence log (services/core/presence.py, rule 3):
        # nothing of it may go until owners write checkpoints of the set to fold from.
        return dataclasses.replace(retention, age_ms=_KEEP_FOREVER_MS, entries_max=_KEEP_FOREVER_ENTRIES)
    own = namespaces.own(channel)
    if own is None:
        return retention
    return dataclasses.replace(
        retention, age_ms=int(own.retention_hours * 3_600_000), entries_max=own.retention_entries
    )


def _trim_page(
    replica: ReplicaLog,
    *,
    retention_for: Callable[[str], Retention],
    label: Callable[[str], str],
    after: str,
    now_ms: int,
) -> tuple[str | None, dict[str, int]]:
    """Trim the page of channels after `after`, within one request's budget, judging ages as of
    wall-clock `now_ms`, each channel as `retention_for` it says. Returns the channel to go on after
    (None when every channel was seen) and how many entries were dropped, by namespace `label`."""
    channels = replica.storage.channels_after(after, trim_channels_per_request)
    wall_now_ms, dropped, resume = now_ms, 0, after
    by_label: dict[str, int] = {}
    for channel in channels:
        retention = retention_for(channel)
        while True:
            budget = trim_entries_per_request - dropped
            if budget <= 0:
                return resume, by_label  # this channel again, in the next request
            scan = dataclasses.replace(retention, scan_max=min(retention.scan_max, budget))
            count = replica.trim(channel, wall_now_ms, scan)
            dropped += count
            if count:
                by_label[label(channel)] = by_label.get(label(channel), 0) + count
            if count < scan.scan_max:
                break
        resume = channel
    return (resume if len(channels) == trim_channels_per_request else None), by_label


# --------------------------------------------------------------------------------- input checks


# --------------------------------------------------------------------------------- replies


def _lock_data_dir(data_dir: str) -> int:
    """Hold an exclusive lock on the data directory: two replicas must never share one log.

    The kernel drops the lock when the process dies, however it dies, so a restart after SIGKILL
    finds it free.
    """
    descriptor = os.open(os.path.join(data_dir, lock_file_name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise SystemExit(f"data directory {data_dir} is in use by another store process") from None
    return descriptor
