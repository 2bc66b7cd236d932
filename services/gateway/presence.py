"""Presence at the gateway: every member a gateway holds in a channel, on one stream to its owner.

Rules:

1. A gateway holds a member while at least one client stream (EnterPresence) for it is open here.
   All the members of one channel held here share one HoldPresence stream to the channel's owner
   (`PresenceLink`): an owner holds a room's members connected at the cost of a stream per gateway,
   not one per member, and a gateway's connection to an owner carries any number of members.
2. Each client stream sends an enter (with its data) and waits for the owner's answer: the serial
   the member is present at, or the refusal to end the client's stream with.
3. The link follows the channel's owner like a subscription does (`owner_responses`): after any
   failure it opens a new stream at the current owner and enters every member it holds again as a
   *rejoin* (a member still present keeps its data, which may have been updated since), and enters
   the ones still waiting for an answer as they were sent. The owner releases every member of a
   stream that ends, so a dead gateway's members start their grace at once.
4. When the last client stream of a member ends, the link releases it (its grace begins at the
   owner). The owner says which held members left (LeavePresence through any gateway): their
   client streams end OK. A link with no members closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from ringcast.pipe import status_error
from ringcast.reasons import Reason
from services.common.errors import ServiceError, passthrough
from services.gateway.feed import owner_responses
from services.internal.v1 import channel_service_pb2 as channel_pb2
from services.internal.v1 import channel_service_pb2_grpc as channel_grpc

if TYPE_CHECKING:
    from services.gateway.router import OwnerRouter

log = logging.getLogger("ringcast.gateway")

MemberKey = tuple[str, str]


@dataclass
class _Member:
    data: bytes
    streams: int = 0
    entered: bool = False
    """The owner has answered an enter of it (so opening a new stream rejoins it)."""
    waiting: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    """Enters sent and not answered yet, by tag."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the member left or the link failed: its client streams end."""
    failure: ServiceError | None = None


class PresenceLink:
    """One channel's members held at this gateway, on one stream to the channel's owner."""

    def __init__(self, links: PresenceLinks, channel: str) -> None:
        self.links = links
        self.channel = channel
        self.members: dict[MemberKey, _Member] = {}
        self.tags = itertools.count(1)
        self.tag_of: dict[int, MemberKey] = {}
        self.rejoins: dict[int, MemberKey] = {}
        """Rejoins sent on the current stream and not answered yet, by tag."""
        self.outbox: asyncio.Queue[channel_pb2.HoldPresenceRequest] | None = None
        self.task = asyncio.create_task(self._run(), name=f"presence-link-{channel}")

    def _send(self, request: channel_pb2.HoldPresenceRequest) -> None:
        if self.outbox is not None:
            self.outbox.put_nowait(request)

    def _held(self, key: MemberKey, member: _Member, tag: int) -> channel_pb2.HeldMember:
        return channel_pb2.HeldMember(
            tag=tag, client_id=key[0], connection_id=key[1], data=member.data, rejoin=member.entered
        )

    async def enter(self, key: MemberKey, data: bytes) -> tuple[_Member, int]:
        """Hold `key` for one more client stream and enter it with `data` (rule 2): the member and
        the serial it is present at; ServiceError if refused."""
        member = self.members.get(key)
        if member is None:
            member = self.members[key] = _Member(data)
        member.streams += 1
        member.data = data
        tag = next(self.tags)
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        member.waiting[tag] = answer
        self.tag_of[tag] = key
        self._send(channel_pb2.HoldPresenceRequest(channel=self.channel, enter=[self._held(key, member, tag)]))
        try:
            return member, await answer
        except BaseException:
            self.release(key)
            raise
        finally:
            member.waiting.pop(tag, None)
            self.tag_of.pop(tag, None)

    def release(self, key: MemberKey) -> None:
        """One client stream of `key` ended; the last one releases the member (rule 4)."""
        member = self.members.get(key)
        if member is None:
            return
        member.streams -= 1
        if member.streams > 0:
            return
        del self.members[key]
        released = channel_pb2.PresenceMemberId(client_id=key[0], connection_id=key[1])
        self._send(channel_pb2.HoldPresenceRequest(channel=self.channel, release=[released]))
        if not self.members:
            self.links.close(self)

    def _opened(self) -> channel_pb2.HoldPresenceRequest:
        """What a new stream starts with: every member held, entered again (rule 3); a rejoin gets
        a tag of its own, so a refusal ends that member's client streams."""
        entries = []
        for key, member in self.members.items():
            if member.waiting:
                entries += [self._held(key, member, tag) for tag in member.waiting]
            else:
                tag = next(self.tags)
                self.rejoins[tag] = key
                entries.append(self._held(key, member, tag))
        return channel_pb2.HoldPresenceRequest(channel=self.channel, enter=entries)

    async def _run(self) -> None:
        def open_call(stub: channel_grpc.ChannelServiceStub) -> grpc.aio.StreamStreamCall:
            outbox: asyncio.Queue[channel_pb2.HoldPresenceRequest] = asyncio.Queue()
            self.rejoins.clear()
            outbox.put_nowait(self._opened())
            self.outbox = outbox

            async def requests() -> AsyncIterator[channel_pb2.HoldPresenceRequest]:
                while True:
                    yield await outbox.get()

            return stub.HoldPresence(requests())

        try:
            responses = owner_responses(self.links.router, self.channel, open_call)
            async with contextlib.aclosing(responses):
                async for response in responses:
                    self._answered(response)
        except ServiceError as error:
            self._fail(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must end these members' streams, not leave them hanging
            log.exception("holding the presence of %s failed", self.channel)
            self._fail(ServiceError(grpc.StatusCode.INTERNAL, Reason.INTERNAL, f"{type(error).__name__}: {error}"))
        finally:
            self.outbox = None

    def _answered(self, response: channel_pb2.HoldPresenceResponse) -> None:
        for result in response.results:
            error = passthrough(status_error(result.error)) if result.HasField("error") else None
            rejoined = self.rejoins.pop(result.tag, None)
            if rejoined is not None:
                member = self.members.get(rejoined)
                if member is not None and error is not None:  # no longer present, and refused again
                    member.failure = error
                    member.ended.set()
                continue
            key = self.tag_of.get(result.tag)
            member = self.members.get(key) if key is not None else None
            answer = member.waiting.get(result.tag) if member is not None else None
            if member is None or answer is None or answer.done():
                continue
            if error is not None:
                answer.set_exception(error)
            else:
                member.entered = True
                answer.set_result(int(result.serial))
        for gone in response.left:
            member = self.members.get((gone.client_id, gone.connection_id))
            if member is not None:
                member.ended.set()

    def _fail(self, error: ServiceError) -> None:
        for member in self.members.values():
            member.failure = error
            member.ended.set()
            for answer in member.waiting.values():
                if not answer.done():
                    answer.set_exception(error)
        self.links.close(self)


class PresenceLinks:
    """Every channel's `PresenceLink` at this gateway."""

    def __init__(self, router: OwnerRouter) -> None:
        self.router = router
        self.links: dict[str, PresenceLink] = {}

    def link(self, channel: str) -> PresenceLink:
        link = self.links.get(channel)
        if link is None or link.task.done():
            link = self.links[channel] = PresenceLink(self, channel)
        return link

    def close(self, link: PresenceLink) -> None:
        if self.links.get(link.channel) is link:
            del self.links[link.channel]
        if link.task is not asyncio.current_task():
            link.task.cancel()

    async def hold(self, channel: str, key: MemberKey, data: bytes, heartbeat_s: float) -> AsyncGenerator[int, None]:
        """A client stream holding `key` present: yields the serial it is present at, then 0 each
        `heartbeat_s`; returns when the member left; raises ServiceError when it cannot go on."""
        link = self.link(channel)
        member, serial = await link.enter(key, data)
        try:
            yield serial
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(member.ended.wait(), heartbeat_s)
                if member.failure is not None:
                    raise member.failure
                if member.ended.is_set():
                    return
                yield 0
        finally:
            link.release(key)

    async def close_all(self) -> None:
        for link in list(self.links.values()):
            link.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link.task
        self.links.clear()


__all__ = ["PresenceLink", "PresenceLinks"]
