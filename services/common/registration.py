"""A member's registration in etcd: a key under a lease this process renews, registered again when lost."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from services.common.etcd import (
    Etcd,
    EtcdUnavailable,
    MemberRecord,
    etcd_call_timeout_s,
    etcd_retry_delay_s_max,
    etcd_retry_delay_s_min,
    keep_alive_retry_delay_s_max,
)

log = logging.getLogger("ringcast.etcd")


class Registration:
    """A member's key, kept alive by a lease that this process renews, re-registered when lost.

    Lifecycle: grant a lease of `ttl_s` (rounded up to whole seconds for etcd), put the key with it,
    report `on_registered(put revision)` and `on_lease(deadline)`. Then renew every `ttl_s / 4` and
    report `on_lease(send time + ttl_s)` after each acknowledged renewal. When etcd says the lease is
    gone, or the deadline passes without an acknowledged renewal, report `on_lost()` once and register
    again with a new lease, retrying with bounded backoff while etcd is unreachable.

    Callbacks run on the event loop and must not block. `stop()` revokes the lease (the key
    disappears at once) without calling `on_lost`: the caller is leaving on purpose.
    """

    def __init__(
        self,
        etcd: Etcd,
        record: MemberRecord,
        ttl_s: float,
        on_registered: Callable[[int], None] | None,
        on_lease: Callable[[float], None] | None,
        on_lost: Callable[[], None] | None,
        floor: Callable[[], int] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> None:
        record.validate()
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.etcd = etcd
        self.record = record
        self.ttl_s = ttl_s
        self.keep_alive_interval_s = ttl_s / 4
        self.revision = 0
        """Revision of the latest registration put."""
        self.lease_id = 0
        self.deadline = 0.0
        """time.monotonic() until which the lease is known to hold."""
        self.lost_count = 0
        self._on_registered = on_registered
        self._on_lease = on_lease
        self._on_lost = on_lost
        self._floor = floor
        self._on_failed = on_failed
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @classmethod
    async def start(
        cls,
        etcd: Etcd,
        record: MemberRecord,
        *,
        ttl_s: float = 2.0,
        on_registered: Callable[[int], None] | None = None,
        on_lease: Callable[[float], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        floor: Callable[[], int] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> Registration:
        """Register (retrying until etcd answers; wrap in asyncio.wait_for to bound that), then keep alive.

        `floor` gives the newest ring version the process knows of, written with every registration
        (rule 1). `on_failed` is called if renewing ever stops for any reason but `stop()` (a bug):
        the process can no longer keep its membership and must say so, not serve on silently."""
        registration = cls(etcd, record, ttl_s, on_registered, on_lease, on_lost, floor, on_failed)
        await registration._register()
        registration._task = asyncio.create_task(
            registration._keep_alive_forever(), name=f"etcd-registration-{record.kind}/{record.id}"
        )
        registration._task.add_done_callback(registration._ended)
        return registration

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopped or task.cancelled():
            return
        error = task.exception() or EtcdUnavailable("the registration loop ended")
        log.critical("keeping %s registered failed: %r", self.record.key, error, exc_info=error)
        if self._on_failed is not None:
            self._on_failed(error)

    async def stop(self) -> None:
        """Leave: stop renewing and revoke the lease, so the member key is deleted now."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.lease_id:
            try:
                await self.etcd.revoke(self.lease_id)
            except EtcdUnavailable as error:
                log.warning("could not revoke lease of %s (it expires by itself): %s", self.record.key, error)
        self.deadline = 0.0

    # ----------------------------------------------------------------------------- internals

    async def _register(self) -> None:
        delay_s = etcd_retry_delay_s_min
        while not self.etcd.closed:
            try:
                await self._register_once()
                return
            except EtcdUnavailable as error:
                log.warning("registering %s failed: %s; retrying in %.2f s", self.record.key, error, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, etcd_retry_delay_s_max)
        raise EtcdUnavailable("etcd client is closed")

    async def _register_once(self) -> None:
        sent = time.monotonic()
        lease_id, granted_ttl_s = await self.etcd.grant(math.ceil(self.ttl_s))
        if granted_ttl_s <= 0:
            raise EtcdUnavailable(f"etcd granted a lease with TTL {granted_ttl_s}")
        record = dataclasses.replace(self.record, floor=self._floor() if self._floor is not None else 0)
        try:
            revision = await self.etcd.put(record.key, record.value(), lease_id)
        except EtcdUnavailable:
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(lease_id)
            raise
        if revision <= self.revision:
            log.warning(
                "registered %s at revision %d, behind the %d of its last registration: etcd lost its data "
                "or was replaced",
                record.key,
                revision,
                self.revision,
            )
        self.lease_id = lease_id
        self.revision = revision
        self.deadline = sent + min(self.ttl_s, granted_ttl_s)
        log.info(
            "registered %s at revision %d (lease %x, ttl %d s)", self.record.key, revision, lease_id, granted_ttl_s
        )
        self._call_back("on_registered", self._on_registered, revision)
        self._call_back("on_lease", self._on_lease, self.deadline)

    async def _keep_alive_forever(self) -> None:
        while True:
            reason = await self._keep_alive_until_lost()
            self.lost_count += 1
            log.warning("lease of %s lost (%s); registering again", self.record.key, reason)
            self.deadline = 0.0
            self._call_back("on_lost", self._on_lost)
            if self.etcd.closed:
                return
            # The old lease is left to expire: the new put moves the key onto the new lease, so the
            # old one's expiry deletes nothing, and the member set sees one change instead of two.
            try:
                await self._register()
            except EtcdUnavailable:
                return  # Only raised once the client is closed: nothing left to renew with.

    async def _keep_alive_until_lost(self) -> str:
        """Renew until the lease is lost; returns why."""
        next_send = time.monotonic() + self.keep_alive_interval_s
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                return "no acknowledged keep-alive before the deadline"
            await asyncio.sleep(max(0.0, min(next_send, self.deadline) - now))
            sent = time.monotonic()
            if sent >= self.deadline:
                return "no acknowledged keep-alive before the deadline"
            try:
                ttl_s = await self.etcd.keep_alive(self.lease_id, min(etcd_call_timeout_s, self.deadline - sent))
            except EtcdUnavailable as error:
                log.debug("keep-alive of %s failed: %s", self.record.key, error)
                next_send = time.monotonic() + min(self.keep_alive_interval_s, keep_alive_retry_delay_s_max)
                continue
            if ttl_s <= 0:
                return "etcd no longer has the lease"
            self.deadline = max(self.deadline, sent + min(self.ttl_s, ttl_s))
            self._call_back("on_lease", self._on_lease, self.deadline)
            next_send = sent + self.keep_alive_interval_s

    def _call_back(self, name: str, callback: Callable[..., None] | None, *arguments: Any) -> None:
        if callback is None:
            return
        try:
            callback(*arguments)
        except Exception:
            # A failing callback must not stop the renewals; the member's own clock still bounds it.
            log.exception("%s callback of %s failed", name, self.record.key)


__all__ = ["Registration"]
