from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UnreachableOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNREACHABLE_OUTCOME_UNSPECIFIED: _ClassVar[UnreachableOutcome]
    UNREACHABLE_OUTCOME_REMOVED: _ClassVar[UnreachableOutcome]
    UNREACHABLE_OUTCOME_NOT_CONFIRMED: _ClassVar[UnreachableOutcome]
    UNREACHABLE_OUTCOME_NOT_A_MEMBER: _ClassVar[UnreachableOutcome]
UNREACHABLE_OUTCOME_UNSPECIFIED: UnreachableOutcome
UNREACHABLE_OUTCOME_REMOVED: UnreachableOutcome
UNREACHABLE_OUTCOME_NOT_CONFIRMED: UnreachableOutcome
UNREACHABLE_OUTCOME_NOT_A_MEMBER: UnreachableOutcome

class Member(_message.Message):
    __slots__ = ("id", "address", "zone")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    zone: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., zone: _Optional[str] = ...) -> None: ...

class Ring(_message.Message):
    __slots__ = ("version", "members", "stores", "revision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    STORES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    version: int
    members: _containers.RepeatedCompositeFieldContainer[Member]
    stores: _containers.RepeatedCompositeFieldContainer[Member]
    revision: int
    def __init__(self, version: _Optional[int] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., stores: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: str
    def __init__(self, channel: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("owner", "ring_version")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    owner: Member
    ring_version: int
    def __init__(self, owner: _Optional[_Union[Member, _Mapping]] = ..., ring_version: _Optional[int] = ...) -> None: ...

class GetRingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRingRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class ReportUnreachableRequest(_message.Message):
    __slots__ = ("member_id", "address")
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    member_id: str
    address: str
    def __init__(self, member_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ReportUnreachableResponse(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: UnreachableOutcome
    def __init__(self, outcome: _Optional[_Union[UnreachableOutcome, str]] = ...) -> None: ...
