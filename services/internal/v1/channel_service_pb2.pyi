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
    __slots__ = ("serials", "duplicates")
    SERIALS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    serials: _containers.RepeatedScalarFieldContainer[int]
    duplicates: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, serials: _Optional[_Iterable[int]] = ..., duplicates: _Optional[_Iterable[bool]] = ...) -> None: ...

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

class SubscribeRequest(_message.Message):
    __slots__ = ("channel", "after_serial")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SERIAL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    after_serial: int
    def __init__(self, channel: _Optional[str] = ..., after_serial: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("messages", "gap")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    gap: _message_pb2.ContinuityLost
    def __init__(self, messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., gap: _Optional[_Union[_message_pb2.ContinuityLost, _Mapping]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("channel", "after_serial", "limit")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_SERIAL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    channel: str
    after_serial: int
    limit: int
    def __init__(self, channel: _Optional[str] = ..., after_serial: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("messages", "last_serial", "gap")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    LAST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    last_serial: int
    gap: _message_pb2.ContinuityLost
    def __init__(self, messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., last_serial: _Optional[int] = ..., gap: _Optional[_Union[_message_pb2.ContinuityLost, _Mapping]] = ...) -> None: ...

class GetChannelRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class GetChannelResponse(_message.Message):
    __slots__ = ("name", "owner", "epoch", "last_serial", "ring_version", "members")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_SERIAL_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    epoch: int
    last_serial: int
    ring_version: int
    members: int
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., epoch: _Optional[int] = ..., last_serial: _Optional[int] = ..., ring_version: _Optional[int] = ..., members: _Optional[int] = ...) -> None: ...

class PrepareRequest(_message.Message):
    __slots__ = ("channels",)
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    channels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, channels: _Optional[_Iterable[str]] = ...) -> None: ...

class PrepareResponse(_message.Message):
    __slots__ = ("queued",)
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    queued: int
    def __init__(self, queued: _Optional[int] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeResponse(_message.Message):
    __slots__ = ("node_id", "ring_version", "serving", "channels_serving", "channels_taking_over", "channels_prepared", "takeovers_done")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_SERVING_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_TAKING_OVER_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_PREPARED_FIELD_NUMBER: _ClassVar[int]
    TAKEOVERS_DONE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    ring_version: int
    serving: bool
    channels_serving: int
    channels_taking_over: int
    channels_prepared: int
    takeovers_done: int
    def __init__(self, node_id: _Optional[str] = ..., ring_version: _Optional[int] = ..., serving: _Optional[bool] = ..., channels_serving: _Optional[int] = ..., channels_taking_over: _Optional[int] = ..., channels_prepared: _Optional[int] = ..., takeovers_done: _Optional[int] = ...) -> None: ...

class HoldPresenceRequest(_message.Message):
    __slots__ = ("channel", "enter", "release")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ENTER_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    enter: _containers.RepeatedCompositeFieldContainer[HeldMember]
    release: _containers.RepeatedCompositeFieldContainer[PresenceMemberId]
    def __init__(self, channel: _Optional[str] = ..., enter: _Optional[_Iterable[_Union[HeldMember, _Mapping]]] = ..., release: _Optional[_Iterable[_Union[PresenceMemberId, _Mapping]]] = ...) -> None: ...

class HeldMember(_message.Message):
    __slots__ = ("tag", "client_id", "connection_id", "data", "rejoin")
    TAG_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REJOIN_FIELD_NUMBER: _ClassVar[int]
    tag: int
    client_id: str
    connection_id: str
    data: bytes
    rejoin: bool
    def __init__(self, tag: _Optional[int] = ..., client_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., data: _Optional[bytes] = ..., rejoin: _Optional[bool] = ...) -> None: ...

class PresenceMemberId(_message.Message):
    __slots__ = ("client_id", "connection_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    connection_id: str
    def __init__(self, client_id: _Optional[str] = ..., connection_id: _Optional[str] = ...) -> None: ...

class HoldPresenceResponse(_message.Message):
    __slots__ = ("results", "left")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[HeldResult]
    left: _containers.RepeatedCompositeFieldContainer[PresenceMemberId]
    def __init__(self, results: _Optional[_Iterable[_Union[HeldResult, _Mapping]]] = ..., left: _Optional[_Iterable[_Union[PresenceMemberId, _Mapping]]] = ...) -> None: ...

class HeldResult(_message.Message):
    __slots__ = ("tag", "serial", "error")
    TAG_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tag: int
    serial: int
    error: _status_pb2.Status
    def __init__(self, tag: _Optional[int] = ..., serial: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ChangePresenceRequest(_message.Message):
    __slots__ = ("channel", "client_id", "connection_id", "data", "leave")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LEAVE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    client_id: str
    connection_id: str
    data: bytes
    leave: bool
    def __init__(self, channel: _Optional[str] = ..., client_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., data: _Optional[bytes] = ..., leave: _Optional[bool] = ...) -> None: ...

class ChangePresenceResponse(_message.Message):
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
    __slots__ = ("sync", "changes")
    SYNC_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    sync: _presence_pb2.PresenceSync
    changes: _containers.RepeatedCompositeFieldContainer[_presence_pb2.PresenceChange]
    def __init__(self, sync: _Optional[_Union[_presence_pb2.PresenceSync, _Mapping]] = ..., changes: _Optional[_Iterable[_Union[_presence_pb2.PresenceChange, _Mapping]]] = ...) -> None: ...
