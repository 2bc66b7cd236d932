from google.rpc import status_pb2 as _status_pb2
from ringcast.v1 import message_pb2 as _message_pb2
from ringcast.v1 import presence_pb2 as _presence_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("channel", "messages")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    channel: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    def __init__(self, channel: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("channel", "serials", "duplicates")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    channel: str
    serials: _containers.RepeatedScalarFieldContainer[int]
    duplicates: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, channel: _Optional[str] = ..., serials: _Optional[_Iterable[int]] = ..., duplicates: _Optional[_Iterable[bool]] = ...) -> None: ...

class PublishStreamRequest(_message.Message):
    __slots__ = ("channel", "messages")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    channel: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    def __init__(self, channel: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ...) -> None: ...

class PublishStreamResponse(_message.Message):
    __slots__ = ("channel", "serials", "duplicates", "error")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    channel: str
    serials: _containers.RepeatedScalarFieldContainer[int]
    duplicates: _containers.RepeatedScalarFieldContainer[bool]
    error: _status_pb2.Status
    def __init__(self, channel: _Optional[str] = ..., serials: _Optional[_Iterable[int]] = ..., duplicates: _Optional[_Iterable[bool]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("channel", "after_serial", "rewind", "latest", "batch_max")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SERIAL_FIELD_NUMBER: _ClassVar[int]
    REWIND_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    BATCH_MAX_FIELD_NUMBER: _ClassVar[int]
    channel: str
    after_serial: int
    rewind: int
    latest: bool
    batch_max: int
    def __init__(self, channel: _Optional[str] = ..., after_serial: _Optional[int] = ..., rewind: _Optional[int] = ..., latest: _Optional[bool] = ..., batch_max: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("message", "gap", "messages")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    gap: _message_pb2.ContinuityLost
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ..., gap: _Optional[_Union[_message_pb2.ContinuityLost, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("channel", "after_serial", "limit", "reverse")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SERIAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    after_serial: int
    limit: int
    reverse: bool
    def __init__(self, channel: _Optional[str] = ..., after_serial: _Optional[int] = ..., limit: _Optional[int] = ..., reverse: _Optional[bool] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("messages", "gap")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    gap: _message_pb2.ContinuityLost
    def __init__(self, messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., gap: _Optional[_Union[_message_pb2.ContinuityLost, _Mapping]] = ...) -> None: ...

class GetChannelRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class GetChannelResponse(_message.Message):
    __slots__ = ("name", "owner", "epoch", "last_serial", "ring_version", "occupancy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    OCCUPANCY_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    epoch: int
    last_serial: int
    ring_version: int
    occupancy: Occupancy
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., epoch: _Optional[int] = ..., last_serial: _Optional[int] = ..., ring_version: _Optional[int] = ..., occupancy: _Optional[_Union[Occupancy, _Mapping]] = ...) -> None: ...

class Occupancy(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: int
    def __init__(self, members: _Optional[int] = ...) -> None: ...

class EnterPresenceRequest(_message.Message):
    __slots__ = ("channel", "connection_id", "data", "client_id")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    channel: str
    connection_id: str
    data: bytes
    client_id: str
    def __init__(self, channel: _Optional[str] = ..., connection_id: _Optional[str] = ..., data: _Optional[bytes] = ..., client_id: _Optional[str] = ...) -> None: ...

class EnterPresenceResponse(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: int
    def __init__(self, serial: _Optional[int] = ...) -> None: ...

class UpdatePresenceRequest(_message.Message):
    __slots__ = ("channel", "connection_id", "data", "client_id")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    channel: str
    connection_id: str
    data: bytes
    client_id: str
    def __init__(self, channel: _Optional[str] = ..., connection_id: _Optional[str] = ..., data: _Optional[bytes] = ..., client_id: _Optional[str] = ...) -> None: ...

class UpdatePresenceResponse(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: int
    def __init__(self, serial: _Optional[int] = ...) -> None: ...

class LeavePresenceRequest(_message.Message):
    __slots__ = ("channel", "connection_id", "client_id")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    channel: str
    connection_id: str
    client_id: str
    def __init__(self, channel: _Optional[str] = ..., connection_id: _Optional[str] = ..., client_id: _Optional[str] = ...) -> None: ...

class LeavePresenceResponse(_message.Message):
    __slots__ = ("serial",)
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    serial: int
    def __init__(self, serial: _Optional[int] = ...) -> None: ...

class GetPresenceRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class GetPresenceResponse(_message.Message):
    __slots__ = ("members", "serial")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[_presence_pb2.PresenceMember]
    serial: int
    def __init__(self, members: _Optional[_Iterable[_Union[_presence_pb2.PresenceMember, _Mapping]]] = ..., serial: _Optional[int] = ...) -> None: ...

class SubscribePresenceRequest(_message.Message):
    __slots__ = ("channel", "sync", "after_serial")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    AFTER_SERIAL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    sync: bool
    after_serial: int
    def __init__(self, channel: _Optional[str] = ..., sync: _Optional[bool] = ..., after_serial: _Optional[int] = ...) -> None: ...

class SubscribePresenceResponse(_message.Message):
    __slots__ = ("sync", "change")
    SYNC_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    sync: _presence_pb2.PresenceSync
    change: _presence_pb2.PresenceChange
    def __init__(self, sync: _Optional[_Union[_presence_pb2.PresenceSync, _Mapping]] = ..., change: _Optional[_Union[_presence_pb2.PresenceChange, _Mapping]] = ...) -> None: ...

class PublishPipeRequest(_message.Message):
    __slots__ = ("publishes",)
    PUBLISHES_FIELD_NUMBER: _ClassVar[int]
    publishes: _containers.RepeatedCompositeFieldContainer[PipedPublish]
    def __init__(self, publishes: _Optional[_Iterable[_Union[PipedPublish, _Mapping]]] = ...) -> None: ...

class PipedPublish(_message.Message):
    __slots__ = ("tag", "publish", "timeout_ms", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAG_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    tag: int
    publish: PublishRequest
    timeout_ms: int
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, tag: _Optional[int] = ..., publish: _Optional[_Union[PublishRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublishPipeResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PipedPublishResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PipedPublishResult, _Mapping]]] = ...) -> None: ...

class PipedPublishResult(_message.Message):
    __slots__ = ("tag", "response", "error")
    TAG_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tag: int
    response: PublishResponse
    error: _status_pb2.Status
    def __init__(self, tag: _Optional[int] = ..., response: _Optional[_Union[PublishResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
