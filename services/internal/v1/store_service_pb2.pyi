from ringcast.v1 import message_pb2 as _message_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppendStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPEND_STATUS_UNSPECIFIED: _ClassVar[AppendStatus]
    APPEND_STATUS_OK: _ClassVar[AppendStatus]
    APPEND_STATUS_FENCED: _ClassVar[AppendStatus]
    APPEND_STATUS_MISMATCH: _ClassVar[AppendStatus]
    APPEND_STATUS_CORRUPT: _ClassVar[AppendStatus]
    APPEND_STATUS_INVALID: _ClassVar[AppendStatus]
    APPEND_STATUS_DATA_LOSS: _ClassVar[AppendStatus]
APPEND_STATUS_UNSPECIFIED: AppendStatus
APPEND_STATUS_OK: AppendStatus
APPEND_STATUS_FENCED: AppendStatus
APPEND_STATUS_MISMATCH: AppendStatus
APPEND_STATUS_CORRUPT: AppendStatus
APPEND_STATUS_INVALID: AppendStatus
APPEND_STATUS_DATA_LOSS: AppendStatus

class LogPosition(_message.Message):
    __slots__ = ("serial", "epoch")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    serial: int
    epoch: int
    def __init__(self, serial: _Optional[int] = ..., epoch: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("serial", "epoch", "message", "checksum")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    serial: int
    epoch: int
    message: _message_pb2.Message
    checksum: int
    def __init__(self, serial: _Optional[int] = ..., epoch: _Optional[int] = ..., message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ..., checksum: _Optional[int] = ...) -> None: ...

class FenceRequest(_message.Message):
    __slots__ = ("fences",)
    FENCES_FIELD_NUMBER: _ClassVar[int]
    fences: _containers.RepeatedCompositeFieldContainer[ChannelFence]
    def __init__(self, fences: _Optional[_Iterable[_Union[ChannelFence, _Mapping]]] = ...) -> None: ...

class ChannelFence(_message.Message):
    __slots__ = ("channel", "epoch")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    channel: str
    epoch: int
    def __init__(self, channel: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class FenceResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChannelFenceResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ChannelFenceResult, _Mapping]]] = ...) -> None: ...

class ChannelFenceResult(_message.Message):
    __slots__ = ("fenced", "fence_epoch", "last", "damaged_serial")
    FENCED_FIELD_NUMBER: _ClassVar[int]
    FENCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    fenced: bool
    fence_epoch: int
    last: LogPosition
    damaged_serial: int
    def __init__(self, fenced: _Optional[bool] = ..., fence_epoch: _Optional[int] = ..., last: _Optional[_Union[LogPosition, _Mapping]] = ..., damaged_serial: _Optional[int] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("appends",)
    APPENDS_FIELD_NUMBER: _ClassVar[int]
    appends: _containers.RepeatedCompositeFieldContainer[ChannelAppend]
    def __init__(self, appends: _Optional[_Iterable[_Union[ChannelAppend, _Mapping]]] = ...) -> None: ...

class ChannelAppend(_message.Message):
    __slots__ = ("channel", "epoch", "prev", "entries", "commit", "from_base", "owner_now_ms", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    FROM_BASE_FIELD_NUMBER: _ClassVar[int]
    OWNER_NOW_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    channel: str
    epoch: int
    prev: LogPosition
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    commit: int
    from_base: bool
    owner_now_ms: int
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, channel: _Optional[str] = ..., epoch: _Optional[int] = ..., prev: _Optional[_Union[LogPosition, _Mapping]] = ..., entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., commit: _Optional[int] = ..., from_base: _Optional[bool] = ..., owner_now_ms: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("results", "commit")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChannelAppendResult]
    commit: StoreCommit
    def __init__(self, results: _Optional[_Iterable[_Union[ChannelAppendResult, _Mapping]]] = ..., commit: _Optional[_Union[StoreCommit, _Mapping]] = ...) -> None: ...

class StoreCommit(_message.Message):
    __slots__ = ("id", "requests", "ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    requests: int
    ms: float
    def __init__(self, id: _Optional[int] = ..., requests: _Optional[int] = ..., ms: _Optional[float] = ...) -> None: ...

class ChannelAppendResult(_message.Message):
    __slots__ = ("status", "fence_epoch", "last", "match_serial", "conflict_epoch", "conflict_first_serial", "detail", "base", "damaged_serial", "store_now_ms")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FENCE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MATCH_SERIAL_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIRST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    STORE_NOW_MS_FIELD_NUMBER: _ClassVar[int]
    status: AppendStatus
    fence_epoch: int
    last: LogPosition
    match_serial: int
    conflict_epoch: int
    conflict_first_serial: int
    detail: str
    base: LogPosition
    damaged_serial: int
    store_now_ms: int
    def __init__(self, status: _Optional[_Union[AppendStatus, str]] = ..., fence_epoch: _Optional[int] = ..., last: _Optional[_Union[LogPosition, _Mapping]] = ..., match_serial: _Optional[int] = ..., conflict_epoch: _Optional[int] = ..., conflict_first_serial: _Optional[int] = ..., detail: _Optional[str] = ..., base: _Optional[_Union[LogPosition, _Mapping]] = ..., damaged_serial: _Optional[int] = ..., store_now_ms: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("reads",)
    READS_FIELD_NUMBER: _ClassVar[int]
    reads: _containers.RepeatedCompositeFieldContainer[ChannelRead]
    def __init__(self, reads: _Optional[_Iterable[_Union[ChannelRead, _Mapping]]] = ...) -> None: ...

class ChannelRead(_message.Message):
    __slots__ = ("channel", "after_serial", "limit", "ids_only")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SERIAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    channel: str
    after_serial: int
    limit: int
    ids_only: bool
    def __init__(self, channel: _Optional[str] = ..., after_serial: _Optional[int] = ..., limit: _Optional[int] = ..., ids_only: _Optional[bool] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ChannelReadResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ChannelReadResult, _Mapping]]] = ...) -> None: ...

class ChannelReadResult(_message.Message):
    __slots__ = ("entries", "last", "damaged_serial", "ids", "timestamps_ms", "base")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_SERIAL_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    last: LogPosition
    damaged_serial: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    timestamps_ms: _containers.RepeatedScalarFieldContainer[int]
    base: LogPosition
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., last: _Optional[_Union[LogPosition, _Mapping]] = ..., damaged_serial: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., timestamps_ms: _Optional[_Iterable[int]] = ..., base: _Optional[_Union[LogPosition, _Mapping]] = ...) -> None: ...
