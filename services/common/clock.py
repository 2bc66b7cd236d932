"""What other processes' wall clocks say, compared with this one's.

Wall clocks are trusted nowhere alone. A store trims by age only as far as both its own clock and
its owners' clocks agree an entry is old (the earlier of the two "nows"); an owner ages its dedup
window on its monotonic clock, and stamps messages with its own clock unless that is further than
the bound from its stores' (their median), then with theirs. And each process watches how far its
clock is from its peers':
stores from the clocks owners send with every append, owners from the clocks stores send back.
Beyond `clock_skew_ms_max` it says so: a warning in the log (once a minute at most) and the gauge
`ringcast_clock_skew_seconds{peers}` (ours minus theirs).

Readings are kept as offsets from this process's monotonic clock, so a reading stays good as time
passes; the peers' time now is the median of the newest `readings_max` offsets plus the monotonic
clock (one peer with a bad clock cannot move a median of several).
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

readings_max = 64
"""Peer clock readings kept (the newest)."""

warn_every_s = 60.0


class PeerClock:
    """The wall-clock time of a kind of peer (`peers`: "owners" or "stores"), as they report it."""

    def __init__(self, peers: str) -> None:
        self.peers = peers
        self._offsets: deque[float] = deque(maxlen=readings_max)  # peer wall ms - our monotonic ms
        self._warned = float("-inf")

    def observe(self, peer_wall_ms: int) -> None:
        """A peer said its wall clock read `peer_wall_ms` (just now, give or take a round trip)."""
        if peer_wall_ms <= 0:
            return
        self._offsets.append(peer_wall_ms - time.monotonic() * 1000)

    def now_ms(self) -> int | None:
        """The peers' wall-clock time now (the median of their readings); None before any reading."""
        if not self._offsets:
            return None
        return int(statistics.median(self._offsets) + time.monotonic() * 1000)

    def check(self) -> int | None:
        """Our clock minus the peers' (ms), reported when beyond the bound; None before any reading."""
        theirs = self.now_ms()
        if theirs is None:
            return None
        skew_ms = int(time.time() * 1000) - theirs
        metrics.clock_skew_seconds.labels(self.peers).set(skew_ms / 1000)
        monotonic = time.monotonic()
        if abs(skew_ms) > clock_skew_ms_max and monotonic - self._warned > warn_every_s:
            self._warned = monotonic
            log.warning(
                "this process's wall clock is %+.1f s off its %s' (over the %.0f s allowed): "
                "it goes by theirs where that matters; fix the clock (NTP)",
                skew_ms / 1000,
                self.peers,
                clock_skew_ms_max / 1000,
            )
        return skew_ms
