"""The highest epoch a store lets a fence or an append carry (DESIGN §10, defence in depth).

An epoch is a ring version times `EPOCH_ATTEMPTS_PER_VERSION` plus an attempt number, and ring versions
are etcd revisions plus the version offset placement keeps in etcd. So no honest owner can hold an
epoch whose ring version is above etcd's current revision plus the offset. A fence at a made-up
epoch far above that (2^63-1, say) would otherwise be accepted, raise the channel's fence for good,
and keep every later owner out of the channel: its epoch could never pass it.

Rules:

1. A fence or append whose epoch's ring version is at most the ceiling last read plus
   `ring_versions_ahead_max` is let through at once (the common case costs one comparison).
2. One above it makes the store read the ceiling again from etcd (one read at a time, shared by every
   request waiting on it), and is refused with FAILED_PRECONDITION / EPOCH_AHEAD_OF_RING if it is
   still above: logged (once per `log_interval_s`) and counted.
3. A store run without etcd (tests, a single-replica tool) has no ceiling and checks nothing. A
   store that has never managed to read etcd lets the epoch through and says so: refusing would
   keep honest owners out while etcd is down, and the internal port's mTLS is the first line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc

from ringcast.reasons import Reason
from services.common import metrics
from services.common.errors import ServiceError
from services.core.entries import epoch_ring_version

log = logging.getLogger("ringcast.store.epochs")

ring_versions_ahead_max = 1_000
"""How far above the ceiling last read an epoch's ring version may be before the store reads it again."""

ceiling_read_timeout_s = 2.0
"""How long one read of the ceiling from etcd may take."""

log_interval_s = 10.0
"""At most one log line about refused epochs this often."""


class EpochCeiling:
    def __init__(self, read_ceiling: Callable[[], Awaitable[int]] | None) -> None:
        """`read_ceiling` answers the highest ring version there can be now (etcd's revision plus the
        version offset); None: no etcd, nothing is checked."""
        self._read = read_ceiling
        self.ceiling: int | None = None
        self._reading: asyncio.Task[int | None] | None = None
        self._logged_at = float("-inf")

    async def check(self, rpc: str, epochs: Iterable[int]) -> None:
        """Raise EPOCH_AHEAD_OF_RING if the highest of `epochs` is above any ring version there can be."""
        if self._read is None:
            return
        highest = max(epochs, default=0)
        version = epoch_ring_version(highest)
        if self.ceiling is not None and version <= self.ceiling + ring_versions_ahead_max:
            return
        ceiling = await self._fresh_ceiling()
        if ceiling is None or version <= ceiling + ring_versions_ahead_max:
            return
        metrics.store_epochs_refused.labels(rpc=rpc).inc()
        now = time.monotonic()
        if now - self._logged_at >= log_interval_s:
            self._logged_at = now
            log.warning(
                "refused a %s at epoch %d: its ring version %d is above any etcd has made (%d)",
                rpc,
                highest,
                version,
                ceiling,
            )
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.EPOCH_AHEAD_OF_RING,
            f"epoch {highest} names ring version {version}, above the newest there can be ({ceiling})",
            {"ring_version_ceiling": str(ceiling)},
        )

    async def _fresh_ceiling(self) -> int | None:
        """The ceiling read now (one read shared by concurrent callers); the last one known if etcd does
        not answer; None if it never has."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_once(), name="store-epoch-ceiling")
        return await asyncio.shield(self._reading)

    async def _read_once(self) -> int | None:
        assert self._read is not None
        try:
            ceiling = await asyncio.wait_for(self._read(), ceiling_read_timeout_s)
        except Exception as error:  # noqa: BLE001 - etcd down: fall back on what is known
            if self.ceiling is None:
                log.warning("cannot read the ring version ceiling from etcd (%r): epochs are not checked", error)
            return self.ceiling
        self.ceiling = ceiling if self.ceiling is None else max(self.ceiling, ceiling)
        return self.ceiling


__all__ = ["EpochCeiling", "ring_versions_ahead_max"]
