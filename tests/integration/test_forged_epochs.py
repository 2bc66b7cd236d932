"""A fence or append at an epoch no ring version has made is refused by the store (issue #16, item 6).

Before: `Fence` at epoch 2^63-1 on two stores raised the channel's fence for good; every later owner's
epoch stayed below it, so Publish, GetChannel and History on that channel answered UNAVAILABLE
forever. Now each store compares the epoch's ring version with etcd's revision plus the version
offset, and refuses it (FAILED_PRECONDITION / EPOCH_AHEAD_OF_RING), while the owner goes on.
"""

from __future__ import annotations

import grpc
import pytest

from ringcast.reasons import Reason
from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from ringcast_tools.cluster.launcher import Launcher
from services.common.errors import error_info
from services.core.entries import EPOCH_ATTEMPTS_PER_VERSION, Position
from services.internal.v1 import store_service_pb2 as store_pb2
from services.internal.v1 import store_service_pb2_grpc as store_grpc
from tests.integration.store_rpc import channel_append, make_entries

EPOCH_MAX = 2**63 - 1
CHANNEL = "forged-epochs"


def publish(gateway: str, message_id: str) -> int:
    with grpc.insecure_channel(gateway) as link:
        response = realtime_grpc.RealtimeServiceStub(link).Publish(
            realtime_pb2.PublishRequest(channel=CHANNEL, messages=[message_pb2.Message(id=message_id, data=b"x")]),
            timeout=30,
        )
    return int(response.serials[0])


def channel_epoch(gateway: str) -> int:
    with grpc.insecure_channel(gateway) as link:
        info = realtime_grpc.RealtimeServiceStub(link).GetChannel(
            realtime_pb2.GetChannelRequest(channel=CHANNEL), timeout=30
        )
    return int(info.epoch)


def history_ids(gateway: str) -> list[str]:
    with grpc.insecure_channel(gateway) as link:
        page = realtime_grpc.RealtimeServiceStub(link).History(
            realtime_pb2.HistoryRequest(channel=CHANNEL, limit=100), timeout=30
        )
    return [message.id for message in page.messages]


def refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_a_fence_or_append_above_every_ring_version_is_refused_and_the_channel_goes_on(cluster: Launcher) -> None:
    gateway = cluster.topology.gateways[0]
    assert publish(gateway, "before") == 1
    epoch = channel_epoch(gateway)
    stores = [spec.address for spec in cluster.topology.by_role("store")]
    forged = make_entries(2, [EPOCH_MAX], tag="forged")
    for address in stores:
        with grpc.insecure_channel(address) as link:
            store = store_grpc.StoreServiceStub(link)
            fence = store_pb2.FenceRequest(fences=[store_pb2.ChannelFence(channel=CHANNEL, epoch=EPOCH_MAX)])
            error = refused(lambda store=store, fence=fence: store.Fence(fence, timeout=10))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            info = error_info(error)
            assert info is not None and info.reason == Reason.EPOCH_AHEAD_OF_RING
            ceiling = int(info.metadata["ring_version_ceiling"])
            assert epoch // EPOCH_ATTEMPTS_PER_VERSION <= ceiling
            append = store_pb2.AppendRequest(appends=[channel_append(CHANNEL, EPOCH_MAX, Position(1, epoch), forged)])
            error = refused(lambda store=store, append=append: store.Append(append, timeout=10))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(error).reason == Reason.EPOCH_AHEAD_OF_RING  # type: ignore[union-attr]
            # The owner's own epoch passes: a fence at it changes nothing the owner has not done.
            store.Fence(store_pb2.FenceRequest(fences=[store_pb2.ChannelFence(channel=CHANNEL, epoch=epoch)]))
    assert publish(gateway, "after") == 2
    assert channel_epoch(gateway) == epoch
    assert history_ids(gateway) == ["before", "after"]
