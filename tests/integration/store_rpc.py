"""Talking to a store process over gRPC in the store tests: starting one, its stub, and one-call
helpers for fence, append and read."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from services.common.convert import entry_from_proto, entry_to_proto, position_to_proto
from services.common.errors import error_info
from services.core.entries import Entry, Message, Position
from services.internal.v1 import store_service_pb2 as store_pb2
from services.internal.v1 import store_service_pb2_grpc as store_grpc
from tests.integration.procs import ServiceProcess, ServiceProcesses

call_timeout_s = 10.0


def start_store(processes: ServiceProcesses, data_dir: Path, address: str | None = None) -> ServiceProcess:
    return processes.start(
        "services.store", ["--id", "store-t", "--zone", "t", "--data-dir", str(data_dir)], address=address
    )


def stub_of(process: ServiceProcess) -> tuple[grpc.Channel, store_grpc.StoreServiceStub]:
    channel = grpc.insecure_channel(process.address)
    return channel, store_grpc.StoreServiceStub(channel)


def make_entries(first_serial: int, epochs: Sequence[int], tag: str = "m") -> list[Entry]:
    return [
        Entry.make(first_serial + index, epoch, Message(f"{tag}-{first_serial + index}", data=b"payload"))
        for index, epoch in enumerate(epochs)
    ]


def channel_append(name: str, epoch: int, prev: Position, entries: Sequence[Entry]) -> store_pb2.ChannelAppend:
    return store_pb2.ChannelAppend(
        channel=name, epoch=epoch, prev=position_to_proto(prev), entries=[entry_to_proto(e) for e in entries]
    )


def append_one(stub: store_grpc.StoreServiceStub, append: store_pb2.ChannelAppend) -> store_pb2.ChannelAppendResult:
    response = stub.Append(store_pb2.AppendRequest(appends=[append]), timeout=call_timeout_s)
    [result] = response.results
    return result


def fence_one(stub: store_grpc.StoreServiceStub, name: str, epoch: int) -> store_pb2.ChannelFenceResult:
    request = store_pb2.FenceRequest(fences=[store_pb2.ChannelFence(channel=name, epoch=epoch)])
    [result] = stub.Fence(request, timeout=call_timeout_s).results
    return result


def read_result(
    stub: store_grpc.StoreServiceStub, name: str, after_serial: int = 0, limit: int = 0
) -> store_pb2.ChannelReadResult:
    request = store_pb2.ReadRequest(reads=[store_pb2.ChannelRead(channel=name, after_serial=after_serial, limit=limit)])
    [result] = stub.Read(request, timeout=call_timeout_s).results
    return result


def serials_in(database: Path, name: str) -> list[int]:
    """The serials of `name`'s rows in the store's SQLite file, read past the store."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=call_timeout_s) as connection:
        rows = connection.execute("SELECT serial FROM entries WHERE channel = ? ORDER BY serial", (name,))
        return [int(row[0]) for row in rows]


def read_entries(stub: store_grpc.StoreServiceStub, name: str, after_serial: int = 0, limit: int = 0) -> list[Entry]:
    return [entry_from_proto(entry) for entry in read_result(stub, name, after_serial, limit).entries]


def refusal_of(call: object) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a call expected to fail."""
    assert isinstance(call, grpc.RpcError)
    info = error_info(call)
    assert info is not None and info.domain == "ringcast"
    return call.code(), info.reason  # type: ignore[attr-defined]


def failure_of(operation: object) -> grpc.RpcError:
    assert callable(operation)
    with pytest.raises(grpc.RpcError) as failure:
        operation()
    return failure.value
