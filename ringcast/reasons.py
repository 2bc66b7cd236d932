"""Every reason the platform and the SDK give, in one list: the `reason` of a RingcastError, of the
google.rpc.ErrorInfo (domain "ringcast") every failed call carries, of a subscription's end and of
an owner's step-down (logs, metrics, traces).

`Reason` is a `str` enum, so `error.reason == Reason.CHANNEL_MOVED` and `error.reason ==
"CHANNEL_MOVED"` both hold; other languages compare the strings. docs/architecture.md ("Errors")
describes each, and tests/test_reasons.py fails when code gives a reason that is not here or this
list has one the docs do not describe. A reason may also be a gRPC code's name (UNAVAILABLE,
DEADLINE_EXCEEDED...) when a call failed before the platform could say more.

This module is pure (it imports only `enum`): the core gives these reasons too.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # INVALID_ARGUMENT: the request is wrong; never retried.
    CHANNEL_NAME_EMPTY = "CHANNEL_NAME_EMPTY"
    CHANNEL_NAME_INVALID = "CHANNEL_NAME_INVALID"
    CHANNEL_NAME_TOO_LONG = "CHANNEL_NAME_TOO_LONG"
    BATCH_EMPTY = "BATCH_EMPTY"
    BATCH_TOO_MANY_MESSAGES = "BATCH_TOO_MANY_MESSAGES"
    BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    MESSAGE_ID_MISSING = "MESSAGE_ID_MISSING"
    MESSAGE_ID_TOO_LONG = "MESSAGE_ID_TOO_LONG"
    MESSAGE_ID_INVALID = "MESSAGE_ID_INVALID"
    MESSAGE_NAME_TOO_LONG = "MESSAGE_NAME_TOO_LONG"
    TOO_MANY_HEADERS = "TOO_MANY_HEADERS"
    HEADER_INVALID = "HEADER_INVALID"
    PLATFORM_FIELD_SET = "PLATFORM_FIELD_SET"
    DUPLICATE_ID_IN_BATCH = "DUPLICATE_ID_IN_BATCH"
    TOO_MANY_PUBLISHES = "TOO_MANY_PUBLISHES"
    TOO_MANY_CHANNELS = "TOO_MANY_CHANNELS"
    TOO_MANY_FENCES = "TOO_MANY_FENCES"
    TOO_MANY_APPENDS = "TOO_MANY_APPENDS"
    TOO_MANY_READS = "TOO_MANY_READS"
    VALUE_OUT_OF_RANGE = "VALUE_OUT_OF_RANGE"
    REQUEST_UNDECODABLE = "REQUEST_UNDECODABLE"
    CONNECTION_ID_INVALID = "CONNECTION_ID_INVALID"
    CLIENT_ID_INVALID = "CLIENT_ID_INVALID"
    PRESENCE_DATA_TOO_LARGE = "PRESENCE_DATA_TOO_LARGE"

    # UNAVAILABLE: retry (a publish with the same ids: a stored id keeps its serial).
    CHANNEL_MOVED = "CHANNEL_MOVED"
    QUORUM_UNAVAILABLE = "QUORUM_UNAVAILABLE"
    LEASE_LOST = "LEASE_LOST"
    OWNER_OVERLOADED = "OWNER_OVERLOADED"
    TAKEOVER_BACKOFF = "TAKEOVER_BACKOFF"
    TAKEOVER_ATTEMPTS_EXHAUSTED = "TAKEOVER_ATTEMPTS_EXHAUSTED"
    COMMIT_TIMEOUT = "COMMIT_TIMEOUT"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    RING_UNKNOWN = "RING_UNKNOWN"
    NO_CHANNEL_NODES = "NO_CHANNEL_NODES"
    OWNER_UNREACHABLE = "OWNER_UNREACHABLE"
    SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
    SUBSCRIPTION_MOVED = "SUBSCRIPTION_MOVED"
    TOO_MANY_SUBSCRIBERS = "TOO_MANY_SUBSCRIBERS"
    STORE_OVERLOADED = "STORE_OVERLOADED"
    STORE_WRITE_FAILED = "STORE_WRITE_FAILED"

    # FAILED_PRECONDITION: NOT_OWNER (gateway ↔ channel): ask placement for the ring and go where it
    # says; CURSOR_BEYOND_END: a cursor above the channel's last serial (a stale or wrong one);
    # EPOCH_AHEAD_OF_RING (internal, store): a fence or append at an epoch no ring version has made;
    # HISTORY_DISABLED / PRESENCE_DISABLED: the channel's namespace has history / presence off;
    # NOT_PRESENT: an update of a member that is not in the presence set.
    NOT_OWNER = "NOT_OWNER"
    CURSOR_BEYOND_END = "CURSOR_BEYOND_END"
    EPOCH_AHEAD_OF_RING = "EPOCH_AHEAD_OF_RING"
    HISTORY_DISABLED = "HISTORY_DISABLED"
    PRESENCE_DISABLED = "PRESENCE_DISABLED"
    NOT_PRESENT = "NOT_PRESENT"

    # OUT_OF_RANGE: what a reader asked for is no longer retained (ContinuityLost).
    RETENTION_EXPIRED = "RETENTION_EXPIRED"
    SERIAL_GAP = "SERIAL_GAP"

    # UNAUTHENTICATED: the caller is not who it must be; a new token (or certificate) is needed.
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    PEER_UNIDENTIFIED = "PEER_UNIDENTIFIED"

    # PERMISSION_DENIED: the caller is known but may not do this.
    CAPABILITY_DENIED = "CAPABILITY_DENIED"
    CLIENT_ID_MISMATCH = "CLIENT_ID_MISMATCH"
    ROLE_DENIED = "ROLE_DENIED"

    # RESOURCE_EXHAUSTED: too much, too fast; retry after the RetryInfo delay.
    RATE_LIMITED = "RATE_LIMITED"
    MEMBER_CAP_REACHED = "MEMBER_CAP_REACHED"

    # INTERNAL: a bug or broken invariant, reported rather than served.
    INTERNAL = "INTERNAL"
    OUT_OF_ORDER = "OUT_OF_ORDER"
    STORE_INVARIANT = "STORE_INVARIANT"

    # Why an owner stepped down (logs, metrics, traces); its callers see CHANNEL_MOVED or LEASE_LOST.
    FENCED = "FENCED"
    COMMIT_STALLED = "COMMIT_STALLED"
    IDLE = "IDLE"
    TAKEOVER_TIMEOUT = "TAKEOVER_TIMEOUT"
    RECOVERY_READ_FAILED = "RECOVERY_READ_FAILED"
    STORES_UNREACHABLE = "STORES_UNREACHABLE"

    # The SDK's own (no call was answered, or the client refused locally).
    NO_ANSWER = "NO_ANSWER"
    STREAM_ENDED = "STREAM_ENDED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CLIENT_QUEUE_FULL = "CLIENT_QUEUE_FULL"
    CLIENT_CLOSED = "CLIENT_CLOSED"
    UNKNOWN = "UNKNOWN"


__all__ = ["Reason"]
