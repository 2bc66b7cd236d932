"""What goes into and comes out of a channel role: its bounds, the requests it sends to store
replicas, what publishes, subscriptions and history reads come to, and the typed `Effects` every
input returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from services.core.entries import Entry, Position
from services.core.replica_log import AppendReply, ReplicaLog

BUG_NAMES = (
    "ack-before-quorum",
    "skip-fence",
    "no-epoch-check",
    "recover-from-one",
    "reset-dedup-on-takeover",
    "deliver-uncommitted",
    "adopt-highest-epoch-per-serial",
    "trim-uncommitted",
    "unchecked-reads",
)
"""Deliberate bugs, switchable for tests only, that the simulator's checker must catch."""


@dataclass(frozen=True, slots=True)
class RoleConfig:
    """Bounds and timeouts of a role. Every queue, window and retry here has a named limit."""

    replicas: tuple[str, ...] = ("store-a", "store-b", "store-c")
    dedup_window_ms: int = 120_000
    dedup_entries_max: int = 100_000
    recovery_read_entries_max: int = 100_000
    """How far back a takeover rebuilds the dedup window (entries before the adopted log's last)."""
    recovery_full_entries_max: int = 1_000
    """Of those, the newest this many are read whole (they become the in-memory tail); the older
    ones only as message ids and timestamps, which is all the dedup window needs and a fraction of
    the work (a busy channel holds tens of thousands of entries inside the window)."""
    recovery_ids_per_read: int = 10_000
    tail_entries_max: int = 10_000
    read_entries_max: int = 1_000
    append_entries_max: int = 256
    append_inflight_max: int = 4
    append_timeout_ms: int = 1_000
    takeover_timeout_ms: int = 3_000
    commit_stall_ms: int = 5_000
    """A role whose oldest pending publish has waited this long gives up (COMMIT_STALLED)."""
    read_timeout_ms: int = 1_000
    pending_entries_max: int = 10_000
    queued_publishes_max: int = 1_000
    subscribers_max: int = 10_000
    delivery_entries_max: int = 256
    commit_notice_ms: int = 30_000
    """A replica not told our latest commit point by an append is told by an empty one once this
    long has passed since the last append it got (`notify_commit`, on the node's sweep)."""
    bugs: frozenset[str] = frozenset()


# Requests to store replicas. Adapters turn them into RPCs and feed the replies back.
@dataclass(frozen=True, slots=True)
class FenceRequest:
    channel: str
    epoch: int


@dataclass(frozen=True, slots=True)
class AppendRequest:
    channel: str
    epoch: int
    prev: Position
    entries: tuple[Entry, ...]
    sequence: int
    commit: int = 0  # our commit point when sent: the replica learns what of its log is committed
    from_base: bool = False  # `prev` is another replica's base: reset a replica that lacks it
    owner_now_ms: int = 0  # our wall clock when sent: stores trim only what both clocks call old

    def apply_to(self, replica: ReplicaLog) -> AppendReply:
        """This append, applied by a replica's rules (what a store does with it)."""
        return replica.append(
            self.channel, self.epoch, self.prev, self.entries, commit=self.commit, from_base=self.from_base
        )


@dataclass(frozen=True, slots=True)
class ReadRequest:
    channel: str
    epoch: int
    after_serial: int
    limit: int
    sequence: int
    ids_only: bool = False  # only (message id, timestamp) per entry: ReadReply.ids


StoreRequest = FenceRequest | AppendRequest | ReadRequest


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a publish comes to. `reason` is an UPPER_SNAKE_CASE code when `ok` is false."""

    ok: bool
    serials: tuple[int, ...] = ()
    duplicates: tuple[bool, ...] = ()
    reason: str = ""
    retryable: bool = False
    maybe_stored: bool = False
    """False only when the messages certainly were not assigned serials by this attempt."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Committed entries for one subscription, in serial order; or its end, with a reason."""

    entries: tuple[Entry, ...] = ()
    end_reason: str = ""
    gap_next_serial: int = 0
    """Non-zero: the entries from the subscriber's next serial up to this one are no longer retained
    (they come before `entries`, which start here if any)."""


@dataclass(frozen=True, slots=True)
class HistoryResult:
    entries: tuple[Entry, ...] = ()
    reason: str = ""
    gap_next_serial: int = 0
    """Non-zero: the entries asked for before this serial are no longer retained."""


class StoreSend(NamedTuple):
    """A request for one store replica: the adapter sends it and feeds the reply (or the failure) back."""

    replica: str
    request: StoreRequest


class PublishAnswer(NamedTuple):
    """The answer to the publish the adapter called with `token`."""

    token: int
    result: PublishResult


class SubscriberDelivery(NamedTuple):
    """Entries (or the end) for the subscription the adapter registered as `token`."""

    token: int
    delivery: Delivery


class HistoryAnswer(NamedTuple):
    """The answer to the history read the adapter called with `token`."""

    token: int
    result: HistoryResult


TakeoverPhase = Literal["fencing", "recovering", "serving", "failed"]


class TakeoverStep(NamedTuple):
    """A takeover's step, for traces and metrics."""

    channel: str
    epoch: int
    step: TakeoverPhase
    details: dict[str, int | str]


ReplicaFaultKind = Literal["fenced_out", "damaged", "conflict"]


class ReplicaFault(NamedTuple):
    """A replica found at fault, reported once per role. `fenced_out`: its fence is above our epoch
    while a quorum accepts us. `damaged`: it answered a read with a hole, a bad checksum or a wrong
    entry, or said itself that its log is damaged. `conflict`: it refused an append (DATA_LOSS)
    because it holds another entry at one of our (serial, epoch) — forged, or a broken writer."""

    channel: str
    replica: str
    kind: ReplicaFaultKind
    detail: str


class StaleInput(NamedTuple):
    """An input the role's state table drops: the answer to something an earlier state asked."""

    channel: str
    epoch: int
    input: str
    state: str


@dataclass(slots=True)
class Effects:
    """What the adapter must do, in order, after one input to a core: a value the core returns (as
    raft's `Ready`), never a parameter it fills. Each list holds one kind of typed record."""

    sends: list[StoreSend] = field(default_factory=list)
    results: list[PublishAnswer] = field(default_factory=list)
    deliveries: list[SubscriberDelivery] = field(default_factory=list)
    histories: list[HistoryAnswer] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    """Log lines (INFO): takeovers, step-downs, rings, refused appends."""
    takeovers: list[TakeoverStep] = field(default_factory=list)
    replica_faults: list[ReplicaFault] = field(default_factory=list)
    stale: list[StaleInput] = field(default_factory=list)

    def extend(self, other: Effects) -> None:
        """Add `other`'s effects after ours (the node gathers its roles' effects into one)."""
        self.sends.extend(other.sends)
        self.results.extend(other.results)
        self.deliveries.extend(other.deliveries)
        self.histories.extend(other.histories)
        self.events.extend(other.events)
        self.takeovers.extend(other.takeovers)
        self.replica_faults.extend(other.replica_faults)
        self.stale.extend(other.stale)
