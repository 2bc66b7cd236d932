"""Requests that cannot be decoded are refused as INVALID_ARGUMENT, with a reason, not a traceback.

grpc answers a request frame its deserializer rejects (invalid UTF-8 in a string field, a truncated
or garbled message) with UNKNOWN "Unexpected <class 'DecodeError'>" and logs an ERROR traceback for
every such call: no reason for the client, and a cheap way to flood the log. `DecodeGuard`, a server
interceptor, wraps every method's deserializer so a frame that does not decode becomes a marker,
and the method answers INVALID_ARGUMENT / REQUEST_UNDECODABLE without running. It logs one WARNING
line per client host per `log_interval_s` at most (bounded: `log_hosts_max`).

The same wrapper first asks the server's `Admission` (services/common/tls.py) whether the caller's
certificate may call the method at all, so a refused caller is answered before any method code runs.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ringcast.reasons import Reason
from services.common.errors import ServiceError, abort, invalid
from services.common.tls import OPEN, Admission

log = logging.getLogger("ringcast.decode")

log_interval_s = 60.0
"""At most one log line per client host this often."""

log_hosts_max = 1_024
"""Client hosts remembered for rate-limiting the log (the least recently logged is forgotten)."""

guarded_methods_max = 256
"""Methods whose guarded handler is kept (a process serves a few dozen)."""


class Undecodable:
    """What the guarded deserializer returns for a frame that does not decode."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _refusal(method: str, undecodable: Undecodable) -> ServiceError:
    return invalid(Reason.REQUEST_UNDECODABLE, f"{method}: the request does not decode: {undecodable.error}")


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, admission: Admission = OPEN) -> None:
        self.admission = admission
        self._logged: OrderedDict[str, float] = OrderedDict()
        # method → (the handler grpc gave, its guarded twin): wrapped once per method, not per call
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _note(self, context: grpc.aio.ServicerContext, method: str, undecodable: Undecodable) -> None:
        peer = context.peer() or "unknown"
        host = peer.rsplit(":", 1)[0]
        now = time.monotonic()
        last = self._logged.get(host)
        if last is not None and now - last < log_interval_s:
            return
        self._logged[host] = now
        self._logged.move_to_end(host)
        while len(self._logged) > log_hosts_max:
            self._logged.popitem(last=False)
        log.warning(
            "undecodable request from %s to %s: %s (one line per client per %.0f s)",
            peer,
            method,
            undecodable.error,
            log_interval_s,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = self._guard(method, handler)
        if len(self._guarded) < guarded_methods_max:
            self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        deserialize = handler.request_deserializer or (lambda data: data)  # admitted all the same

        def guarded(data: bytes) -> Any:
            try:
                return deserialize(data)
            except (DecodeError, UnicodeDecodeError, ValueError) as error:
                return Undecodable(error)

        if handler.unary_unary is not None:
            return handler._replace(request_deserializer=guarded, unary_unary=self._unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(
                request_deserializer=guarded, unary_stream=self._to_stream(method, handler.unary_stream)
            )
        if handler.stream_unary is not None:
            return handler._replace(
                request_deserializer=guarded, stream_unary=self._from_stream(method, handler.stream_unary)
            )
        return handler._replace(
            request_deserializer=guarded, stream_stream=self._streams(method, handler.stream_stream)
        )

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        refusal = self.admission.admit(method, context)
        if refusal is not None:
            await abort(context, refusal)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(method, context)
            if isinstance(request, Undecodable):
                self._note(context, method, request)
                await abort(context, _refusal(method, request))
            return await behavior(request, context)

        return unary

    def _to_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):  # a coroutine that writes with context.write (Watch)
            return self._unary(method, behavior)

        async def to_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(method, context)
            if isinstance(request, Undecodable):
                self._note(context, method, request)
                await abort(context, _refusal(method, request))
            async for response in behavior(request, context):
                yield response

        return to_stream

    def _checked(
        self, method: str, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    self._note(context, method, request)
                    raise _refusal(method, request)
                yield request

        return checked()

    def _from_stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def from_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await self._admit(method, context)
            try:
                return await behavior(self._checked(method, requests, context), context)
            except ServiceError as error:
                await abort(context, error)

        return from_stream

    def _streams(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):  # a coroutine that writes with context.write
            return self._from_stream(method, behavior)

        async def streams(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(method, context)
            try:
                async for response in behavior(self._checked(method, requests, context), context):
                    yield response
            except ServiceError as error:
                await abort(context, error)

        return streams


__all__ = ["DecodeGuard", "Undecodable"]
