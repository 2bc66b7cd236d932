"""The store's writer: one thread per replica applies queued writes in groups, one commit (and one
fsync) per group, and hands each caller its outcome on its own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from ringcast.reasons import Reason
from services.common import metrics
from services.common.errors import ServiceError, unavailable
from services.core.invariants import InvariantViolation, invariant
from services.core.replica_log import (
    ReplicaLog,
)
from services.store.redis_engine import RedisLogStorage
from services.store.sqlite_engine import SqliteLogStorage

log = logging.getLogger("ringcast.store")

group_commit_requests_max = 1_024
"""Write requests (Fence or Append calls) one transaction, one fsync, makes durable at most."""


write_queue_requests_max = 16_384
"""Write requests waiting for the writer; beyond this a call is refused as retryable (UNAVAILABLE)."""


Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Committed(Generic[Result]):
    """What a write request produced, and the group commit that made it durable."""

    value: Result
    commit_id: int
    commit_requests: int
    commit_ms: float = 0.0


@dataclass(slots=True)
class GroupCommitStats:
    """Counted by the writer thread; read by anyone (plain integers, no torn reads in CPython)."""

    commits: int = 0
    requests: int = 0
    largest_commit_requests: int = 0
    failed_requests: int = 0
    engine_error: str = ""
    """Why the last write failed, when the engine failed it (not a broken rule); "" once one commits."""

    def record(self, requests: int) -> int:
        """Count one successful commit of `requests` requests; answer its commit id."""
        self.engine_error = ""
        self.commits += 1
        self.requests += requests
        self.largest_commit_requests = max(self.largest_commit_requests, requests)
        return self.commits

    @property
    def requests_per_commit(self) -> float:
        return self.requests / self.commits if self.commits else 0.0

    def summary(self) -> str:
        return (
            f"{self.commits} group commits, {self.requests} requests "
            f"({self.requests_per_commit:.1f} per commit, largest {self.largest_commit_requests}), "
            f"{self.failed_requests} failed"
        )


@dataclass(slots=True)
class _Write:
    apply: Callable[[ReplicaLog], Any]
    future: asyncio.Future[Committed[Any]]
    loop: asyncio.AbstractEventLoop


_STOP = object()
"""Queued by `close()`: the writer finishes what is before it, then exits."""


class GroupCommitWriter:
    """The one writer thread of a replica: applies queued writes in groups, one commit per group."""

    def __init__(self, storage: SqliteLogStorage | RedisLogStorage, bugs: frozenset[str] = frozenset()) -> None:
        invariant(not storage.read_only, "the writer writes")
        self.storage = storage
        self.replica = ReplicaLog(storage, bugs=bugs)
        self.stats = GroupCommitStats()
        self._queue: queue.Queue[_Write | object] = queue.Queue(maxsize=write_queue_requests_max)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(self, apply: Callable[[ReplicaLog], Result]) -> Committed[Result]:
        """Run `apply` on the writer thread; return once its effects are committed (durable)."""
        committed: Committed[Result] = await self.enqueue(apply)
        return committed

    def enqueue(self, apply: Callable[[ReplicaLog], Any]) -> asyncio.Future[Committed[Any]]:
        """Queue `apply` now (so it runs before anything queued later); its future settles once
        it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Committed[Any]] = loop.create_future()
        try:
            self._queue.put_nowait(_Write(apply, future, loop))
        except queue.Full:
            raise unavailable(Reason.STORE_OVERLOADED, "too many writes are waiting; retry later") from None
        return future

    async def close(self) -> None:
        """Finish every queued write, then stop the thread."""
        if self._thread.is_alive():
            await asyncio.to_thread(self._queue.put, _STOP)
            await asyncio.to_thread(self._thread.join)

    # ----------------------------------------------------------------------------- writer thread

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            group: list[_Write] = [first]  # type: ignore[list-item]
            while len(group) < group_commit_requests_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                group.append(item)  # type: ignore[arg-type]
            try:
                self._commit_group(group)
            except BaseException as error:  # never leave a caller waiting forever
                log.exception("store writer failed")
                for write in group:
                    _settle(write, None, _write_error(error))

    def _commit_group(self, group: Sequence[_Write]) -> None:
        storage = self.storage
        storage.begin()
        try:
            values = [write.apply(self.replica) for write in group]
            committing = time.perf_counter()
            storage.commit()
            commit_ms = (time.perf_counter() - committing) * 1000
        except Exception as error:
            storage.rollback()
            self.replica.found.clear()  # rolled back with the rest: found again when applied alone
            log.warning("group commit of %d requests failed (%s); applying them one by one", len(group), error)
            for write in group:
                self._commit_alone(write)
            return
        commit_id = self.stats.record(len(group))
        metrics.store_commit_requests.observe(len(group))
        metrics.store_commit_seconds.observe(commit_ms / 1000)
        self._report_found()
        for write, value in zip(group, values, strict=True):
            _settle(write, Committed(value, commit_id, len(group), commit_ms), None)

    def _report_found(self) -> None:
        """Damage the rules found (and dealt with) in what was just committed: logged, counted."""
        found, self.replica.found = self.replica.found, []
        for channel, serial, what in found:
            metrics.store_damaged_entries.labels(what).inc()
            if what == "conflict":
                log.error(
                    "channel %r: refused (DATA_LOSS) an append of entry %d: it differs from the entry held at"
                    " its serial and epoch (a forgery or a broken writer); nothing written",
                    channel,
                    serial,
                )
                continue
            log.error(
                "channel %r: entry %d %s at rest; the owner rewrites it from a good replica", channel, serial, what
            )

    def _commit_alone(self, write: _Write) -> None:
        storage = self.storage
        storage.begin()
        self.replica.found.clear()
        try:
            value = write.apply(self.replica)
            storage.commit()
            self._report_found()
        except Exception as error:
            storage.rollback()
            self.stats.failed_requests += 1
            if not isinstance(error, InvariantViolation):
                self.stats.engine_error = f"{type(error).__name__}: {error}"
            log.error("store write failed and was rolled back: %r", error)
            _settle(write, None, _write_error(error))
            return
        _settle(write, Committed(value, self.stats.record(1), 1), None)


def _write_error(error: BaseException) -> ServiceError:
    if isinstance(error, InvariantViolation):
        return ServiceError(grpc.StatusCode.INTERNAL, Reason.STORE_INVARIANT, f"store invariant violated: {error}")
    return unavailable(Reason.STORE_WRITE_FAILED, f"the store could not write: {error}")


def _settle(write: _Write, value: Committed[Any] | None, error: ServiceError | None) -> None:
    """From the writer thread: hand the outcome to the caller's event loop."""

    def settle() -> None:
        if write.future.done():  # the caller went away (cancelled); the write stands regardless
            return
        if error is not None:
            write.future.set_exception(error)
        else:
            write.future.set_result(value)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        write.loop.call_soon_threadsafe(settle)
