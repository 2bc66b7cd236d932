"""`ringcast publish | subscribe | history | channel | ring`: the platform from the command line, on the SDK.

Every command talks to all the gateways it is given (`--gateway`, repeatable; default: every
gateway of the local cluster), so it fails over like any SDK client. `--json` prints one JSON object
per line on stdout; otherwise people get tables and, for long work, a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

import grpc

import ringcast
from ringcast_tools.cluster import tokens
from ringcast_tools.cluster.launcher import admin_channel
from ringcast_tools.commands import output
from services.internal.v1 import placement_service_pb2, placement_service_pb2_grpc

publish_group_messages = 1_000
"""Messages a large publish hands to the SDK at a time (the progress bar moves per group)."""


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


def local_address(role: str, default: str) -> str:
    """The address of the local cluster's first process of `role` (`ringcast up`), or `default`."""
    state = _cluster_state() or {}
    processes = state.get("processes")
    for process in processes if isinstance(processes, list) else []:
        if process.get("role") == role:
            return str(process["address"])
    return default


def default_placement() -> str:
    return local_address("placement", "127.0.0.1:7402")


def local_tls_dir() -> Path | None:
    """The local secure cluster's certificates and keys (`ringcast up`), if there is one."""
    state = _cluster_state() or {}
    tls_dir = state.get("tls_dir")
    return Path(str(tls_dir)) if tls_dir else None


def _client(arguments: argparse.Namespace) -> ringcast.Client:
    """A client with the CA and token given, else the local cluster's CA and a fresh admin token
    signed with its key (so `ringcast publish` right after `ringcast up` just works)."""
    tls_dir = local_tls_dir()
    ca = arguments.ca or (str(tls_dir / "ca.pem") if tls_dir else None)
    token = arguments.token
    if not token and tls_dir is not None and (tls_dir / tokens.SIGNING_FILE).exists():
        token = tokens.mint(tls_dir / tokens.SIGNING_FILE, "admin", tokens.ADMIN_CAPABILITY, tokens.admin_token_ttl_s)
    return ringcast.Client(
        arguments.gateway or default_gateways(), timeout_s=arguments.timeout, ca=ca, token=token or None
    )


def _run(work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command's coroutine; an SDK error becomes `error: ...` on stderr and exit status 1."""
    try:
        return asyncio.run(work())
    except ringcast.RingcastError as error:
        return output.fail(error)
    except KeyboardInterrupt:
        return 130


def _lines(source: TextIO) -> list[str]:
    return [line.rstrip("\n") for line in source if line.strip()]


def publish(arguments: argparse.Namespace) -> int:
    if arguments.file is not None:
        if arguments.file == "-":
            datas = _lines(sys.stdin)
        else:
            with open(arguments.file, encoding="utf-8") as source:
                datas = _lines(source)
    else:
        datas = list(arguments.data)
    if not datas:
        print("ringcast publish: nothing to publish (give DATA or --file)", file=sys.stderr)
        return 2
    if arguments.id and len(datas) > 1:
        print("ringcast publish: --id names one message; with several, ids are made per message", file=sys.stderr)
        return 2

    async def work() -> int:
        async with _client(arguments) as client:
            ids = [arguments.id or client.new_id() for _ in datas]
            messages = [
                ringcast.OutgoingMessage(data, name=arguments.name, id=message_id)
                for data, message_id in zip(datas, ids, strict=True)
            ]
            serials: list[int] = []
            started = time.monotonic()
            with output.progress(
                f"publishing to {arguments.channel}", len(messages), enabled=not arguments.json
            ) as advance:
                for first in range(0, len(messages), publish_group_messages):
                    group = messages[first : first + publish_group_messages]
                    serials.extend(await client.publish_many(arguments.channel, group))
                    advance(len(group))
            elapsed = time.monotonic() - started
        if arguments.json:
            for message_id, serial in zip(ids, serials, strict=True):
                output.json_line({"channel": arguments.channel, "id": message_id, "serial": serial})
        elif len(serials) == 1:
            output.stdout.print(f"published to {arguments.channel}: serial {serials[0]} (id {ids[0]})", markup=False)
        else:
            rate = len(serials) / elapsed if elapsed > 0 else float("inf")
            output.stdout.print(
                f"published {len(serials)} messages to {arguments.channel}: serials {serials[0]}..{serials[-1]} "
                f"in {elapsed:.2f} s ({rate:.0f} msgs/s)",
                markup=False,
            )
        return 0

    return _run(work)


def _tell_state(change: ringcast.StateChange) -> None:
    if change.current is not ringcast.ConnectionState.CLOSED:
        where = f" ({change.endpoint})" if change.endpoint else ""
        output.notice(f"[{change.current.value}{where}] {change.reason}")


def subscribe(arguments: argparse.Namespace) -> int:
    """Follow a channel; the SDK resumes after the last serial received across any failure."""

    async def work() -> int:
        async with _client(arguments) as client:
            if not arguments.json:
                client.on_state_change(_tell_state)
            received = 0
            subscription = client.subscribe(arguments.channel, after=arguments.after, rewind=arguments.rewind)
            async with subscription:
                async for message in subscription:
                    if arguments.json:
                        output.json_line(output.message_record(message))
                    else:
                        name = f" {message.name}" if message.name else ""
                        output.stdout.print(
                            f"#{message.serial} {message.id}{name}: {message.data.decode('utf-8', 'replace')}",
                            markup=False,
                        )
                    received += 1
                    if arguments.count and received >= arguments.count:
                        break
        return 0

    return _run(work)


def history(arguments: argparse.Namespace) -> int:
    async def messages(client: ringcast.Client) -> AsyncIterator[ringcast.Message]:
        if arguments.all:
            async for message in client.history_all(
                arguments.channel, after=arguments.after, reverse=arguments.reverse
            ):
                yield message
            return
        page = await client.history(
            arguments.channel, after=arguments.after, limit=arguments.limit, reverse=arguments.reverse
        )
        if page.gap_next_serial:
            gap, reason = page.gap_next_serial, ringcast.Reason.RETENTION_EXPIRED
            output.notice(f"messages before serial {gap} are no longer retained ({reason})")
        for message in page.messages:
            yield message

    async def work() -> int:
        async with _client(arguments) as client:
            if arguments.json:
                async for message in messages(client):
                    output.json_line(output.message_record(message))
                return 0
            rows = [
                [
                    str(message.serial),
                    message.id,
                    message.name,
                    time.strftime("%H:%M:%S", time.localtime(message.timestamp_ms / 1000))
                    + f".{message.timestamp_ms % 1000:03d}",
                    message.data.decode("utf-8", "replace"),
                ]
                async for message in messages(client)
            ]
        output.table(f"{arguments.channel}: {len(rows)} messages", ["serial", "id", "name", "time", "data"], rows)
        return 0

    return _run(work)


def channel(arguments: argparse.Namespace) -> int:
    async def work() -> int:
        async with _client(arguments) as client:
            info = await client.get_channel(arguments.channel)
        record = {
            "channel": info.name,
            "owner": info.owner,
            "epoch": info.epoch,
            "last_serial": info.last_serial,
            "ring_version": info.ring_version,
            "members": info.members,
        }
        if arguments.json:
            output.json_line(record)
        else:
            output.table(
                info.name,
                ["owner", "epoch", "last serial", "ring version", "members"],
                [[str(v) for v in list(record.values())[1:]]],
            )
        return 0

    return _run(work)


def _member_record(channel: str, member: ringcast.Member) -> dict[str, object]:
    return {
        "channel": channel,
        "client_id": member.client_id,
        "connection_id": member.connection_id,
        "data": member.data.decode("utf-8", "replace"),
        "serial": member.serial,
        "timestamp_ms": member.timestamp_ms,
    }


def _clock(timestamp_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(timestamp_ms / 1000)) + f".{timestamp_ms % 1000:03d}"


def presence(arguments: argparse.Namespace) -> int:
    """List a channel's members; `--enter DATA` stays present until interrupted; `--watch` follows
    the changes (the SDK enters again and resumes across failures)."""

    async def work() -> int:
        async with _client(arguments) as client:
            if not arguments.json:
                client.on_state_change(_tell_state)
            mine = client.presence(arguments.channel)
            if arguments.enter is not None:
                serial = await mine.enter(arguments.enter)
                output.notice(f"entered {arguments.channel} as connection {client.connection_id} (serial {serial})")
            if not arguments.watch and arguments.enter is None:
                present = await mine.members()
                if arguments.json:
                    for member in present.members:
                        output.json_line(_member_record(arguments.channel, member))
                    return 0
                rows = [
                    [
                        m.client_id,
                        m.connection_id,
                        m.data.decode("utf-8", "replace"),
                        str(m.serial),
                        _clock(m.timestamp_ms),
                    ]
                    for m in present.members
                ]
                title = f"{arguments.channel}: {len(rows)} members at presence serial {present.serial}"
                output.table(title, ["client", "connection", "data", "serial", "since"], rows)
                return 0
            if not arguments.watch:  # entered: stay until interrupted
                await asyncio.Event().wait()
            async with mine.subscribe() as watch:
                async for event in watch:
                    if event.action is ringcast.PresenceAction.SYNC:
                        if arguments.json:
                            for member in event.members:
                                output.json_line({"action": "present", **_member_record(arguments.channel, member)})
                        else:
                            output.notice(f"{len(event.members)} members at presence serial {event.serial}")
                            for member in event.members:
                                output.stdout.print(f"  {member.client_id}/{member.connection_id}", markup=False)
                        continue
                    assert event.member is not None
                    record = {"action": event.action.value, **_member_record(arguments.channel, event.member)}
                    if arguments.json:
                        output.json_line(record)
                    else:
                        data = f": {record['data']}" if record["data"] else ""
                        output.stdout.print(
                            f"#{event.serial} {event.action.value} {event.member.client_id}/"
                            f"{event.member.connection_id}{data}",
                            markup=False,
                        )
        return 0

    return _run(work)


def ring(arguments: argparse.Namespace) -> int:
    tls_dir = local_tls_dir()
    link = admin_channel(arguments.placement, str(tls_dir) if tls_dir else "")
    stub = placement_service_pb2_grpc.PlacementServiceStub(link)
    try:
        current = stub.GetRing(placement_service_pb2.GetRingRequest(), timeout=arguments.timeout)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()} (placement at {arguments.placement})", file=sys.stderr)
        return 1
    from services.core.ring import Ring

    core = Ring(current.version, [member.id for member in current.members])
    members = [{"id": member.id, "address": member.address} for member in current.members]
    stores = [{"id": store.id, "zone": store.zone, "address": store.address} for store in current.stores]
    owners = {channel: core.owner(channel) for channel in arguments.channels}
    if arguments.json:
        output.json_line({"version": current.version, "channel_nodes": members, "stores": stores, "owners": owners})
        return 0
    output.stdout.print(f"ring version {current.version}", markup=False)
    output.table("channel nodes", ["id", "address"], [[m["id"], m["address"]] for m in members])
    output.table("stores", ["id", "zone", "address"], [[s["id"], s["zone"], s["address"]] for s in stores])
    if owners:
        output.table("owners", ["channel", "owner"], [[name, owner or "-"] for name, owner in owners.items()])
    return 0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--gateway", action="append", help="gateway address (repeatable; default: every local gateway)"
        )
        parser.add_argument("--timeout", type=float, default=15.0, help="seconds a request may take, retries included")
        parser.add_argument(
            "--token",
            default=os.environ.get("RINGCAST_TOKEN", ""),
            help="bearer token (default: $RINGCAST_TOKEN, else an admin token of the local cluster)",
        )
        parser.add_argument(
            "--ca",
            default=os.environ.get("RINGCAST_CA", ""),
            help="CA certificate the gateways' TLS is checked with (default: $RINGCAST_CA, else the local cluster's)",
        )
        output.add_json_flag(parser)

    command = commands.add_parser("publish", help="publish messages (one per DATA, or one per line of --file)")
    command.add_argument("channel")
    command.add_argument("data", nargs="*")
    command.add_argument("--file", help="publish each line of this file as a message ('-': standard input)")
    command.add_argument("--name", default="")
    command.add_argument("--id", default="", help="message id (default: made per message; retries are idempotent)")
    common(command)
    command.set_defaults(handler=publish)

    command = commands.add_parser("subscribe", help="follow a channel, resuming across failures (Ctrl-C stops)")
    command.add_argument("channel")
    start = command.add_mutually_exclusive_group()
    start.add_argument("--after", type=int, default=None, help="start after this serial")
    start.add_argument("--rewind", type=int, default=None, help="start with the last N messages")
    command.add_argument("--count", type=int, default=0, help="stop after N messages")
    common(command)
    command.set_defaults(handler=subscribe)

    command = commands.add_parser("history", help="committed messages of a channel, as a table")
    command.add_argument("channel")
    command.add_argument("--after", type=int, default=0, help="after this serial (with --reverse: below it)")
    command.add_argument("--limit", type=int, default=100, help="one page of at most this many (1-1000)")
    command.add_argument("--all", action="store_true", help="every page, not just one")
    command.add_argument("--reverse", action="store_true", help="newest first")
    common(command)
    command.set_defaults(handler=history)

    command = commands.add_parser(
        "presence", help="a channel's members (--enter DATA: stay present until Ctrl-C; --watch: follow changes)"
    )
    command.add_argument("channel")
    command.add_argument("--enter", metavar="DATA", default=None, help="enter with DATA and stay until interrupted")
    command.add_argument("--watch", action="store_true", help="the members, then every change as it happens")
    common(command)
    command.set_defaults(handler=presence)

    command = commands.add_parser("channel", help="a channel's owner, epoch, last serial and members")
    command.add_argument("channel")
    common(command)
    command.set_defaults(handler=channel)
