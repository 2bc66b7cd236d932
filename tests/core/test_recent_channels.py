"""The gateway's table of channels in use (what it prepares at new owners after a ring change)."""

from __future__ import annotations

from services.gateway.router import RecentChannels


def test_recent_channels_are_bounded_in_count_and_in_age_and_kept_fresh_by_use() -> None:
    recent = RecentChannels(entries_max=3, horizon_s=10.0)
    for index, channel in enumerate(("a", "b", "c", "d")):
        recent.touch(channel, float(index))
    assert recent.in_use(4.0) == ["b", "c", "d"]  # "a" was the least recently used over the bound
    recent.touch("b", 5.0)
    assert recent.in_use(5.0) == ["c", "d", "b"]
    assert recent.in_use(12.5) == ["d", "b"]  # "c" (used at 2.0) is older than 10 s now
    assert recent.in_use(100.0) == []
