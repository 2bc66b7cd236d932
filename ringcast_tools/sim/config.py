"""What shapes a simulated run: its config drawn from the seed, the role's small bounds, the result."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.core.checker import Violation
from services.core.replica_log import Retention
from services.core.role import (
    RoleConfig,
)

STORES = ("store-a", "store-b", "store-c")


ETCD = "etcd"


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The shape of one run, drawn from its seed."""

    nodes: int
    channels: int
    publishers: int
    subscribers: int
    drop_probability: float
    duplicate_probability: float
    delay_max_ms: int
    spike_probability: float
    fault_gap_ms: tuple[int, int]
    watch_lag_ms: int
    load_ms: int = 2_500
    settle_ms: int = 2_500
    lease_ttl_ms: int = 300
    keepalive_ms: int = 75
    tick_ms: int = 10
    fsync_ms: int = 2
    publish_timeout_ms: int = 250
    subscriber_idle_ms: int = 400
    nodes_max: int = 6
    retention: Retention | None = None
    """None: stores keep everything. Otherwise they trim every `trim_every_ms`, and a publisher gives
    an operation up `keep_recent_ms - retry_slack_ms` after invoking it, so that its last attempt is
    handled (network delay, a takeover queue) while its first copy's id is still retained: the premise
    of exactly-once, as the SDK's retry deadline is far below the stores' keep_recent (120 s)."""
    retry_slack_ms: int = 1_000
    trim_every_ms: int = 50
    scrub_every_ms: int = 200
    steps_max: int = 1_000_000
    """Events one run may take (a run takes tens of thousands): beyond, it is a livelock — some
    exchange retrying without a pause — and the seed fails instead of running on for hours."""

    @classmethod
    def draw(cls, rng: random.Random) -> SimConfig:
        quiet = rng.random() < 0.2
        retention = rng.choice((None, None, (8, 1_500), (30, 2_000)))
        return cls(
            retention=None
            if retention is None
            else Retention(age_ms=2 * retention[1], entries_max=retention[0], keep_recent_ms=retention[1]),
            nodes=rng.randint(2, 4),
            channels=rng.randint(1, 3),
            publishers=rng.randint(3, 8),
            subscribers=rng.randint(1, 3),
            drop_probability=0.0 if quiet else rng.choice((0.0, 0.01, 0.05, 0.1)),
            duplicate_probability=0.0 if quiet else rng.choice((0.0, 0.02, 0.05)),
            delay_max_ms=rng.choice((2, 5, 10, 30)),
            spike_probability=rng.choice((0.0, 0.01, 0.05)),
            fault_gap_ms=rng.choice(((20, 80), (40, 150), (80, 250))),
            watch_lag_ms=rng.choice((0, 50, 200)),
        )


def role_config(bugs: frozenset[str]) -> RoleConfig:
    """Small bounds and short timeouts, so that every path (backfill, retransmit) is exercised."""
    return RoleConfig(
        replicas=STORES,
        dedup_window_ms=60_000,
        tail_entries_max=24,
        read_entries_max=16,
        recovery_full_entries_max=12,
        recovery_ids_per_read=10,
        append_entries_max=8,
        append_inflight_max=3,
        append_timeout_ms=120,
        takeover_timeout_ms=500,
        commit_stall_ms=2_000,
        read_timeout_ms=150,
        pending_entries_max=400,
        queued_publishes_max=200,
        delivery_entries_max=8,
        bugs=bugs,
    )


@dataclass(slots=True)
class SimResult:
    seed: int
    violations: list[Violation]
    digest: str
    stats: dict[str, int] = field(default_factory=dict)


class Counter(dict[str, int]):
    def __missing__(self, key: str) -> int:
        return 0
