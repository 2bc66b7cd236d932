from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PresenceAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_ACTION_UNSPECIFIED: _ClassVar[PresenceAction]
    PRESENCE_ACTION_ENTER: _ClassVar[PresenceAction]
    PRESENCE_ACTION_UPDATE: _ClassVar[PresenceAction]
    PRESENCE_ACTION_LEAVE: _ClassVar[PresenceAction]
PRESENCE_ACTION_UNSPECIFIED: PresenceAction
PRESENCE_ACTION_ENTER: PresenceAction
PRESENCE_ACTION_UPDATE: PresenceAction
PRESENCE_ACTION_LEAVE: PresenceAction

class PresenceMember(_message.Message):
    __slots__ = ("client_id", "connection_id", "data", "serial", "timestamp_ms")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    connection_id: str
    data: bytes
    serial: int
    timestamp_ms: int
    def __init__(self, client_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., data: _Optional[bytes] = ..., serial: _Optional[int] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class PresenceChange(_message.Message):
    __slots__ = ("action", "member")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    action: PresenceAction
    member: PresenceMember
    def __init__(self, action: _Optional[_Union[PresenceAction, str]] = ..., member: _Optional[_Union[PresenceMember, _Mapping]] = ...) -> None: ...

class PresenceSync(_message.Message):
    __slots__ = ("members", "serial", "complete")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[PresenceMember]
    serial: int
    complete: bool
    def __init__(self, members: _Optional[_Iterable[_Union[PresenceMember, _Mapping]]] = ..., serial: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...
