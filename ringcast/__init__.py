"""ringcast: fault-tolerant realtime pub/sub. The Python SDK (the `ringcast` command and the rest of
the platform's tools live in `ringcast_tools`; this package imports nothing of them or of services).

    import ringcast

    async with ringcast.Client(["127.0.0.1:7409", "127.0.0.1:7410"]) as client:
        serial = await client.publish("chat:lobby", "hello")
        async for message in client.subscribe("chat:lobby", after=serial - 1):
            ...

See docs/quickstart.md.
"""

from ringcast._client import Client, HistoryPage
from ringcast._endpoints import EndpointState, EndpointStatus, HealthPolicy
from ringcast._errors import (
    ClientClosed,
    ContinuityLost,
    InvalidArgument,
    RingcastError,
    Unavailable,
    error_info,
    retry_delay,
)
from ringcast._presence import Member, Presence, PresenceAction, PresenceEvent, PresenceSet, PresenceWatch
from ringcast._subscription import Subscription
from ringcast._types import ChannelInfo, ClientStats, ConnectionState, Message, OutgoingMessage, StateChange
from ringcast.reasons import Reason

__all__ = [
    "ChannelInfo",
    "Client",
    "ClientClosed",
    "ClientStats",
    "ConnectionState",
    "ContinuityLost",
    "EndpointState",
    "EndpointStatus",
    "HealthPolicy",
    "HistoryPage",
    "InvalidArgument",
    "Member",
    "Message",
    "OutgoingMessage",
    "Presence",
    "PresenceAction",
    "PresenceEvent",
    "PresenceSet",
    "PresenceWatch",
    "Reason",
    "RingcastError",
    "StateChange",
    "Subscription",
    "Unavailable",
    "error_info",
    "retry_delay",
]
__version__ = "0.1.0"
