"""gRPC errors with a machine-readable reason: canonical status code + one google.rpc.ErrorInfo.

Servers raise `ServiceError`; a unary handler decorated with `answers_errors` answers it as a rich
status (`abort` does it by hand in streams). Clients read the reason back with `reason_of`. Reasons
are UPPER_SNAKE_CASE, domain "ringcast".
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ringcast import error_info
from ringcast.reasons import Reason

DOMAIN = "ringcast"


class ServiceError(Exception):
    """An error a service answers with: a gRPC code, a reason, a human message, optional metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        metadata: Mapping[str, str] | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s
        """When set, the status also carries a google.rpc.RetryInfo with this delay."""

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        details = [detail]
        if self.retry_after_s is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromNanoseconds(int(self.retry_after_s * 1e9))
            again = any_pb2.Any()
            again.Pack(retry)
            details.append(again)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def invalid(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata)


def unavailable(reason: str, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, reason, message, metadata)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the call with `error` as a rich status (code, message and ErrorInfo in the trailers)."""
    await context.abort_with_status(rpc_status.to_status(error.to_status()))


Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")


def answers_errors(
    handler: Callable[[Servicer, Request, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Servicer, Request, grpc.aio.ServicerContext], Awaitable[Response]]:
    """The error tail of a unary gRPC handler, written once: a ServiceError raised inside is the
    call's status (code, message, ErrorInfo), and another service's failed call (an AioRpcError the
    handler let through) is handed on with its code and reason. Streaming handlers abort themselves."""

    @functools.wraps(handler)
    async def answering(self: Servicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await handler(self, request, context)
        except ServiceError as error:
            await abort(context, error)
            raise
        except grpc.aio.AioRpcError as error:
            await abort(context, passthrough(error))
            raise

    return answering


def status_of(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status for streams that report errors in-band (PublishStream)."""
    return error.to_status()


def reason_of(error: grpc.RpcError) -> str:
    """The reason of a failed call: its ErrorInfo reason, else the status code's name."""
    info = error_info(error)
    if info is not None:
        return str(info.reason)
    code = error.code() if hasattr(error, "code") else None
    return code.name if code is not None else Reason.UNKNOWN


__all__ = [
    "ServiceError",
    "abort",
    "answers_errors",
    "code_pb2",
    "error_info",
    "invalid",
    "passthrough",
    "reason_of",
    "refused",
    "status_of",
    "unavailable",
]


def refused(error: grpc.RpcError) -> bool:
    """The call failed because nothing listens at the address (gRPC's own wording): the process is gone."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and "Connection refused" in (error.details() or "")


def passthrough(error: grpc.RpcError) -> ServiceError:
    """Another service's answer, handed on with its code, reason and the ErrorInfo's metadata."""
    info = error_info(error)
    metadata = dict(info.metadata) if info is not None else None
    return ServiceError(error.code(), reason_of(error), error.details() or "refused", metadata)
