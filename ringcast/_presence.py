"""Presence: who is in a channel now (`client.presence(channel)`).

A member is this client on this connection (`Client.connection_id`, one per Client object). While
entered, the client holds an EnterPresence stream open on a gateway; when that fails it enters
again on the healthiest gateway with the same ids and its current data, which changes nothing in
the channel's presence set (the owner keeps a member whose connection is gone for the namespace's
grace, 15 s by default). So a member stays present across gateway and owner failures as long as the
client can reach some gateway within the grace, and leaves by itself when the client is gone.

A `PresenceWatch` gets the whole set at a serial of the channel's presence log, then every change
after it, once each and in order, resuming after the last serial seen across any failure — the
same promise as a message subscription, for presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from ringcast._errors import RingcastError
from ringcast._streams import resumed
from ringcast._transport import Gateway, Stub
from ringcast.reasons import Reason
from ringcast.v1 import presence_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2

if TYPE_CHECKING:
    from ringcast._client import Client

log = logging.getLogger("ringcast.presence")


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a channel's presence set: a client on one connection."""

    client_id: str
    connection_id: str
    data: bytes
    serial: int
    """The presence serial of the entry that made the member what it is (its enter or last update)."""
    timestamp_ms: int

    def text(self, encoding: str = "utf-8") -> str:
        return self.data.decode(encoding)

    @property
    def key(self) -> tuple[str, str]:
        return (self.client_id, self.connection_id)

    @classmethod
    def from_proto(cls, member: presence_pb2.PresenceMember) -> Member:
        return cls(
            str(member.client_id),
            str(member.connection_id),
            bytes(member.data),
            int(member.serial),
            int(member.timestamp_ms),
        )


class PresenceAction(enum.Enum):
    SYNC = "sync"
    """The whole set (`PresenceEvent.members`), at `serial`: the first event of a watch."""
    ENTER = "enter"
    UPDATE = "update"
    LEAVE = "leave"


_ACTIONS = {
    presence_pb2.PRESENCE_ACTION_ENTER: PresenceAction.ENTER,
    presence_pb2.PRESENCE_ACTION_UPDATE: PresenceAction.UPDATE,
    presence_pb2.PRESENCE_ACTION_LEAVE: PresenceAction.LEAVE,
}


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    action: PresenceAction
    serial: int
    member: Member | None = None
    """The member a change is about (as the change left it); None for SYNC."""
    members: tuple[Member, ...] = ()
    """For SYNC: every member, ordered by client id and connection id."""


@dataclass(frozen=True, slots=True)
class PresenceSet:
    members: tuple[Member, ...]
    serial: int
    """The presence serial the set is valid at."""


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


class Presence:
    """One channel's presence, as this client sees and takes part in it (see the module)."""

    def __init__(self, client: Client, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._data = b""
        self._holding: asyncio.Task[None] | None = None
        self._entered: asyncio.Future[int] | None = None
        self._stopping = False
        self._call: grpc.aio.UnaryStreamCall | None = None
        self.error: RingcastError | None = None
        """Why holding the member present stopped for good (a refusal, no gateway for the client's
        `resume_timeout_s`), if it did."""
        self.reentries = 0
        """Times the member was entered again after its stream failed."""

    @property
    def entered(self) -> bool:
        """Whether this client holds its member present (entered, not left, not failed)."""
        return self._holding is not None and not self._holding.done()

    def _client_id(self) -> str:
        # With tokens the gateway takes the token's `sub`; without, the client's own id.
        transport = self.client._transport
        return "" if transport.token or transport.token_provider else self.client.client_id

    async def enter(self, data: bytes | str = b"", *, timeout_s: float | None = None) -> int:
        """Enter the channel's presence set with `data` and stay in it until `leave()` or `close()`
        (or the client's); returns the presence serial the member is present at. Entering again
        while entered is an update."""
        data = _bytes(data)
        if self.entered:
            return await self.update(data, timeout_s=timeout_s) if data != self._data else await self._first()
        self._data, self._stopping, self.error = data, False, None
        self._entered = asyncio.get_running_loop().create_future()
        self._holding = asyncio.create_task(self._hold(), name=f"presence-{self.channel}")
        timeout = self.client.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(self._entered), timeout)
        except BaseException:
            await self.close()
            raise

    async def _first(self) -> int:
        assert self._entered is not None
        return await asyncio.shield(self._entered)

    async def _hold(self) -> None:
        entered = self._entered
        assert entered is not None

        def open_call(stub: Stub) -> grpc.aio.UnaryStreamCall:
            request = realtime_pb2.EnterPresenceRequest(
                channel=self.channel,
                connection_id=self.client.connection_id,
                data=self._data,  # the newest: a re-entry after an update carries the update
                client_id=self._client_id(),
            )
            return stub.EnterPresence(request, metadata=self.client._transport.metadata())

        def set_call(call: grpc.aio.UnaryStreamCall | None) -> None:
            self._call = call

        def again() -> None:
            self.reentries += 1

        def stream() -> AsyncGenerator[realtime_pb2.EnterPresenceResponse, None]:
            return resumed(
                self.client._transport,
                open_call,
                what=f"presence in {self.channel!r}",
                resume_timeout_s=self.client.resume_timeout_s,
                closed=lambda: self._stopping,
                on_call=set_call,
                on_resume=again,
                resume_on_eof=False,
            )

        responses = stream()
        try:
            while True:
                try:
                    async with contextlib.aclosing(responses):
                        async for response in responses:
                            if response.serial and not entered.done():
                                entered.set_result(int(response.serial))
                    return  # ended OK: the member left
                except RingcastError as error:
                    # No longer present although this client never left: its grace ran out while it
                    # could not reach the platform. Enter again, as a new member of the same ids.
                    if error.reason != Reason.NOT_PRESENT or self._stopping or not entered.done():
                        raise
                    self.reentries += 1
                    responses = stream()
        except RingcastError as error:
            self.error = error
            if not entered.done():
                entered.set_exception(error)
            else:
                log.warning("presence in %s ended: %s", self.channel, error)

    async def update(self, data: bytes | str, *, timeout_s: float | None = None) -> int:
        """Change the member's data; its presence serial."""
        self._data = data = _bytes(data)
        request = realtime_pb2.UpdatePresenceRequest(
            channel=self.channel, connection_id=self.client.connection_id, data=data, client_id=self._client_id()
        )

        async def invoke(gateway: Gateway, timeout: float) -> int:
            answer = await gateway.stub.UpdatePresence(
                request, timeout=timeout, metadata=self.client._transport.metadata()
            )
            return int(answer.serial)

        return await self.client._transport.call(
            invoke, self.client._deadline(timeout_s), what=f"presence update in {self.channel!r}"
        )

    async def leave(self, *, timeout_s: float | None = None) -> int:
        """Leave the presence set now; the presence serial of the leave."""
        request = realtime_pb2.LeavePresenceRequest(
            channel=self.channel, connection_id=self.client.connection_id, client_id=self._client_id()
        )

        async def invoke(gateway: Gateway, timeout: float) -> int:
            answer = await gateway.stub.LeavePresence(
                request, timeout=timeout, metadata=self.client._transport.metadata()
            )
            return int(answer.serial)

        try:
            return await self.client._transport.call(
                invoke, self.client._deadline(timeout_s), what=f"presence leave in {self.channel!r}"
            )
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop holding the member present without leaving: it leaves after the namespace's grace
        unless this connection enters again."""
        self._stopping = True
        if self._call is not None:
            self._call.cancel()
        if self._holding is not None:
            self._holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._holding

    async def __aenter__(self) -> Presence:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def members(self, *, timeout_s: float | None = None) -> PresenceSet:
        """Every member now, and the presence serial the set is valid at."""
        request = realtime_pb2.GetPresenceRequest(channel=self.channel)

        async def invoke(gateway: Gateway, timeout: float) -> realtime_pb2.GetPresenceResponse:
            answer: realtime_pb2.GetPresenceResponse = await gateway.stub.GetPresence(
                request, timeout=timeout, metadata=self.client._transport.metadata()
            )
            return answer

        answer = await self.client._transport.call(
            invoke, self.client._deadline(timeout_s), what=f"presence of {self.channel!r}"
        )
        return PresenceSet(tuple(Member.from_proto(member) for member in answer.members), int(answer.serial))

    def subscribe(self, *, after: int | None = None) -> PresenceWatch:
        """Follow the presence set: the whole set first (a SYNC event), then every change; or, with
        `after`, the changes after that presence serial (0: the presence history retained)."""
        return PresenceWatch(self.client, self.channel, after)


class PresenceWatch:
    """`async for event in watch` yields a SYNC event (unless started `after` a serial), then each
    change once, in order, across failures. `members` is the set as of the last event handed on."""

    def __init__(self, client: Client, channel: str, after: int | None) -> None:
        self.client = client
        self.channel = channel
        self.serial = after or 0
        """The presence serial of the last event handed on (where a resume starts)."""
        self.members: dict[tuple[str, str], Member] = {}
        self._synced = after is not None
        self._closed = False
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._events = self._run()
        self.resumes = 0

    def __aiter__(self) -> PresenceWatch:
        return self

    async def __anext__(self) -> PresenceEvent:
        return await self._events.__anext__()

    async def __aenter__(self) -> PresenceWatch:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def _run(self) -> AsyncGenerator[PresenceEvent, None]:
        parts: list[presence_pb2.PresenceMember] = []

        def open_call(stub: Stub) -> grpc.aio.UnaryStreamCall:
            parts.clear()
            if self._synced:
                request = realtime_pb2.SubscribePresenceRequest(channel=self.channel, after_serial=self.serial)
            else:
                request = realtime_pb2.SubscribePresenceRequest(channel=self.channel, sync=True)
            return stub.SubscribePresence(request, metadata=self.client._transport.metadata())

        def set_call(call: grpc.aio.UnaryStreamCall | None) -> None:
            self._call = call

        def again() -> None:
            self.resumes += 1

        responses = resumed(
            self.client._transport,
            open_call,
            what=f"presence subscription to {self.channel!r}",
            resume_timeout_s=self.client.resume_timeout_s,
            closed=lambda: self._closed,
            on_call=set_call,
            on_resume=again,
            hint=lambda: f"; resume with after={self.serial}",
        )
        async with contextlib.aclosing(responses):
            async for response in responses:
                if response.HasField("sync"):
                    if self._synced:
                        continue
                    parts.extend(response.sync.members)
                    if not response.sync.complete:
                        continue
                    members = tuple(Member.from_proto(member) for member in parts)
                    self.members = {member.key: member for member in members}
                    self.serial, self._synced = int(response.sync.serial), True
                    yield PresenceEvent(PresenceAction.SYNC, self.serial, members=members)
                    continue
                if not response.HasField("change"):
                    continue  # a heartbeat
                change = response.change
                member = Member.from_proto(change.member)
                if member.serial <= self.serial:
                    continue  # seen before a resume
                self.serial = member.serial
                action = _ACTIONS[change.action]
                if action is PresenceAction.LEAVE:
                    self.members.pop(member.key, None)
                else:
                    self.members[member.key] = member
                yield PresenceEvent(action, member.serial, member=member)


__all__ = ["Member", "Presence", "PresenceAction", "PresenceEvent", "PresenceSet", "PresenceWatch"]
