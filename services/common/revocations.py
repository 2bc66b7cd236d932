"""Revoked tokens, kept in etcd where every gateway reads them (DESIGN §10, issue #16).

Keys under `/ringcast-revocations/` (apart from the member keys, which placement reads whole):

- `jti/<jti>`: that one token;
- `sub/<sub>`: every token of that subject issued before the time the value holds;
- `issued-before`: every token issued before the time it holds (rotate everything at once).

Values are Unix times in seconds. Each key lives on a lease of `kept_s` (the longest token lifetime
plus the clock skew): by then every token it could cover has expired anyway, so the set stays small
and bounded (`revocations_max`). `ringcast token revoke` writes them; gateways read the whole prefix
every `poll_interval_s` (one range read), so a revocation reaches every gateway within about that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.etcd import Etcd, poll

log = logging.getLogger("ringcast.revocations")

PREFIX = "/ringcast-revocations/"

token_lifetime_s_max = 24 * 3600
"""Longest token lifetime a gateway accepts (exp - iat)."""

clock_skew_s = 5
"""Seconds of clock difference allowed on `exp`, `nbf` and `iat`."""

kept_s = token_lifetime_s_max + 2 * clock_skew_s
"""How long a revocation is kept."""

revocations_max = 100_000
"""Revocations etcd may hold at once (a read beyond it fails loudly rather than dropping some)."""

poll_interval_s = 0.5
"""How often a gateway reads the revocations."""

KINDS = ("jti", "sub", "issued-before")


@dataclass(slots=True)
class Revocations:
    """What etcd says is revoked."""

    jtis: set[str] = field(default_factory=set)
    subs: dict[str, float] = field(default_factory=dict)
    issued_before: float = 0.0

    def covers(self, sub: str, jti: str, issued_at: float) -> bool:
        if jti in self.jtis or issued_at < self.issued_before:
            return True
        revoked_at = self.subs.get(sub)
        return revoked_at is not None and issued_at < revoked_at


def parse(entries: list[tuple[str, bytes]]) -> Revocations:
    revocations = Revocations()
    for key, value in entries:
        kind, _, name = key.removeprefix(PREFIX).partition("/")
        try:
            at = float(value.decode())
        except ValueError:
            log.warning("ignoring a malformed revocation %s=%r", key, value[:64])
            continue
        if kind == "jti" and name:
            revocations.jtis.add(name)
        elif kind == "sub" and name:
            revocations.subs[name] = max(at, revocations.subs.get(name, 0.0))
        elif kind == "issued-before":
            revocations.issued_before = max(revocations.issued_before, at)
    return revocations


async def revoke(etcd: Etcd, kind: str, name: str, at: float) -> None:
    """Write one revocation: `kind` jti or sub with its `name`, or issued-before (`name` empty)."""
    if kind not in KINDS:
        raise ValueError(f"revocation kind {kind!r}: one of {', '.join(KINDS)}")
    if kind != "issued-before" and not name:
        raise ValueError(f"revoking by {kind} needs a value")
    key = PREFIX + ("issued-before" if kind == "issued-before" else f"{kind}/{name}")
    lease_id, _ = await etcd.grant(kept_s)
    await etcd.put(key, f"{at:.3f}".encode(), lease_id)


async def follow(etcd: Etcd, on_change: Callable[[Revocations], None]) -> None:
    """Read the revocations every `poll_interval_s` and hand each new set to `on_change`, for ever.
    etcd being down keeps the last set (and says so once per outage)."""

    async def read() -> Revocations:
        return parse(await etcd.read_prefix(PREFIX, revocations_max))

    await poll(read, on_change, "revocations", poll_interval_s)


__all__ = ["PREFIX", "Revocations", "follow", "parse", "revoke"]
