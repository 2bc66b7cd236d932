"""The channel role: the state machine of one owner for one channel, at one epoch.

A role is created when a node takes a channel over, and lives through four states — FENCING,
RECOVERING, SERVING, STOPPED — whose moves, and what every input comes to in each, are one table
(states.py).

Rules, in the order they matter:

1. Fence before anything: every replica is told the new epoch, and a quorum must answer. A replica
   that has seen a higher epoch answers FENCED. Once a quorum has done so the role stops: it is
   stale. A minority cannot veto it (a corrupted fence, a takeover that fenced one replica and
   died): the role goes on with the others, sends the refusing replica nothing more, and reports it.
2. Adopt the most up-to-date log of the fence quorum (highest last epoch, then longest), read a
   bounded suffix of it, and rewrite its last entry at the role's own epoch. The role serves at once,
   but commit only moves when a quorum holds an entry of the role's epoch, so nothing older is
   declared committed on the strength of a log some earlier owner may have lost.
3. Rebuild the dedup window from that suffix, so a retry of a message stored under an earlier owner
   gets its original serial back instead of a second copy.
4. Assign serials contiguously; replicate to every replica with a pipelined, bounded window;
   acknowledge a publish only when its last serial is committed; deliver only committed entries,
   in serial order.
5. Repair each replica from where its log matches ours (Raft's match index), going back on every
   refusal until the logs agree; read entries we no longer hold in memory from a replica that is
   known to match that far.
6. Stop at once on FENCED, and when the node says the channel moved or the lease is gone: pending
   publishes fail with a retryable CHANNEL_MOVED, subscriptions end, and the role is dropped.
7. Retention: every append tells a replica our commit point (and an idle channel's replicas are
   told once more, `notify_commit`), so replicas can drop old committed entries. A replica
   that trimmed answers reads from after its base: a subscriber or history reader who asked for
   older entries gets an explicit gap (`gap_next_serial`), never a silent skip; a takeover adopts the
   base as its log's start; a replica that needs entries every other replica trimmed is reset to
   that base (an append `from_base`) and caught up from there.
8. Trust no single replica (Raft's log matching, applied to reads). Every read reply is checked:
   contiguous from where it starts, every checksum intact (it covers serial and epoch), epochs never
   decreasing, and every entry we hold ourselves at the same epoch. Only the trusted run before the
   first bad entry is used; the rest is read again from a replica that matches that far. The bad
   replica (and one that reports damage itself) is reported once and rewritten from its first bad
   serial like a lagging replica — it no longer counts as holding what follows — and a takeover
   never adopts a log it cannot read whole: it chooses again among the other fence answers.

The role does no I/O and reads no clock. Every input takes `now_ms` where time matters and returns
the `Effects` it comes to (messages.py): typed requests for store replicas, publish answers,
deliveries, history answers, takeover steps, replica faults, stale inputs.

The package, by concern: messages.py (what goes in and out), states.py (the state table), dedup.py,
base.py (shared state and read checks), takeover.py (rules 1–3), replication.py (4–6), reads.py
(4, 7, 8), retention.py (7), channel_role.py (the inputs, and what spans the concerns).
"""

from services.core.role.channel_role import ChannelRole
from services.core.role.dedup import DedupWindow
from services.core.role.messages import (
    BUG_NAMES,
    AppendRequest,
    Delivery,
    Effects,
    FenceRequest,
    HistoryAnswer,
    HistoryResult,
    PublishAnswer,
    PublishResult,
    ReadRequest,
    ReplicaFault,
    RoleConfig,
    StaleInput,
    StoreRequest,
    StoreSend,
    SubscriberDelivery,
    TakeoverStep,
)
from services.core.role.states import INPUTS, TRANSITIONS, Handling, RoleState

__all__ = [
    "BUG_NAMES",
    "INPUTS",
    "TRANSITIONS",
    "AppendRequest",
    "ChannelRole",
    "DedupWindow",
    "Delivery",
    "Effects",
    "FenceRequest",
    "Handling",
    "HistoryAnswer",
    "HistoryResult",
    "PublishAnswer",
    "PublishResult",
    "ReadRequest",
    "ReplicaFault",
    "RoleConfig",
    "RoleState",
    "StaleInput",
    "StoreRequest",
    "StoreSend",
    "SubscriberDelivery",
    "TakeoverStep",
]
