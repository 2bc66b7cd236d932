"""Namespaces' options: every option checked with its name and why, whole values, the lookup of what
applies to a channel (services/core/namespaces.py)."""

from __future__ import annotations

import math

import pytest

from services.core.namespaces import (
    BUILT_IN,
    DEFAULT,
    NamespaceError,
    NamespaceOptions,
    Namespaces,
    check_name,
    namespace_of,
    options_from,
    parse,
)


def test_a_channel_is_in_the_namespace_before_its_first_colon() -> None:
    assert namespace_of("chat:room-1") == "chat"
    assert namespace_of("chat:room:1") == "chat"
    assert namespace_of("room-1") == ""
    assert namespace_of("chat:") == "chat"


def test_options_are_whole_and_what_is_not_given_is_the_built_in_default() -> None:
    options = options_from({"retention_hours": 24, "presence": True})
    assert options.retention_hours == 24 and options.presence is True
    assert options.retention_entries == BUILT_IN.retention_entries
    assert parse(options.to_json()) == options


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"retention_hours": 0}, "retention_hours"),
        ({"retention_hours": -1}, "retention_hours"),
        ({"retention_hours": math.nan}, "retention_hours"),
        ({"retention_hours": 24 * 366}, "retention_hours"),
        ({"retention_hours": "24"}, "retention_hours"),
        ({"retention_entries": 0}, "retention_entries"),
        ({"retention_entries": 1.5}, "retention_entries"),
        ({"history": "yes"}, "history"),
        ({"presence": 1}, "presence"),
        ({"member_cap": 0}, "member_cap"),
        ({"member_cap": True}, "member_cap"),
        ({"presence_grace_s": 0.5}, "presence_grace_s"),
        ({"presence_data_bytes_max": 4097}, "presence_data_bytes_max"),
        ({"message_bytes_max": 64 * 1024 + 1}, "message_bytes_max"),
        ({"message_bytes_max": 0}, "message_bytes_max"),
        ({"publish_rate": -1}, "publish_rate"),
        ({"retention": 24}, "retention"),
    ],
)
def test_a_bad_option_is_refused_with_its_name(values: dict[str, object], field: str) -> None:
    with pytest.raises(NamespaceError) as refused:
        options_from(values)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


@pytest.mark.parametrize("value", [b"", b"{", b"[]", b'"x"', b"\xff", b'{"member_cap": -1}'])
def test_a_stored_value_that_does_not_parse_is_refused_whole(value: bytes) -> None:
    with pytest.raises(NamespaceError):
        parse(value)


@pytest.mark.parametrize("name", ["", "a:b", "a b", "x" * 65, "ünï"])
def test_a_namespace_name_is_a_channel_prefix_without_a_colon(name: str) -> None:
    with pytest.raises(NamespaceError):
        check_name(name)
    assert check_name("chat.v2@eu-1_x") == "chat.v2@eu-1_x"


def test_a_channel_gets_its_namespace_s_options_else_default_s_else_the_built_in_ones() -> None:
    chat = NamespaceOptions(retention_hours=1.0)
    assert Namespaces().for_channel("chat:1") == BUILT_IN
    with_chat = Namespaces({"chat": chat})
    assert with_chat.for_channel("chat:1") == chat
    assert with_chat.for_channel("news:1") == BUILT_IN
    assert with_chat.for_channel("plain") == BUILT_IN
    default = NamespaceOptions(history=False)
    both = Namespaces({"chat": chat, DEFAULT: default})
    assert both.for_channel("news:1") == default
    assert both.for_channel("plain") == default
    assert both.for_channel("chat:1") == chat
    assert (both.label("chat:1"), both.label("news:1"), both.label("plain")) == ("chat", DEFAULT, DEFAULT)
