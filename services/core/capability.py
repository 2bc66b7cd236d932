"""What a token lets its holder do: a capability map `{channel pattern: [operation, ...]}` (DESIGN §10).

Patterns follow Ably's wildcard rules, over the `:`-separated segments of a channel name:

- `*` alone matches every channel;
- a `*` segment elsewhere matches exactly one segment (`*:lobby` matches `chat:lobby`);
- a trailing `*` segment matches one or more segments (`chat:*` matches `chat:a` and `chat:a:b`, not `chat`);
- any other segment matches itself only.

Operations are `publish`, `subscribe`, `history`, `presence`, or `*` for all four. A map is checked
whole when a token is read (`Capability.parse`), so a bad one is refused at once, never half-used.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OPERATIONS = ("publish", "subscribe", "history", "presence")
ALL = "*"

patterns_max = 100
"""Patterns one capability map may hold."""

pattern_chars_max = 256
"""Longest pattern (a channel name is at most 256 characters too)."""


class CapabilityError(ValueError):
    """The capability map is not well-formed (says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Capability:
    grants: tuple[tuple[tuple[str, ...], frozenset[str]], ...]
    """(pattern segments, operations) pairs."""

    @classmethod
    def parse(cls, raw: object) -> Capability:
        if not isinstance(raw, Mapping):
            raise CapabilityError("capability must be an object {pattern: [operations]}")
        if len(raw) > patterns_max:
            raise CapabilityError(f"capability has {len(raw)} patterns; at most {patterns_max}")
        grants = []
        for pattern, operations in raw.items():
            if not isinstance(pattern, str) or not pattern or len(pattern) > pattern_chars_max:
                raise CapabilityError(f"capability pattern {pattern!r} must be 1-{pattern_chars_max} characters")
            segments = tuple(pattern.split(":"))
            if any(not segment for segment in segments):
                raise CapabilityError(f"capability pattern {pattern!r} has an empty segment")
            if not isinstance(operations, list) or not operations:
                raise CapabilityError(f"capability of {pattern!r} must be a non-empty list of operations")
            allowed: set[str] = set()
            for operation in operations:
                if operation == ALL:
                    allowed.update(OPERATIONS)
                elif operation in OPERATIONS:
                    allowed.add(operation)
                else:
                    raise CapabilityError(
                        f"capability of {pattern!r}: unknown operation {operation!r} "
                        f"(one of {', '.join(OPERATIONS)}, *)"
                    )
            grants.append((segments, frozenset(allowed)))
        return cls(tuple(grants))

    def allows(self, channel: str, operation: str) -> bool:
        names = channel.split(":")
        return any(operation in operations and matches(segments, names) for segments, operations in self.grants)

    def allows_any(self, channel: str) -> bool:
        """Some operation on `channel` (what reading its state, GetChannel, needs)."""
        names = channel.split(":")
        return any(matches(segments, names) for segments, _ in self.grants)


def matches(pattern: tuple[str, ...], names: list[str]) -> bool:
    """Does a pattern's segments match a channel name's segments (the rules above)?"""
    if pattern == (ALL,):
        return True
    last = len(pattern) - 1
    for index, segment in enumerate(pattern):
        if index >= len(names):
            return False
        if segment == ALL and index == last:
            return True  # the rest: one or more segments (there is at least names[index])
        if segment != ALL and segment != names[index]:
            return False
    return len(names) == len(pattern)


__all__ = ["ALL", "OPERATIONS", "Capability", "CapabilityError", "matches"]
