"""What other processes' wall clocks say, compared with this one's.

Wall clocks are trusted nowhere alone. A store trims by age only as far as both its own clock and
its owners' clocks agree an entry is old (the earlier of the two "nows"); an owner ages its dedup
window on its monotonic clock, and stamps messages with its own clock unless that is further than
the bound from its stores' (their median), then with theirs. And each process watches how far its
clock is from its peers':
stores from the clocks owners send with every append, owners from the clocks stores send back.
Beyond `clock_skew_ms_max` it says so: a warning in the log (once a minute at most, unless the skew
moved by more than the bound since the last one) and the gauge
`ringcast_clock_skew_seconds{peers}` (ours minus theirs).

Readings are kept as offsets from this process's monotonic clock, so a reading stays good as time
passes, and per peer (a connection): each peer's clock is the median of its newest
`readings_per_peer` offsets, and the peers' time now is the median across the peers heard from within
`peer_forgotten_s` of the newest reading. Per peer, because readings come with traffic: a store hears mostly from the
owner of its busiest channel, and a median of readings would be that one owner's clock — bad or not.
A median of peers is moved by no single bad clock once there are three.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque

from services.common import metrics


def monotonic_ms() -> int:
    """This process's monotonic clock in ms: the time cores run on (timers, ages), never a date."""
    return int(time.monotonic() * 1000)


log = logging.getLogger("ringcast.clock")

clock_skew_ms_max = 60_000
"""How far this process's wall clock may be from its peers' before it says so."""

readings_per_peer = 8
"""Clock readings kept per peer (the newest)."""

peers_max = 64
"""Peers remembered at most (the ones heard from longest ago are forgotten first)."""

peer_forgotten_s = 60.0
"""A peer last heard from this long before the newest reading no longer counts (it left, or its
connection was replaced). Measured from the newest reading, not from now: a quiet spell forgets no one."""

warn_every_s = 60.0


class PeerClock:
    """The wall-clock time of a kind of peer (`peers`: "owners" or "stores"), as they report it."""

    def __init__(self, peers: str) -> None:
        self.peers = peers
        # per peer: (our monotonic s when last heard, its newest offsets: peer wall ms - our monotonic ms)
        self._readings: dict[str, tuple[float, deque[float]]] = {}
        self._warned, self._warned_skew_ms = float("-inf"), 0  # when we last warned, and of what skew

    def observe(self, peer: str, peer_wall_ms: int) -> None:
        """`peer` (a name or a connection) said its wall clock read `peer_wall_ms` (just now, give or
        take a round trip)."""
        if peer_wall_ms <= 0:
            return
        monotonic = time.monotonic()
        heard = self._readings.pop(peer, None)  # re-inserted last: the dict stays in order of hearing
        offsets = heard[1] if heard is not None else deque(maxlen=readings_per_peer)
        offsets.append(peer_wall_ms - monotonic * 1000)
        self._readings[peer] = (monotonic, offsets)
        while len(self._readings) > peers_max:
            del self._readings[next(iter(self._readings))]

    def now_ms(self) -> int | None:
        """The peers' wall-clock time now (the median across peers of each one's median reading);
        None before any reading."""
        if not self._readings:
            return None
        newest = self._readings[next(reversed(self._readings))][0]
        while newest - self._readings[oldest := next(iter(self._readings))][0] > peer_forgotten_s:
            del self._readings[oldest]
        offset = statistics.median([statistics.median(offsets) for _, offsets in self._readings.values()])
        return int(offset + time.monotonic() * 1000)

    def check(self) -> int | None:
        """Our clock minus the peers' (ms), reported when beyond the bound; None before any reading."""
        theirs = self.now_ms()
        if theirs is None:
            return None
        skew_ms = int(time.time() * 1000) - theirs
        metrics.clock_skew_seconds.labels(self.peers).set(skew_ms / 1000)
        monotonic = time.monotonic()
        changed = abs(skew_ms - self._warned_skew_ms) > clock_skew_ms_max
        if abs(skew_ms) > clock_skew_ms_max and (monotonic - self._warned > warn_every_s or changed):
            self._warned, self._warned_skew_ms = monotonic, skew_ms
            log.warning(
                "this process's wall clock is %+.1f s off its %s' (over the %.0f s allowed): "
                "it goes by theirs where that matters; fix the clock (NTP)",
                skew_ms / 1000,
                self.peers,
                clock_skew_ms_max / 1000,
            )
        return skew_ms
