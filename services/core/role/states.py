"""The channel role's states, the moves between them, and what each input comes to in each state.

    FENCING ──quorum of fence replies──▶ RECOVERING ──adopted log read──▶ SERVING
       ▲                                     │                              │
       └── the adopted log read back damaged ┘                              │
       │                                     │                              │
       └──────────────── FENCED, timeout, step-down ────────────────────────┴──▶ STOPPED

`TRANSITIONS` is the only list of moves (`RoleBase._enter` refuses any other), and `INPUTS` says,
for every input and every state, what happens: an input is never dropped without the table saying
so. tests/core/test_role_states.py holds the table whole and each of its answers true.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class RoleState(enum.Enum):
    FENCING = "fencing"
    RECOVERING = "recovering"
    SERVING = "serving"
    STOPPED = "stopped"


FENCING, RECOVERING, SERVING, STOPPED = RoleState.FENCING, RoleState.RECOVERING, RoleState.SERVING, RoleState.STOPPED

TRANSITIONS: Mapping[RoleState, frozenset[RoleState]] = {
    FENCING: frozenset({RECOVERING, STOPPED}),
    # Back to FENCING: the log chosen for adoption read back damaged; choose again among the answers.
    RECOVERING: frozenset({SERVING, FENCING, STOPPED}),
    SERVING: frozenset({STOPPED}),
    STOPPED: frozenset(),
}


class Handling(enum.Enum):
    TAKE = "take"
    """Handled by the state's rules."""
    QUEUE = "queue"
    """Held (bounded: `queued_publishes_max`, else OWNER_OVERLOADED) until the role serves."""
    REFUSE = "refuse"
    """Answered at once with the reason the role stopped (CHANNEL_MOVED, or LEASE_LOST)."""
    STALE = "stale"
    """The answer to what an earlier state asked (a fence reply after adoption, a reply after the
    role stopped): dropped, and reported in `Effects.stale`."""
    NOTHING = "nothing"
    """Nothing to do in this state; no effects."""
    IMPOSSIBLE = "impossible"
    """Cannot happen (nothing in this state could have caused it): trips an invariant."""


TAKE, QUEUE, REFUSE, STALE, NOTHING, IMPOSSIBLE = (
    Handling.TAKE,
    Handling.QUEUE,
    Handling.REFUSE,
    Handling.STALE,
    Handling.NOTHING,
    Handling.IMPOSSIBLE,
)


def _row(fencing: Handling, recovering: Handling, serving: Handling, stopped: Handling) -> Mapping[RoleState, Handling]:
    return {FENCING: fencing, RECOVERING: recovering, SERVING: serving, STOPPED: stopped}


INPUTS: Mapping[str, Mapping[RoleState, Handling]] = {
    #                          FENCING     RECOVERING  SERVING     STOPPED
    "start": _row(TAKE, IMPOSSIBLE, IMPOSSIBLE, IMPOSSIBLE),
    # Fence replies keep coming after a quorum answered: recovery may re-adopt with them, serving not.
    "fence_reply": _row(TAKE, TAKE, STALE, STALE),
    # Appends are sent only while serving, and a role never serves again once it stopped.
    "append_reply": _row(IMPOSSIBLE, IMPOSSIBLE, TAKE, STALE),
    # FENCING: reads of a log given up for damage are answered after it (dropped as stale there).
    "read_reply": _row(TAKE, TAKE, TAKE, STALE),
    "store_error": _row(TAKE, TAKE, TAKE, STALE),
    "publish": _row(QUEUE, QUEUE, TAKE, REFUSE),
    # Sending what publishes left waiting: only a serving role has entries to send.
    "send": _row(NOTHING, NOTHING, TAKE, NOTHING),
    # A subscriber or history reader registered during a takeover is served once the role serves.
    "subscribe": _row(TAKE, TAKE, TAKE, REFUSE),
    "read_history": _row(TAKE, TAKE, TAKE, REFUSE),
    "unsubscribe": _row(TAKE, TAKE, TAKE, NOTHING),
    "notify_commit": _row(NOTHING, NOTHING, TAKE, NOTHING),
    "tick": _row(TAKE, TAKE, TAKE, NOTHING),
    "stop": _row(TAKE, TAKE, TAKE, NOTHING),
}
"""Input → state → what it comes to. Every input of `ChannelRole` is here, for every state."""

__all__ = ["INPUTS", "TRANSITIONS", "Handling", "RoleState"]
