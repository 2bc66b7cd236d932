"""Namespaces: groups of channels with options of their own (DESIGN §11, issue #19).

Rules:

1. A channel's namespace is the part of its name before the first `:` (`chat:room-1` is in `chat`);
   a name without `:` is in no namespace. A channel whose namespace has no options of its own gets
   the options of `default` — and `default` itself, where nobody set it, the built-in defaults.
2. Options are whole: setting a namespace replaces all of its options; an option not given takes
   the built-in default, never another namespace's value (so what applies is readable in one place).
3. Every option is checked when it is written, with a reason for each refusal (`NamespaceError`),
   and again when it is read back (a value written by hand or by another version is refused whole,
   and the namespace falls back to `default`: the readers say so, they do not guess).
4. Retention keeps today's rules wherever it is set: entries go from the front only, committed
   only, never inside the dedup window (the store's own `keep_recent_ms` floor), and a read from
   before what is kept gets ContinuityLost.

Pure: parsing, checking and looking up; where the options live (etcd) and who follows them is
services/common/namespaces.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT = "default"
"""The namespace whose options apply where a channel's own namespace has none."""

name_chars_max = 64
_NAME = re.compile(r"[A-Za-z0-9_\-.@]+")

retention_hours_max = 24.0 * 365
retention_entries_max = 1_000_000_000
member_cap_max = 1_000_000
message_bytes_max_limit = 64 * 1024
"""The platform's largest message (DESIGN §7): a namespace may lower it, not raise it."""
publish_rate_max = 1_000_000.0
presence_grace_s_min = 1.0
presence_grace_s_max = 3_600.0
presence_data_bytes_limit = 4_096


class NamespaceError(ValueError):
    """An option or a name that cannot be: `field` says which, the message why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """What applies to every channel of a namespace. Defaults are today's platform-wide behaviour."""

    retention_hours: float = 72.0
    """Entries older than this are trimmed (from the front, committed ones only)."""
    retention_entries: int = 1_000_000
    """At most this many entries per channel are kept (whichever of the two comes first)."""
    history: bool = True
    """History reads allowed (subscriptions resume either way: they are not history reads)."""
    presence: bool = True
    """Clients may enter the channels' presence sets, and read them."""
    member_cap: int = 10_000
    """Present members per channel at most (with presence on)."""
    presence_grace_s: float = 15.0
    """A member whose connection is gone this long is removed with a LEAVE entry."""
    presence_data_bytes_max: int = 1_024
    """The largest data a member may enter or update with."""
    message_bytes_max: int = message_bytes_max_limit
    """The largest message data a publish may carry."""
    publish_rate: float = 0.0
    """Messages per second one channel may take through one gateway (0: no limit)."""

    def __post_init__(self) -> None:
        _check(self)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()


FIELDS = tuple(field.name for field in dataclasses.fields(NamespaceOptions))


def _number(field: str, value: Any, low: float, high: float, *, integer: bool, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise NamespaceError(field, f"must be {'a whole number' if integer else 'a number'}, not {value!r}")
    if value != value or value < low or value > high or (low_open and value == low):  # noqa: PLR0124 - NaN
        bound = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise NamespaceError(field, f"{value!r} is out of range: {bound} and at most {high:g}")


def _check(options: NamespaceOptions) -> None:
    _number("retention_hours", options.retention_hours, 0.0, retention_hours_max, integer=False, low_open=True)
    _number("retention_entries", options.retention_entries, 1, retention_entries_max, integer=True)
    for flag in ("history", "presence"):
        if not isinstance(getattr(options, flag), bool):
            raise NamespaceError(flag, f"must be true or false, not {getattr(options, flag)!r}")
    _number("member_cap", options.member_cap, 1, member_cap_max, integer=True)
    _number("presence_grace_s", options.presence_grace_s, presence_grace_s_min, presence_grace_s_max, integer=False)
    _number("presence_data_bytes_max", options.presence_data_bytes_max, 0, presence_data_bytes_limit, integer=True)
    _number("message_bytes_max", options.message_bytes_max, 1, message_bytes_max_limit, integer=True)
    _number("publish_rate", options.publish_rate, 0.0, publish_rate_max, integer=False)


def check_name(name: str) -> str:
    """`name` if it can name a namespace: 1-64 chars of a channel name's alphabet, no `:`."""
    if not name:
        raise NamespaceError("name", "a namespace needs a name")
    if len(name) > name_chars_max:
        raise NamespaceError("name", f"{len(name)} chars; at most {name_chars_max}")
    if not _NAME.fullmatch(name):
        raise NamespaceError("name", "only A-Z a-z 0-9 _ - . @ (a channel name's characters, without ':')")
    return name


def options_from(values: Mapping[str, Any]) -> NamespaceOptions:
    """Options from a mapping (a parsed JSON object, CLI flags): unknown keys are refused, missing
    ones take the built-in defaults (rule 2)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise NamespaceError(unknown[0], f"no such option (options: {', '.join(FIELDS)})")
    return NamespaceOptions(**values)


def parse(value: bytes) -> NamespaceOptions:
    """Options from their stored JSON (rule 3: anything wrong refuses the whole value)."""
    try:
        values = json.loads(value)
    except (ValueError, UnicodeDecodeError) as error:
        raise NamespaceError("value", f"not JSON: {error}") from None
    if not isinstance(values, dict):
        raise NamespaceError("value", "not a JSON object")
    return options_from(values)


def namespace_of(channel: str) -> str:
    """The namespace a channel is in (rule 1); "" for a name without `:`."""
    name, colon, _ = channel.partition(":")
    return name if colon else ""


@dataclass(frozen=True, slots=True)
class Namespaces:
    """Every namespace's options, as read at one moment; `for_channel` answers what applies."""

    options: Mapping[str, NamespaceOptions] = dataclasses.field(default_factory=dict)

    @property
    def default(self) -> NamespaceOptions:
        return self.options.get(DEFAULT) or BUILT_IN

    def named(self, namespace: str) -> NamespaceOptions:
        """What applies to channels of `namespace` (its own options, else `default`'s)."""
        return self.options.get(namespace) or self.default

    def for_channel(self, channel: str) -> NamespaceOptions:
        return self.named(namespace_of(channel))

    def own(self, channel: str) -> NamespaceOptions | None:
        """The options someone set for the channel (its namespace's, else `default`'s), or None:
        then a service's own settings apply (a store's retention flags, say)."""
        return self.options.get(namespace_of(channel)) or self.options.get(DEFAULT)

    def label(self, channel: str) -> str:
        """The metrics label of the channel's namespace: its own name when it has options, else
        `default` (bounded by the namespaces configured, never by the channels seen)."""
        namespace = namespace_of(channel)
        return namespace if namespace in self.options else DEFAULT


BUILT_IN = NamespaceOptions()


__all__ = [
    "BUILT_IN",
    "DEFAULT",
    "FIELDS",
    "NamespaceError",
    "NamespaceOptions",
    "Namespaces",
    "check_name",
    "namespace_of",
    "options_from",
    "parse",
]
