"""Presence at a channel's owner: the member set folded from the presence log, and its writes.

`PresenceKeeper` holds one `ChannelPresence` per channel whose presence is in use here. Each one
takes the channel's presence log over (services/core/presence.py, rule 1), folds it from its first
entry by following it like any subscriber — the member set is only ever what the committed log says
(rule 3) — and is ready once the fold reaches the commit the takeover found. Writes (enters,
updates, leaves, and the LEAVEs of members whose grace ran out) are publishes to the presence log,
answered once the follower has folded them. Anything that goes wrong with the log (the channel moved,
a write failed or timed out) ends the `ChannelPresence`: every call on it fails retryably, the
gateways go to the owner again, and a fresh one folds the log again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Protocol

import grpc

from ringcast.reasons import Reason
from services.channel.node_adapter import ChannelNodeAdapter
from services.common.clock import monotonic_ms
from services.common.errors import ServiceError
from services.core.entries import Entry
from services.core.namespaces import NamespaceOptions, Namespaces
from services.core.presence import (
    Action,
    Change,
    MemberKey,
    PresenceError,
    PresenceOwner,
    decode,
    presence_log,
)
from services.core.role import PublishResult

log = logging.getLogger("ringcast.presence")

write_timeout_s = 10.0
"""Longest one presence write may take to commit and fold."""

takeover_timeout_s = 10.0
"""Longest the presence log's takeover and fold may take before calls are answered."""

expiry_interval_s = 0.25
"""How often an owner looks for members whose grace is over."""

presence_channels_max = 100_000
"""Channels whose presence one node keeps at once; beyond, calls are refused retryably."""


def unavailable(reason: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message)


def refusal(reason: str, options: NamespaceOptions) -> ServiceError:
    if reason == Reason.MEMBER_CAP_REACHED:
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason,
            f"the channel has {options.member_cap} members, its namespace's member_cap",
            {"limit": str(options.member_cap)},
        )
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, reason, "that member is not in the presence set")


class ChannelPresence:
    """One channel's presence at this owner, for as long as its presence log is served here."""

    def __init__(self, keeper: PresenceKeeper, channel: str) -> None:
        self.keeper = keeper
        self.channel = channel
        self.log = presence_log(channel)
        self.state = PresenceOwner()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended = ""
        """Why this presence state ended ("" while it serves)."""
        self.folded = asyncio.Condition()
        self.holders: dict[MemberKey, set[Holder]] = {}
        """The gateways' streams (HoldPresence) holding each member connected here."""
        self._tasks = [
            asyncio.create_task(self._follow(), name=f"presence-{channel}"),
            asyncio.create_task(self._expire(), name=f"presence-expiry-{channel}"),
        ]

    @property
    def options(self) -> NamespaceOptions:
        return self.keeper.namespaces.for_channel(self.channel)

    @property
    def grace_ms(self) -> int:
        return int(self.options.presence_grace_s * 1000)

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = reason
        if not self.ready.done():
            self.ready.set_exception(unavailable(reason, f"presence of {self.channel!r} unavailable: {reason}"))
            self.ready.exception()  # retrieved: callers that wait get it from `ready` themselves
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.keeper.forget(self)
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self.folded:
            self.folded.notify_all()

    def check(self) -> None:
        if self.ended:
            raise unavailable(
                Reason.CHANNEL_MOVED, f"presence of {self.channel!r} moved or failed here ({self.ended}); retry"
            )

    async def _follow(self) -> None:
        try:
            taken = await self.keeper.node.history(self.log, 0, 0, takeover_timeout_s)
            if taken.reason:
                self.end(taken.reason)
                return
            _, commit = self.keeper.node.channel_state(self.log)
            adopted = commit == 0
            if adopted:
                self._adopt()
            async for delivery in self.keeper.node.subscribe(self.log, 0):
                if delivery.end_reason:
                    self.end(delivery.end_reason)
                    return
                if delivery.gap_next_serial:  # a trimmed presence log: what is kept is what is known
                    self.state.committed.skip_to(delivery.gap_next_serial - 1)
                self._fold(delivery.entries)
                if not adopted and self.state.committed.serial >= commit:
                    adopted = True
                    self._adopt()
                async with self.folded:
                    self.folded.notify_all()
        except TimeoutError:
            self.end(Reason.COMMIT_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must end this channel's presence, not leave it half-served
            log.exception("following the presence of %s failed", self.channel)
            self.end(f"{type(error).__name__}")

    def _fold(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            try:
                change = decode(entry.message)
            except PresenceError as error:
                log.error("presence log of %s: entry %d skipped: %s", self.channel, entry.serial, error)
                self.state.committed.skip_to(entry.serial)
                continue
            self.state.apply(entry.serial, change, entry.message.timestamp_ms)
            if change.action is Action.LEAVE:  # its holders' clients are told; it is held no more
                self.state.streams.pop(change.key, None)
                for holder in self.holders.pop(change.key, set()):
                    holder.left(change.key)

    def _adopt(self) -> None:
        """The log is folded up to the takeover's commit: adopt it, and answer calls once the members
        whose grace ran out before this owner came (rule 5) have left — nobody is shown a ghost."""
        self.state.adopt(monotonic_ms(), self.grace_ms, self.keeper.node.wall_now_ms())
        overdue = [self.submit(change) for change in self.state.due(monotonic_ms())]
        committed = self.state.committed
        log.info(
            "presence of %s folded at serial %d: %d members (%d absent, %d connected here, %d past their grace)",
            self.channel,
            committed.serial,
            len(committed.members),
            len(committed.absent_since_ms),
            len(self.state.streams),
            len(overdue),
        )
        remaining = len(overdue)

        def written(_: asyncio.Future[int]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not self.ready.done() and not self.ended:
                self.ready.set_result(None)

        for future in overdue:
            future.add_done_callback(written)
        if not overdue:
            self.ready.set_result(None)

    async def _expire(self) -> None:
        await asyncio.shield(self.ready)
        while not self.ended:
            await asyncio.sleep(expiry_interval_s)
            for change in self.state.due(monotonic_ms()):
                log.info("%s left %s: its connection was gone for its grace", change.key, self.channel)
                self.submit(change)

    def submit(self, change: Change) -> asyncio.Future[int]:
        """Write `change` now (changes are logged in the order submitted); the future answers its
        serial once folded, or the ServiceError that ended this presence state (and is retrieved
        even if nobody waits for it)."""
        self.check()
        message = change.message(f"presence-{uuid.uuid4().hex}")
        published = self.keeper.node.submit(self.log, (message,), write_timeout_s)
        written = asyncio.ensure_future(self._settle(change, published))
        written.add_done_callback(_retrieved)
        return written

    async def write(self, change: Change) -> int:
        return await self.submit(change)

    async def _settle(self, change: Change, published: asyncio.Future[PublishResult]) -> int:
        try:
            result = await published
        except TimeoutError:
            self.end(Reason.COMMIT_TIMEOUT)
            self.check()
            raise
        if not result.ok:
            self.end(result.reason)
            self.check()
        serial = result.serials[0]
        async with self.folded:
            await self.folded.wait_for(lambda: self.ended or self.state.committed.serial >= serial)
        self.check()
        return serial

    async def settled(self, key: MemberKey) -> int:
        """The serial of `key`'s entry once the committed set holds what is intended for it."""
        async with self.folded:
            await self.folded.wait_for(
                lambda: (
                    self.ended
                    or (
                        key in self.state.committed.members
                        and self.state.committed.members[key].data == self.state.intended.get(key)
                    )
                )
            )
        self.check()
        return self.state.committed.members[key].serial

    def attach(self, holder: Holder, key: MemberKey) -> None:
        """`holder` holds `key` connected here (once per holder)."""
        holders = self.holders.setdefault(key, set())
        if holder in holders:
            return
        holders.add(holder)
        back = self.state.connected(key)
        if back is not None:
            self.submit(back)

    def release(self, holder: Holder, key: MemberKey) -> None:
        """`holder` holds `key` no more; its last holder gone, the member's grace begins."""
        holders = self.holders.get(key)
        if not holders or holder not in holders:
            return
        holders.discard(holder)
        if not holders:
            del self.holders[key]
        if self.ended:
            return
        gone = self.state.disconnected(key, monotonic_ms(), self.grace_ms)
        if gone is not None:
            self.submit(gone)

    async def enter(self, key: MemberKey, data: bytes, rejoin: bool = False) -> int:
        outcome = self.state.enter(key, data, self.options.member_cap, rejoin=rejoin)
        if isinstance(outcome, Change):
            return await self.write(outcome)
        if outcome is not None:
            raise refusal(outcome, self.options)
        return await self.settled(key)

    async def change(self, key: MemberKey, data: bytes, leave: bool) -> int:
        outcome = self.state.leave(key) if leave else self.state.update(key, data)
        if isinstance(outcome, Change):
            return await self.write(outcome)
        if outcome is not None:
            raise refusal(outcome, self.options)
        if leave:  # not a member (any more): answered once the committed set agrees
            async with self.folded:
                await self.folded.wait_for(lambda: self.ended or key not in self.state.committed.members)
            self.check()
            return self.state.committed.serial
        return await self.settled(key)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class PresenceKeeper:
    """Every channel's presence at this node."""

    def __init__(self, node: ChannelNodeAdapter) -> None:
        self.node = node
        self.namespaces = Namespaces()
        self.channels: dict[str, ChannelPresence] = {}

    def set_namespaces(self, current: Namespaces) -> None:
        self.namespaces = current

    def options(self, channel: str) -> NamespaceOptions:
        return self.namespaces.for_channel(channel)

    async def get(self, channel: str) -> ChannelPresence:
        """The channel's presence here, folded and ready (ServiceError if it cannot be)."""
        presence = self.channels.get(channel)
        if presence is None:
            if self.node.closing:
                raise unavailable(Reason.SHUTTING_DOWN, "the node is shutting down")
            if len(self.channels) >= presence_channels_max:
                raise unavailable(Reason.OWNER_OVERLOADED, f"{presence_channels_max} channels' presence held here")
            presence = self.channels[channel] = ChannelPresence(self, channel)
        try:
            await asyncio.wait_for(asyncio.shield(presence.ready), takeover_timeout_s)
        except TimeoutError:
            raise unavailable(Reason.COMMIT_TIMEOUT, f"presence of {channel!r} not ready in time") from None
        presence.check()
        return presence

    def members(self, channel: str) -> int:
        """Members of the channel's presence set as folded here (0 when not in use here)."""
        presence = self.channels.get(channel)
        return len(presence.state.committed.members) if presence is not None and presence.ready.done() else 0

    def forget(self, presence: ChannelPresence) -> None:
        if self.channels.get(presence.channel) is presence:
            del self.channels[presence.channel]

    async def close(self) -> None:
        for presence in list(self.channels.values()):
            await presence.close()
        self.channels.clear()


heartbeat_s = 1.0
"""A hold stream with nothing to say sends an empty response this often."""


class Holder(Protocol):
    """A gateway's stream holding members connected here (the HoldPresence call)."""

    def left(self, key: MemberKey) -> None:
        """`key` left the presence set: its clients' streams end."""


def _retrieved(task: asyncio.Future[int]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = ["ChannelPresence", "PresenceKeeper"]
