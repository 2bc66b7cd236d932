"""`ringcast namespace`: groups of channels with options of their own (DESIGN §11, issue #19).

    ringcast namespace set chat --retention-hours 24 --presence --member-cap 500
    ringcast namespace get chat [--json]
    ringcast namespace list [--json]
    ringcast namespace delete chat

A channel's namespace is the part of its name before the first `:`; `default` applies to the rest
and to namespaces without options. `set` replaces a namespace's options whole (what is not given
takes the built-in default) and refuses a bad value with the option's name and why, before
anything is written. Options live in etcd (the local cluster's by default, as admin over mTLS).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ringcast_tools.commands import output
from ringcast_tools.commands.client import local_address, local_tls_dir
from services.core.namespaces import (
    BUILT_IN,
    DEFAULT,
    FIELDS,
    NamespaceError,
    NamespaceOptions,
    check_name,
    options_from,
)

T = TypeVar("T")

_FLAGS: dict[str, tuple[type, str]] = {
    "retention_hours": (float, "entries older than this are trimmed (committed ones, from the front)"),
    "retention_entries": (int, "at most this many entries per channel are kept"),
    "member_cap": (int, "present members per channel at most"),
    "presence_grace_s": (float, "seconds a member whose connection is gone stays present"),
    "presence_data_bytes_max": (int, "largest data a member enters or updates with"),
    "message_bytes_max": (int, "largest message data a publish may carry (at most 65536)"),
    "publish_rate": (float, "messages per second per channel through one gateway (0: no limit)"),
}
_SWITCHES = {"history": "history reads allowed", "presence": "clients may enter and read presence"}


def _with_etcd(arguments: argparse.Namespace, work: Callable[..., Awaitable[T]]) -> T:
    """Run `work(etcd)` against the cluster's etcd, as admin."""
    from services.common import tls
    from services.common.etcd import Etcd

    address = arguments.etcd or local_address("etcd", "")
    if not address:
        raise SystemExit("ringcast namespace: no etcd (give --etcd, or run it beside `ringcast up`)")
    tls_dir = arguments.tls_dir or local_tls_dir()
    tls.configure(str(tls_dir) if tls_dir else "", "admin")

    async def run() -> T:
        etcd = await Etcd.connect(address)
        try:
            return await work(etcd)
        finally:
            await etcd.close()

    return asyncio.run(run())


def _options(arguments: argparse.Namespace) -> NamespaceOptions:
    given = {name: getattr(arguments, name) for name in FIELDS if getattr(arguments, name) is not None}
    return options_from(given)


def _show(name: str, options: NamespaceOptions, as_json: bool, own: bool) -> None:
    values = dataclasses.asdict(options)
    if as_json:
        output.json_line({"name": name, "own": own, **values})
        return
    rows = [[field, str(value)] for field, value in values.items()]
    source = "" if own else f" (none of its own: {DEFAULT}'s)"
    output.table(f"namespace {name}{source}", ["option", "value"], rows)


def _differences(options: NamespaceOptions) -> str:
    changed = [
        f"{field}={getattr(options, field)}" for field in FIELDS if getattr(options, field) != getattr(BUILT_IN, field)
    ]
    return " ".join(changed) or "(built-in defaults)"


def run(arguments: argparse.Namespace) -> int:
    from services.common import namespaces
    from services.common.etcd import EtcdUnavailable

    action, name = arguments.action, arguments.name
    try:
        if action in ("set", "get", "delete") and not name:
            raise NamespaceError("name", f"`ringcast namespace {action}` needs a namespace name")
        if action == "set":
            options = _options(arguments)
            check_name(name)
            _with_etcd(arguments, lambda etcd: namespaces.put(etcd, name, options))
            _show(name, options, arguments.json, True)
            return 0
        if action == "delete":
            existed = _with_etcd(arguments, lambda etcd: namespaces.delete(etcd, name))
            print(f"deleted namespace {name}" if existed else f"namespace {name} had no options", file=sys.stderr)
            return 0
        current, refused = _with_etcd(arguments, namespaces.read)
        for bad, why in refused.items():
            print(f"warning: namespace {bad!r} is refused (its channels get {DEFAULT}'s): {why}", file=sys.stderr)
        if action == "get":
            _show(name, current.named(name), arguments.json, name in current.options)
            return 0
        listed = dict(current.options)
        listed.setdefault(DEFAULT, BUILT_IN)
        if arguments.json:
            for each in sorted(listed):
                _show(each, listed[each], True, each in current.options)
            return 0
        rows = [[each, _differences(listed[each])] for each in sorted(listed)]
        output.table("namespaces (options other than the built-in defaults)", ["namespace", "options"], rows)
        return 0
    except NamespaceError as error:
        print(f"ringcast namespace: {error}", file=sys.stderr)
        return 2
    except EtcdUnavailable as error:
        print(f"ringcast namespace: {error}", file=sys.stderr)
        return 1


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("namespace", help="set, show, list or delete a namespace's options")
    command.add_argument("action", choices=("set", "get", "list", "delete"))
    command.add_argument("name", nargs="?", default="", help="the namespace (a channel name's part before ':')")
    for field, (kind, help_text) in _FLAGS.items():
        default = getattr(BUILT_IN, field)
        command.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, help=f"{help_text} [{default}]")
    for field, help_text in _SWITCHES.items():
        default = "on" if getattr(BUILT_IN, field) else "off"
        command.add_argument(
            f"--{field}",
            dest=field,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{help_text} [{default}]",
        )
    command.add_argument("--etcd", default="", help="etcd endpoints (default: the local cluster's)")
    command.add_argument("--tls-dir", default="", help="the cluster's certificates (default: the local one's)")
    output.add_json_flag(command)
    command.set_defaults(handler=run)
