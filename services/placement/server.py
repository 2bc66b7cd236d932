"""The placement process: membership from etcd in, rings out (`PlacementService`).

Rules:

1. The ring at etcd revision R is computed from the member set at R and from nothing else, and its
   version is R plus the version offset etcd holds at R (`VERSION_OFFSET_KEY`, read and watched with
   the members), so every placement process that has reached R serves the same ring under the same
   version, and placement keeps no state of its own: run several side by side.
2. Versions only grow. A placement process reads the member set once, then follows the member watch;
   every member write or delete is a new version, even one that leaves the set as it was (a member
   that re-registers needs a ring at least as new as its registration, services/core/node.py).
   When etcd loses its data its revisions start again; the offset does not let versions follow
   them. An etcd without an offset (new, or wiped) gets one before any ring is published, large
   enough that the next version is above every version anyone knows of: the newest this process
   served, every channel node's `floor` (the newest ring it has seen) and the stores' (the ring
   version of their highest fence; the second highest of them, so one store's corrupted fence
   cannot push versions to the end of the epoch space, while any fence a quorum holds is counted).
   A member registering with a floor at or above the version about to be served raises the offset
   first. So epochs, made from versions, stay above every fence the stores hold.
3. Until the first read from etcd succeeds there is no ring, and every call is answered UNAVAILABLE
   with reason RING_UNKNOWN, so callers go to another placement process.
4. A WatchRing stream holds one number of state, the version it last sent: a slow watcher is sent
   the newest ring when it is ready for the next, never a queue of the rings in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from ringcast.reasons import Reason
from services.common.errors import ServiceError, abort, answers_errors, invalid, unavailable
from services.common.etcd import Etcd, EtcdUnavailable, MemberRecord, Membership
from services.core.invariants import invariant
from services.core.ring import Ring
from services.internal.v1 import placement_service_pb2 as placement_pb2
from services.internal.v1 import placement_service_pb2_grpc as placement_grpc

log = logging.getLogger("ringcast.placement")

CHANNEL_KIND = "channel"
STORE_KIND = "store"

membership_retry_delay_s_min = 0.05
membership_retry_delay_s_max = 1.0
"""Delays between attempts to read or watch membership while etcd is unreachable."""


@dataclass(frozen=True, slots=True)
class PlacementRing:
    """One ring version: the hashing ring, the message sent for it, and the channel nodes by id."""

    version: int
    ring: Ring
    message: placement_pb2.Ring
    members: dict[str, placement_pb2.Member]


def ring_from_members(version: int, records: Sequence[MemberRecord], revision: int | None = None) -> PlacementRing:
    """The ring at `version` (read at etcd `revision`, by default the version) for `records`: channel
    nodes sorted by id, stores sorted by (zone, id)."""
    revision = version if revision is None else revision
    channels = sorted((record for record in records if record.kind == CHANNEL_KIND), key=lambda record: record.id)
    stores = sorted(
        (record for record in records if record.kind == STORE_KIND), key=lambda record: (record.zone, record.id)
    )
    members = [placement_pb2.Member(id=record.id, address=record.address, zone=record.zone) for record in channels]
    message = placement_pb2.Ring(
        version=version,
        members=members,
        stores=[placement_pb2.Member(id=record.id, address=record.address, zone=record.zone) for record in stores],
        revision=revision,
    )
    members_by_id = {member.id: member for member in members}
    return PlacementRing(version, Ring(version, members_by_id, revision=revision), message, members_by_id)


def version_floor(records: Sequence[MemberRecord], served: int) -> int:
    """The newest ring version anyone is known to have seen (rule 2): `served` by this process, any
    channel node's floor, and the second highest of the stores' floors."""
    channel_floors = [record.floor for record in records if record.kind == CHANNEL_KIND]
    store_floors = sorted((record.floor for record in records if record.kind == STORE_KIND), reverse=True)
    return max([served, *channel_floors, *store_floors[1:2]])


def describe(ring: PlacementRing) -> str:
    members = ",".join(f"{member.id}={member.address}" for member in ring.message.members)
    stores = ",".join(f"{store.zone}:{store.id}={store.address}" for store in ring.message.stores)
    return f"version={ring.version} revision={ring.message.revision} members=[{members}] stores=[{stores}]"


class RingBroadcast:
    """The newest ring, and a way to wait for a newer one. Holds one ring, however many wait."""

    def __init__(self) -> None:
        self._current: PlacementRing | None = None
        self._newer = asyncio.Event()
        self._closed = False

    @property
    def current(self) -> PlacementRing | None:
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, ring: PlacementRing) -> bool:
        """Make `ring` the newest, if it is newer; wake every waiter. True when it was newer."""
        if self._current is not None and ring.version <= self._current.version:
            return False
        self._current = ring
        # Waiters hold the old event; a fresh one is for the next change.
        self._newer.set()
        self._newer = asyncio.Event()
        return True

    async def wait_newer(self, version: int) -> PlacementRing | None:
        """The newest ring once it is newer than `version`; None once the broadcast is closed."""
        while not self._closed:
            current = self._current
            if current is not None and current.version > version:
                return current
            await self._newer.wait()
        return None

    def close(self) -> None:
        """End every wait (the process is stopping)."""
        self._closed = True
        self._newer.set()


def _ring_unknown() -> ServiceError:
    return unavailable(Reason.RING_UNKNOWN, "placement has not read membership from etcd yet")


confirm_connect_timeout_s = 0.5
"""How long placement's own connect to a reported member may take. Only a refusal counts as death."""

report_checks_max = 64
"""Reports checked at once; more are answered NOT_CONFIRMED without a check."""


async def connect_refused(address: str, timeout_s: float = confirm_connect_timeout_s) -> bool:
    """True only when a TCP connect to `address` is actively refused: nothing listens on that port,
    so the process that did is gone. A connect that succeeds (even to a paused process, whose
    kernel still accepts) or times out (a partition, a dead host) proves nothing, and the member's
    lease expiry stays the judge."""
    host, _, port = address.rpartition(":")
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


# The generated servicer base is untyped (mypy skips ringcast.v1), hence the ignore.
class PlacementServicer(placement_grpc.PlacementServiceServicer):  # type: ignore[misc]
    """Lookup, GetRing and WatchRing over the broadcast's newest ring; ReportUnreachable with etcd."""

    def __init__(self, broadcast: RingBroadcast, etcd: Etcd | None = None) -> None:
        self.broadcast = broadcast
        self.etcd = etcd
        self._checking: dict[tuple[str, str], asyncio.Task[placement_pb2.UnreachableOutcome]] = {}

    def _current(self) -> PlacementRing:
        current = self.broadcast.current
        if current is None:
            raise _ring_unknown()
        return current

    @answers_errors
    async def Lookup(  # noqa: N802 - the RPC's name
        self, request: placement_pb2.LookupRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.LookupResponse:
        if not request.channel:
            raise invalid(Reason.CHANNEL_NAME_EMPTY, "channel name is empty")
        current = self._current()
        owner = current.ring.owner(request.channel)
        response = placement_pb2.LookupResponse(ring_version=current.version)
        if owner is not None:
            response.owner.CopyFrom(current.members[owner])
        return response

    @answers_errors
    async def GetRing(  # noqa: N802 - the RPC's name
        self, request: placement_pb2.GetRingRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.Ring:
        return self._current().message

    async def WatchRing(  # noqa: N802 - the RPC's name
        self, request: placement_pb2.WatchRingRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[placement_pb2.Ring]:
        if self.broadcast.current is None:
            await abort(context, _ring_unknown())
        sent_version = request.known_version
        while True:
            ring = await self.broadcast.wait_newer(sent_version)
            if ring is None:
                return  # Stopping: the stream ends and the watcher moves to another placement process.
            invariant(ring.version > sent_version, "a watcher is only ever sent newer rings")
            # While this send waits for a slow watcher, newer rings only replace `current`; the next
            # turn sends the newest and skips the rest.
            yield ring.message
            sent_version = ring.version

    @answers_errors
    async def ReportUnreachable(  # noqa: N802 - the RPC's name
        self, request: placement_pb2.ReportUnreachableRequest, context: grpc.aio.ServicerContext
    ) -> placement_pb2.ReportUnreachableResponse:
        current = self._current()
        member = current.members.get(request.member_id)
        if member is None or member.address != request.address or self.etcd is None:
            return placement_pb2.ReportUnreachableResponse(outcome=placement_pb2.UNREACHABLE_OUTCOME_NOT_A_MEMBER)
        key = (request.member_id, request.address)
        check = self._checking.get(key)
        if check is None:  # many callers report the same death at once: one check answers them all
            if len(self._checking) >= report_checks_max:
                return placement_pb2.ReportUnreachableResponse(outcome=placement_pb2.UNREACHABLE_OUTCOME_NOT_CONFIRMED)
            record = MemberRecord(CHANNEL_KIND, member.id, member.address, member.zone)
            check = self._checking[key] = asyncio.create_task(self._check(record))
            check.add_done_callback(lambda _: self._checking.pop(key, None))
        outcome = await asyncio.shield(check)
        return placement_pb2.ReportUnreachableResponse(outcome=outcome)

    async def _check(self, record: MemberRecord) -> placement_pb2.UnreachableOutcome:
        assert self.etcd is not None
        if not await connect_refused(record.address):
            return placement_pb2.UNREACHABLE_OUTCOME_NOT_CONFIRMED
        try:
            removed = await self.etcd.revoke_member(record)
        except EtcdUnavailable as error:
            log.warning("could not revoke the lease of %s: %s", record.key, error)
            return placement_pb2.UNREACHABLE_OUTCOME_NOT_CONFIRMED
        if not removed:
            return placement_pb2.UNREACHABLE_OUTCOME_NOT_A_MEMBER
        log.warning("%s at %s refuses connections: revoked its lease, its channels move now", record.id, record.address)
        return placement_pb2.UNREACHABLE_OUTCOME_REMOVED


async def follow_membership(etcd: Etcd, broadcast: RingBroadcast) -> None:
    """Read the member set, then follow every change to it, publishing a ring per revision. Forever."""
    delay_s = membership_retry_delay_s_min
    while True:
        try:
            membership = await etcd.members()
            await _follow(etcd, broadcast, membership)
            delay_s = membership_retry_delay_s_min
            async with contextlib.aclosing(etcd.watch_members(membership.revision)) as changes:
                async for membership in changes:
                    await _follow(etcd, broadcast, membership)
        except EtcdUnavailable as error:
            log.warning("reading membership failed: %s; retrying in %.2f s", error, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, membership_retry_delay_s_max)


async def _follow(etcd: Etcd, broadcast: RingBroadcast, membership: Membership) -> None:
    """Publish the ring for `membership`, or first put an offset in place that keeps versions growing
    (rule 2): its write is a new revision, which the watch then brings."""
    current = broadcast.current
    revision, offset = membership.revision, membership.version_offset
    floor = version_floor(membership.members, current.version if current is not None else 0)
    if membership.reset:
        log.warning("etcd lost its data or was replaced (now at revision %d): following it afresh", revision)
    if offset is None:
        wanted = max(0, floor + 1 - revision)
        held = await etcd.create_version_offset(wanted)
        log.warning("etcd holds no version offset: set %d, so versions go on above %d", held, floor)
        return
    version = revision + offset
    if version <= floor:
        wanted = floor + 1 - revision  # the write comes at a later revision: its version is above floor
        raised = await etcd.raise_version_offset(offset, wanted)
        log.warning(
            "ring version %d would not be above %d, the newest known: %s the version offset to %d",
            version,
            floor,
            "raised" if raised else "someone else raised",
            wanted,
        )
        return
    ring = ring_from_members(version, membership.members, revision)
    if broadcast.publish(ring):
        log.info("ring %s", describe(ring))
