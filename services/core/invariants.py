"""Invariant checks that survive `python -O`.

`assert` statements vanish under -O; these do not. An invariant that fails means the process holds
state it cannot trust, so it raises `InvariantViolation` rather than trying to carry on.
"""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """An internal rule was broken: a bug, never bad input."""


def invariant(condition: bool, message: str = "invariant violated") -> None:
    """Raise `InvariantViolation` with `message` when `condition` is false."""
    if not condition:
        raise InvariantViolation(message)
