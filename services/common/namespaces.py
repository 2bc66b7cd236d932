"""Namespaces' options in etcd, where gateways and stores follow them (owners will, for presence; #19).

One key per namespace, `/ringcast-namespaces/<name>`, holding its options as JSON
(`services.core.namespaces`); no lease: options stay until deleted. `ringcast namespace set|delete`
writes them, checked before they are written; every follower reads the whole prefix every
`poll_interval_s` (one range read, at most `namespaces_max` keys), so a change is applied everywhere
within about that, without restarts. etcd being down keeps the last options read; a value that does
not parse is refused whole (its channels get `default`) and said once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.common.etcd import Etcd, poll
from services.core.namespaces import NamespaceError, NamespaceOptions, Namespaces, check_name, parse

log = logging.getLogger("ringcast.namespaces")

PREFIX = "/ringcast-namespaces/"

namespaces_max = 10_000
"""Namespaces etcd may hold (a read beyond it fails loudly rather than dropping some)."""

poll_interval_s = 0.5
"""How often a follower reads the namespaces (a change applies everywhere within ~1 s)."""


def read_entries(entries: list[tuple[str, bytes]]) -> tuple[Namespaces, dict[str, str]]:
    """The namespaces in `entries` (key, value) and, by name, why a value was refused."""
    options: dict[str, NamespaceOptions] = {}
    refused: dict[str, str] = {}
    for key, value in entries:
        name = key.removeprefix(PREFIX)
        try:
            options[check_name(name)] = parse(value)
        except NamespaceError as error:
            refused[name] = str(error)
    return Namespaces(options), refused


async def read(etcd: Etcd) -> tuple[Namespaces, dict[str, str]]:
    return read_entries(await etcd.read_prefix(PREFIX, namespaces_max))


async def put(etcd: Etcd, name: str, options: NamespaceOptions) -> int:
    """Write `name`'s options (whole: rule 2 of services.core.namespaces); the etcd revision."""
    return await etcd.put(PREFIX + check_name(name), options.to_json(), 0)


async def delete(etcd: Etcd, name: str) -> bool:
    """Delete `name`'s options (its channels get `default`'s); whether it had any."""
    return await etcd.delete(PREFIX + check_name(name))


async def follow(etcd: Etcd, on_change: Callable[[Namespaces], None]) -> None:
    """Read the namespaces every `poll_interval_s` and hand each new set to `on_change`, for ever.
    A value that does not parse is said at ERROR when it appears (or changes), not on every read."""
    said: dict[str, str] = {}

    async def read_and_say() -> Namespaces:
        nonlocal said
        current, refused = await read(etcd)
        for name, why in refused.items():
            if said.get(name) != why:
                log.error("namespace %r refused (its channels get default's options): %s", name, why)
        said = refused
        return current

    await poll(read_and_say, on_change, "namespaces", poll_interval_s)


__all__ = ["PREFIX", "delete", "follow", "put", "read", "read_entries"]
