"""Capability maps: Ably's wildcard rules over `:` segments, and a malformed map refused whole."""

from __future__ import annotations

import pytest

from services.core.capability import Capability, CapabilityError


@pytest.mark.parametrize(
    ("pattern", "channel", "expected"),
    [
        ("*", "anything", True),
        ("*", "a:b:c", True),
        ("chat", "chat", True),
        ("chat", "chat:x", False),
        ("chat:*", "chat:lobby", True),
        ("chat:*", "chat:lobby:2", True),  # a trailing * takes the rest
        ("chat:*", "chat", False),  # ...but at least one segment
        ("chat:*", "chatter:x", False),
        ("*:lobby", "chat:lobby", True),  # an inner * is exactly one segment
        ("*:lobby", "a:b:lobby", False),
        ("*:lobby", "lobby", False),
        ("a:*:c", "a:b:c", True),
        ("a:*:c", "a:b:x:c", False),
        ("a:b", "a:b:c", False),
    ],
)
def test_patterns_follow_the_wildcard_rules(pattern: str, channel: str, expected: bool) -> None:
    assert Capability.parse({pattern: ["subscribe"]}).allows(channel, "subscribe") is expected


def test_operations_are_checked_one_by_one_and_star_is_all_of_them() -> None:
    capability = Capability.parse({"chat:*": ["subscribe", "history"], "admin": ["*"]})
    assert capability.allows("chat:x", "subscribe") and capability.allows("chat:x", "history")
    assert not capability.allows("chat:x", "publish")
    assert all(capability.allows("admin", operation) for operation in ("publish", "subscribe", "history", "presence"))
    assert capability.allows_any("chat:x") and not capability.allows_any("news:1")


@pytest.mark.parametrize(
    "raw",
    [
        [],
        "chat:*",
        {"": ["publish"]},
        {"chat::x": ["publish"]},
        {"chat:*": []},
        {"chat:*": "publish"},
        {"chat:*": ["publish", "delete"]},
        {f"c{n}": ["publish"] for n in range(101)},
    ],
)
def test_a_malformed_map_is_refused_whole(raw: object) -> None:
    with pytest.raises(CapabilityError):
        Capability.parse(raw)
