"""`ringcast token`: mint a client token, or revoke tokens (DESIGN §10).

    ringcast token --sub alice --capability '{"chat:*":["publish","subscribe"]}' --ttl 60 [--publish-rate N]
    ringcast token revoke --jti J | --sub S | --issued-before UNIX_TIME

Minting signs with the local cluster's key (`.ringcast/tls/token-signing.json`, or --signing-key) and
prints the token alone on stdout. Revoking writes to etcd (the local cluster's, as admin over mTLS),
and every gateway ends the streams it covers within about a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from ringcast_tools.cluster import tokens
from ringcast_tools.commands.client import local_address, local_tls_dir
from services.common.revocations import token_lifetime_s_max
from services.core.capability import Capability, CapabilityError


def _tls_dir(arguments: argparse.Namespace) -> Path | None:
    if arguments.tls_dir:
        return Path(arguments.tls_dir)
    return local_tls_dir()


def mint(arguments: argparse.Namespace) -> int:
    if not arguments.sub:
        print("ringcast token: --sub is required", file=sys.stderr)
        return 2
    try:
        capability = json.loads(arguments.capability)
        Capability.parse(capability)
    except (ValueError, CapabilityError) as error:
        print(f"ringcast token: --capability: {error}", file=sys.stderr)
        return 2
    if not 0 < arguments.ttl <= token_lifetime_s_max:
        print(f"ringcast token: --ttl must be 1-{token_lifetime_s_max} seconds", file=sys.stderr)
        return 2
    tls_dir = _tls_dir(arguments)
    signing = (
        Path(arguments.signing_key) if arguments.signing_key else (tls_dir / tokens.SIGNING_FILE if tls_dir else None)
    )
    if signing is None or not signing.exists():
        print(
            "ringcast token: no signing key (start a secure cluster with `ringcast up`, or give --signing-key)",
            file=sys.stderr,
        )
        return 2
    limits = {
        "publish_rate": arguments.publish_rate,
        "subscriptions": arguments.subscriptions,
        "message_bytes": arguments.message_bytes,
    }
    print(tokens.mint(signing, arguments.sub, capability, arguments.ttl, limits=limits))
    return 0


def revoke(arguments: argparse.Namespace) -> int:
    chosen = [(kind, value) for kind, value in (("jti", arguments.jti), ("sub", arguments.sub)) if value]
    if arguments.issued_before is not None:
        chosen.append(("issued-before", ""))
    if len(chosen) != 1:
        print("ringcast token revoke: give exactly one of --jti, --sub, --issued-before", file=sys.stderr)
        return 2
    kind, name = chosen[0]
    etcd_address = arguments.etcd or local_address("etcd", "")
    if not etcd_address:
        print("ringcast token revoke: no etcd (give --etcd, or run it beside `ringcast up`)", file=sys.stderr)
        return 2
    from services.common import revocations, tls
    from services.common.etcd import Etcd, EtcdUnavailable

    tls_dir = _tls_dir(arguments)
    tls.configure(str(tls_dir) if tls_dir else "", "admin")
    at = arguments.issued_before if kind == "issued-before" else time.time()

    async def write() -> None:
        etcd = await Etcd.connect(etcd_address)
        try:
            await revocations.revoke(etcd, kind, name, at)
        finally:
            await etcd.close()

    try:
        asyncio.run(write())
    except EtcdUnavailable as error:
        print(f"ringcast token revoke: {error}", file=sys.stderr)
        return 1
    print(f"revoked {kind} {name}".rstrip() + (f" (tokens issued before {at:.0f})" if kind != "jti" else ""))
    return 0


def run(arguments: argparse.Namespace) -> int:
    if arguments.action == "revoke":
        return revoke(arguments)
    if arguments.action:
        print(f"ringcast token: unknown action {arguments.action!r} (mint with options, or `revoke`)", file=sys.stderr)
        return 2
    return mint(arguments)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser("token", help="print a client token, or revoke tokens (`ringcast token revoke`)")
    command.add_argument("action", nargs="?", default="", help="`revoke` to revoke; nothing to mint a token")
    command.add_argument("--sub", default="", help="the client id the token speaks for (or, with revoke, whose tokens)")
    command.add_argument(
        "--capability", default='{"*":["*"]}', help="JSON {pattern: [publish|subscribe|history|presence|*]}"
    )
    command.add_argument("--ttl", type=float, default=3600, help="seconds the token is good for (at most 86400)")
    command.add_argument("--publish-rate", type=float, default=0, help="messages per second this client may publish")
    command.add_argument("--subscriptions", type=int, default=0, help="subscriptions it may hold at once")
    command.add_argument("--message-bytes", type=int, default=0, help="largest message data it may publish")
    command.add_argument("--signing-key", default=os.environ.get("RINGCAST_SIGNING_KEY", ""))
    command.add_argument("--tls-dir", default="", help="the cluster's certificates and keys (default: the local one)")
    command.add_argument("--jti", default="", help="revoke: that one token")
    command.add_argument("--issued-before", type=float, default=None, help="revoke: every token issued before then")
    command.add_argument("--etcd", default="", help="revoke: etcd endpoints (default: the local cluster's)")
    command.set_defaults(handler=run)
