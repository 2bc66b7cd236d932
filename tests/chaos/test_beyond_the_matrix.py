"""Faults beyond the first fault matrix, on fresh clusters of real processes (issue #13).

Each row runs the history-recording workload while it breaks the cluster the way an operator's bad
day would, then asks the checker for 0 lost, 0 duplicated, 0 gaps, 0 reorders, every subscriber
caught up, acks in real-time order, and progress after the fault. A row that plants a deliberate bug
shows that the same row fails a build without the defence it tests.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
from pathlib import Path

import pytest

from ringcast.chaos.workload import clock_ms
from ringcast.checker import History, check
from ringcast.cluster.launcher import Launcher, healthy
from services.store.server import database_file_name
from tests.chaos.conftest import (
    BUSY,
    CHANNELS,
    Background,
    ClusterFactory,
    LoadStarter,
    assert_history_clean,
    owner_of,
    wait_until,
)
from tests.chaos.test_fault_matrix import HEALED_ACKS, LOAD, report

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

OLD_ACKS = 1_200
"""Acks on the busy channel before the damage: the damaged entry (serial 50) is then older than a
takeover's whole-entry read (the newest 1,000), so readers reach it only through replica reads."""

HOLE_SERIAL = 50
FLIPPED_SERIAL = 60


def _store_file(cluster: Launcher, zone: str) -> Path:
    return Path(cluster.topology.named(f"store-{zone}").data_dir) / database_file_name


def _damage_store_a(cluster: Launcher) -> None:
    """With store-a stopped: delete one committed row of the busy channel, set bit 40 of another's
    serial, and set bit 40 of another channel's fence. SQLite's integrity check passes all three."""
    connection = sqlite3.connect(_store_file(cluster, "a"))
    try:
        with connection:
            deleted = connection.execute(
                "DELETE FROM entries WHERE channel = ? AND serial = ?", (BUSY, HOLE_SERIAL)
            ).rowcount
            flipped = connection.execute(
                "UPDATE entries SET serial = serial | (1 << 40) WHERE channel = ? AND serial = ?",
                (BUSY, FLIPPED_SERIAL),
            ).rowcount
            fenced = connection.execute(
                "UPDATE fences SET epoch = epoch | (1 << 40) WHERE channel = ?", (CHANNELS[1],)
            ).rowcount
        assert (deleted, flipped, fenced) == (1, 1, 1)
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        connection.close()


def _repaired(cluster: Launcher) -> bool:
    """Store-a's log of the busy channel is whole again: contiguous, nothing far beyond its end."""
    connection = sqlite3.connect(f"file:{_store_file(cluster, 'a')}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT serial FROM entries WHERE channel = ? ORDER BY serial", (BUSY,))
        serials = [int(row[0]) for row in rows]
    finally:
        connection.close()
    return bool(serials) and serials == list(range(serials[0], serials[0] + len(serials))) and serials[-1] < 1 << 40


def _run_damage_row(cluster: Launcher, start_load: LoadStarter) -> tuple[Background, History]:
    background = start_load(cluster, LOAD)
    background.wait_for_acks(OLD_ACKS, channel=BUSY, timeout_s=60)
    cluster.kill("store-a", signal.SIGKILL)
    _damage_store_a(cluster)
    cluster.restart("store-a")
    owner = owner_of(cluster, BUSY)
    damaged_ms = clock_ms()
    cluster.kill(owner, signal.SIGKILL)  # the next owner takes the channel over from the damaged logs
    background.wait_for_acks(HEALED_ACKS, since_ms=damaged_ms, channel=BUSY, timeout_s=30)
    background.wait_for_acks(HEALED_ACKS, since_ms=damaged_ms, channel=CHANNELS[1], timeout_s=30)
    cluster.restart(owner)
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    return background, background.finish()


def test_one_replica_damaged_at_rest_under_load(cluster: Launcher, start_load: LoadStarter) -> None:
    """Store-a comes back from a crash with a row of the busy channel gone, another's serial flipped
    far beyond the log's end, and another channel's fence absurdly high; then the busy channel's
    owner is SIGKILLed, so the next owner takes it over from those logs. Every reader still gets
    every serial (the final logs are read from serial 1, through replica reads), both channels keep
    being served, and store-a is rewritten from a good replica."""
    background, history = _run_damage_row(cluster, start_load)
    assert_history_clean(background, history)
    repaired_s = wait_until(lambda: _repaired(cluster), "store-a's log of the busy channel to be whole again", 30)
    report("replica_damaged", repaired_after_finish_s=round(repaired_s, 2), summary=background.workload.summary())


def test_the_damage_row_fails_a_build_that_trusts_one_replicas_read(
    make_cluster: ClusterFactory, start_load: LoadStarter
) -> None:
    """The same row on a build with the deliberate bug `unchecked-reads` (stores serve what they
    hold as it is, owners take a read reply as it comes): the checker must find the hole."""
    cluster = make_cluster(env={"RINGCAST_BUGS": "unchecked-reads"})
    background, history = _run_damage_row(cluster, start_load)
    violations = check(history)
    report("replica_damaged[unchecked-reads]", violations=[str(v) for v in violations[:5]])
    assert violations, "a build that trusts one replica's read served the damaged log without a gap"


WIPES = 3
"""etcd loses its data this many times in a row: which process registers again first is a race."""


def test_etcd_loses_its_data_again_and_again_under_load(cluster: Launcher, start_load: LoadStarter) -> None:
    """etcd is SIGKILLed, its data directory deleted, and started again, three times under load: every
    lease, member key and revision is gone each time, and revisions start again from 1. Without anyone
    restarting a process, every channel is served again (owners take it over at epochs above the
    fences the stores kept, from ring versions placement keeps growing), nothing is lost, and every
    process says SERVING at the end because it is."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(HEALED_ACKS, channel=BUSY)
    spec = cluster.topology.named("etcd")
    gaps_ms = []
    for _ in range(WIPES):
        wiped_ms = clock_ms()
        cluster.kill("etcd", signal.SIGKILL)
        shutil.rmtree(spec.data_dir)
        cluster.restart("etcd")
        for channel in CHANNELS:
            background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=channel, timeout_s=30)
        gaps_ms.append(background.workload.longest_ack_gap_ms(wiped_ms, clock_ms(), BUSY))
    history = background.finish()
    assert_history_clean(background, history)
    unhealthy = [p.name for p in cluster.topology.processes if p.role not in ("proxy", "redis") and not healthy(p)]
    assert unhealthy == []
    report("etcd_wiped", wipes=WIPES, longest_ack_gap_ms=gaps_ms, summary=background.workload.summary())
