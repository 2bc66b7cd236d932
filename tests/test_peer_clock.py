"""The peers' clock a process judges its own by (services/common/clock.py): per peer, so the busiest
peer does not carry the median, and warnings that follow a skew that moves."""

from __future__ import annotations

import logging
import time

import pytest

from services.common import clock
from services.common.clock import PeerClock

DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def test_the_busiest_peer_with_a_bad_clock_does_not_carry_the_median() -> None:
    """A store hears 100 appends from the owner of its busiest channel (80 days behind) for each one
    from two owners with good clocks: the owners' time is still the good one."""
    owners = PeerClock("owners")
    owners.observe("good-1", now_ms())
    owners.observe("good-2", now_ms())
    for _ in range(100):
        owners.observe("busy", now_ms() - 80 * DAY_MS)
    skew_ms = owners.check()
    assert skew_ms is not None and abs(skew_ms) < 1_000


def test_a_peer_replaced_by_a_new_connection_is_forgotten_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peers last heard `peer_forgotten_s` before the newest reading stop counting; a quiet spell
    (no readings at all) forgets no one."""
    monotonic = [1_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: monotonic[0])
    wall = 1_700_000_000_000
    peers = PeerClock("stores")
    peers.observe("old-a", wall - 80 * DAY_MS)
    peers.observe("old-b", wall - 80 * DAY_MS)
    peers.observe("new", wall)
    monotonic[0] += 3_600.0  # an hour of quiet: the three still count, the median is 80 days behind
    assert peers.now_ms() == wall - 80 * DAY_MS + 3_600_000
    peers.observe("new", wall + 3_600_000)
    assert peers.now_ms() == wall + 3_600_000  # the two old connections are forgotten


def test_peers_remembered_are_bounded() -> None:
    peers = PeerClock("owners")
    for number in range(clock.peers_max * 3):
        peers.observe(f"connection-{number}", now_ms())
    assert len(peers._readings) == clock.peers_max


def test_a_skew_that_moves_by_more_than_the_bound_is_said_again(caplog: pytest.LogCaptureFixture) -> None:
    """Warnings come once a minute at most — but a skew that changes by more than the bound since the
    last warning is said at once (the first peers heard may not be the ones that stay)."""
    peers = PeerClock("owners")
    caplog.set_level(logging.WARNING, logger="ringcast.clock")
    peers.observe("only", now_ms() - 160 * DAY_MS)
    peers.check()
    peers.check()
    assert len(caplog.records) == 1
    peers.observe("second", now_ms() - 80 * DAY_MS)
    peers.observe("third", now_ms() - 80 * DAY_MS)
    peers.check()
    assert len(caplog.records) == 2 and "+6912" in caplog.records[1].getMessage()
    peers.check()
    assert len(caplog.records) == 2
