"""`ringcast publish | subscribe | history | ring`: the platform from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

import grpc

from ringcast.v1 import message_pb2, placement_service_pb2, placement_service_pb2_grpc
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common.errors import reason_of

resume_backoff_s_max = 2.0


def _cluster_state() -> dict[str, object] | None:
    path = Path.cwd() / ".ringcast" / "cluster.json"
    return dict(json.loads(path.read_text())) if path.exists() else None


def default_gateways() -> list[str]:
    """Every gateway of the local cluster (`ringcast up`), or the default address."""
    state = _cluster_state()
    gateways = state.get("gateways") if state else None
    if isinstance(gateways, list) and gateways:
        return [str(gateway) for gateway in gateways]
    return ["127.0.0.1:7409"]


def default_gateway() -> str:
    return default_gateways()[0]


def default_placement() -> str:
    state = _cluster_state() or {}
    processes = state.get("processes")
    for process in processes if isinstance(processes, list) else []:
        if process.get("role") == "placement":
            return str(process["address"])
    return "127.0.0.1:7402"


def _stub(address: str) -> realtime_grpc.RealtimeServiceStub:
    return realtime_grpc.RealtimeServiceStub(grpc.insecure_channel(address))


def _fail(error: grpc.RpcError) -> int:
    print(f"error: {error.code().name} {reason_of(error)}: {error.details()}", file=sys.stderr)
    return 1


def _message_json(message: message_pb2.Message) -> str:
    return json.dumps(
        {
            "serial": message.serial,
            "id": message.id,
            "name": message.name,
            "data": message.data.decode("utf-8", "replace"),
            "timestamp_ms": message.timestamp_ms,
        }
    )


def publish(arguments: argparse.Namespace) -> int:
    prefix = arguments.id or uuid.uuid4().hex
    ids = (
        [arguments.id]
        if arguments.id and len(arguments.data) == 1
        else [f"{prefix}-{i}" for i in range(len(arguments.data))]
    )
    messages = [
        message_pb2.Message(id=message_id, name=arguments.name, data=data.encode())
        for message_id, data in zip(ids, arguments.data, strict=True)
    ]
    request = realtime_pb2.PublishRequest(channel=arguments.channel, messages=messages)
    try:
        response = _stub(arguments.gateway).Publish(request, timeout=arguments.timeout)
    except grpc.RpcError as error:
        return _fail(error)
    for message, serial, duplicate in zip(messages, response.serials, response.duplicates, strict=True):
        print(json.dumps({"id": message.id, "serial": serial, "duplicate": duplicate}))
    return 0


def subscribe(arguments: argparse.Namespace) -> int:
    """Follow a channel; on any error, resume after the last serial received."""
    stub = _stub(arguments.gateway)
    if arguments.after is not None:
        request = realtime_pb2.SubscribeRequest(channel=arguments.channel, after_serial=arguments.after)
    elif arguments.rewind is not None:
        request = realtime_pb2.SubscribeRequest(channel=arguments.channel, rewind=arguments.rewind)
    else:
        request = realtime_pb2.SubscribeRequest(channel=arguments.channel, latest=True)
    received = 0
    backoff = 0.1
    while True:
        try:
            for response in stub.Subscribe(request):
                backoff = 0.1
                if response.WhichOneof("item") == "gap":
                    print(json.dumps({"gap": {"next_serial": response.gap.next_serial, "reason": response.gap.reason}}))
                    continue
                print(_message_json(response.message), flush=True)
                request = realtime_pb2.SubscribeRequest(channel=arguments.channel, after_serial=response.message.serial)
                received += 1
                if arguments.count and received >= arguments.count:
                    return 0
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return _fail(error)
            print(f"resuming after {reason_of(error)}", file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, resume_backoff_s_max)
        except KeyboardInterrupt:
            return 0


def history(arguments: argparse.Namespace) -> int:
    request = realtime_pb2.HistoryRequest(
        channel=arguments.channel, after_serial=arguments.after, limit=arguments.limit, reverse=arguments.reverse
    )
    try:
        response = _stub(arguments.gateway).History(request, timeout=arguments.timeout)
    except grpc.RpcError as error:
        return _fail(error)
    for message in response.messages:
        print(_message_json(message))
    return 0


def ring(arguments: argparse.Namespace) -> int:
    stub = placement_service_pb2_grpc.PlacementServiceStub(grpc.insecure_channel(arguments.placement))
    try:
        current = stub.GetRing(placement_service_pb2.GetRingRequest(), timeout=arguments.timeout)
    except grpc.RpcError as error:
        return _fail(error)
    from services.placement.ring import Ring

    core = Ring(current.version, [member.id for member in current.members])
    print(f"version {current.version}")
    for member in current.members:
        print(f"channel-node {member.id} {member.address}")
    for store in current.stores:
        print(f"store {store.id} zone={store.zone} {store.address}")
    for channel in arguments.channels:
        print(f"owner {channel} {core.owner(channel)}")
    return 0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--gateway", default=None, help="gateway address (default: the local cluster's first)")
        parser.add_argument("--timeout", type=float, default=10.0, help="seconds")

    command = commands.add_parser("publish", help="publish messages (one per DATA) as one batch")
    command.add_argument("channel")
    command.add_argument("data", nargs="+")
    command.add_argument("--name", default="")
    command.add_argument("--id", default="", help="message id (default: random; makes a retry idempotent)")
    common(command)
    command.set_defaults(handler=publish)

    command = commands.add_parser("subscribe", help="follow a channel (Ctrl-C stops)")
    command.add_argument("channel")
    start = command.add_mutually_exclusive_group()
    start.add_argument("--after", type=int, default=None, help="start after this serial")
    start.add_argument("--rewind", type=int, default=None, help="start with the last N messages")
    command.add_argument("--count", type=int, default=0, help="stop after N messages")
    common(command)
    command.set_defaults(handler=subscribe)

    command = commands.add_parser("history", help="committed messages of a channel")
    command.add_argument("channel")
    command.add_argument("--after", type=int, default=0)
    command.add_argument("--limit", type=int, default=100)
    command.add_argument("--reverse", action="store_true")
    common(command)
    command.set_defaults(handler=history)
