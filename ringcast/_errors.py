"""The errors the SDK raises. Each carries the gRPC code and the platform's reason (UPPER_SNAKE_CASE)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ringcast.reasons import Reason

DOMAIN = "ringcast"


class RingcastError(Exception):
    """A request the platform refused or could not serve.

    `code` is the gRPC status code, `reason` the platform's machine-readable reason (the
    google.rpc.ErrorInfo reason, else the code's name), `metadata` the ErrorInfo's metadata.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = Reason.UNKNOWN,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(RingcastError):
    """The request is wrong (a bad channel name, a message too large...). Never retried: fix the input."""


class Unavailable(RingcastError):
    """No gateway could serve the request before its deadline. `attempts` says what was tried.

    For a publish the outcome is unknown: the messages may have been stored. Publishing them again
    with the same ids (`ids`) is safe: a stored id returns its original serial.
    """

    def __init__(
        self, message: str, *, reason: str, attempts: int, endpoints: Sequence[str], ids: Sequence[str] = ()
    ) -> None:
        super().__init__(message, code=grpc.StatusCode.UNAVAILABLE, reason=reason)
        self.attempts = attempts
        self.endpoints = list(endpoints)
        self.ids = list(ids)


class ContinuityLost(RingcastError):
    """A subscription cannot go on without a gap: messages after `after_serial` up to `next_serial - 1`
    are no longer retained (`reason`, for example RETENTION_EXPIRED). Subscribe again with
    `after=next_serial - 1` to accept the gap, or read what is left with `history`."""

    def __init__(self, channel: str, after_serial: int, next_serial: int, reason: str) -> None:
        super().__init__(
            f"channel {channel!r}: messages after serial {after_serial} up to {next_serial - 1} are lost ({reason})",
            code=grpc.StatusCode.OUT_OF_RANGE,
            reason=reason,
        )
        self.channel = channel
        self.after_serial = after_serial
        self.next_serial = next_serial


class ClientClosed(RingcastError):
    """The client was closed; it takes no more requests."""

    def __init__(self) -> None:
        super().__init__("the client is closed", code=grpc.StatusCode.CANCELLED, reason=Reason.CLIENT_CLOSED)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a failed call carries in its trailers, if any."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # trailers that contradict the status line: treat as no detail
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def retry_delay(error: grpc.RpcError) -> float | None:
    """The google.rpc.RetryInfo delay a refusal carries (RATE_LIMITED), in seconds; None without one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, float(info.retry_delay.seconds) + float(info.retry_delay.nanos) / 1e9)
    return None


def from_rpc_error(error: grpc.aio.AioRpcError) -> RingcastError:
    """The SDK error for a failed call that is not retried."""
    info = error_info(error)
    code = error.code()
    reason = str(info.reason) if info is not None else code.name
    metadata = dict(info.metadata) if info is not None else {}
    kind = InvalidArgument if code == grpc.StatusCode.INVALID_ARGUMENT else RingcastError
    return kind(error.details() or code.name, code=code, reason=reason, metadata=metadata)
