"""Tests for the placement ring: determinism, minimal movement, balance, the memo bound."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.core.ring import Ring, RingStats, format_stats, owner_cache_entries_max, simulate

repository_root = Path(__file__).resolve().parents[2]

# A child interpreter only imports the ring and hashes a few ids; a minute means it hung.
subprocess_timeout_seconds = 60

member_ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12)
member_sets = st.sets(member_ids, max_size=12)
channel_names = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
channel_lists = st.lists(channel_names, min_size=1, max_size=40)


def _reference_hash(text: str, personalisation: bytes) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=personalisation).digest()
    return int.from_bytes(digest, "big")


def _reference_weight(channel: str, member: str) -> int:
    """The weight exactly as the module docstring states it, written out independently."""
    value = _reference_hash(channel, b"ringcast.channel") ^ _reference_hash(member, b"ringcast.member")
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) % 2**64
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) % 2**64
    value ^= value >> 33
    return value


def _reference_owner(members: set[str], channel: str) -> str | None:
    """The highest weight wins; among equal weights the smaller member id wins."""
    if not members:
        return None
    return min(members, key=lambda member: (-_reference_weight(channel, member), member))


def _owners(ring: Ring, channels: list[str]) -> list[str | None]:
    return [ring.owner(channel) for channel in channels]


# Determinism.


@given(data=st.data(), members=st.lists(member_ids, max_size=12), channels=channel_lists)
def test_owners_do_not_depend_on_member_order_or_duplicates(
    data: st.DataObject, members: list[str], channels: list[str]
) -> None:
    with_duplicates = members + members[: len(members) // 2]
    shuffled = data.draw(st.permutations(with_duplicates), label="shuffled")
    assert _owners(Ring(0, members), channels) == _owners(Ring(0, shuffled), channels)


@given(members=member_sets, channels=channel_lists, version=st.integers(min_value=0, max_value=2**63))
def test_owners_do_not_depend_on_the_version(members: set[str], channels: list[str], version: int) -> None:
    ring = Ring(version, members)
    assert ring.version == version
    assert _owners(ring, channels) == _owners(Ring(0, members), channels)


@given(members=member_sets, channels=channel_lists)
def test_two_fresh_rings_agree_in_any_lookup_order(members: set[str], channels: list[str]) -> None:
    first = Ring(3, members)
    second = Ring(3, members)
    # The second ring answers in reverse order, so its memo is filled differently from the first's.
    reversed_owners = [second.owner(channel) for channel in reversed(channels)]
    assert _owners(first, channels) == list(reversed(reversed_owners))


@given(members=member_sets, channels=channel_lists)
def test_owners_follow_the_documented_rule(members: set[str], channels: list[str]) -> None:
    ring = Ring(0, members)
    assert _owners(ring, channels) == [_reference_owner(members, channel) for channel in channels]


# Parties running different releases must agree on owners during a rolling upgrade, so the placement
# of these channels is pinned: a change here moves live channels and needs a migration, not an edit.
golden_members = [f"node-{index}" for index in range(5)]
golden_owner_by_channel = {
    "orders": "node-3",
    "chat:lobby": "node-4",
    "alerts": "node-0",
    "channel-0": "node-1",
    "channel-5": "node-2",
    "": "node-1",
    "émoji-🚀": "node-1",
}


def test_owners_of_pinned_channels_have_not_changed() -> None:
    ring = Ring(0, golden_members)
    assert {channel: ring.owner(channel) for channel in golden_owner_by_channel} == golden_owner_by_channel


def test_processes_with_different_hash_seeds_compute_the_same_owners() -> None:
    members = [f"node-{index}" for index in range(7)] + ["gateway-eu", "gateway-us"]
    channels = [*golden_owner_by_channel, "chat:room-42", "ticker/ACME", "x" * 300]
    program = (
        "import json, sys\n"
        "from services.core.ring import Ring\n"
        "ring = Ring(0, json.loads(sys.argv[1]))\n"
        "channels = json.loads(sys.argv[2])\n"
        "print(json.dumps({'owners': [ring.owner(c) for c in channels], 'salted': hash(channels[0])}))\n"
    )
    results = []
    for seed in ("1", "2"):
        completed = subprocess.run(
            [sys.executable, "-c", program, json.dumps(members), json.dumps(channels)],
            cwd=repository_root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=subprocess_timeout_seconds,
            check=True,
        )
        results.append(json.loads(completed.stdout))
    # The seeds really salted `hash()` differently, so agreement on owners is not an accident.
    assert results[0]["salted"] != results[1]["salted"]
    expected = _owners(Ring(0, members), channels)
    assert results[0]["owners"] == expected
    assert results[1]["owners"] == expected


# Minimal movement.


@given(data=st.data(), members=member_sets, channels=channel_lists)
def test_a_join_moves_channels_only_to_the_newcomer(
    data: st.DataObject, members: set[str], channels: list[str]
) -> None:
    newcomer = data.draw(member_ids.filter(lambda member: member not in members), label="newcomer")
    before = Ring(1, members)
    after = Ring(2, members | {newcomer})
    for channel in channels:
        if after.owner(channel) != before.owner(channel):
            assert after.owner(channel) == newcomer, channel


@given(data=st.data(), members=member_sets.filter(bool), channels=channel_lists)
def test_a_leave_moves_only_the_leavers_channels(data: st.DataObject, members: set[str], channels: list[str]) -> None:
    leaver = data.draw(st.sampled_from(sorted(members)), label="leaver")
    before = Ring(1, members)
    after = Ring(2, members - {leaver})
    for channel in channels:
        if after.owner(channel) != before.owner(channel):
            assert before.owner(channel) == leaver, channel
        assert after.owner(channel) != leaver


def test_a_leavers_channels_spread_over_every_survivor() -> None:
    members = {f"node-{index}" for index in range(10)}
    channels = [f"channel-{index}" for index in range(20_000)]
    before = Ring(1, members)
    after = Ring(2, members - {"node-0"})
    receivers = Counter(after.owner(channel) for channel in channels if before.owner(channel) == "node-0")
    # node-0 owns about 2,000 channels, so each of the 9 survivors should receive about 222 of them.
    assert set(receivers) == members - {"node-0"}
    assert min(receivers.values()) >= 0.5 * sum(receivers.values()) / 9


# Balance.


def test_ten_nodes_share_one_hundred_thousand_channels_evenly() -> None:
    stats = simulate(10, 100_000)
    assert (stats.nodes, stats.channels) == (10, 100_000)
    assert stats.ideal == pytest.approx(1 / 11)
    assert stats.max_over_mean <= 1.10
    assert stats.moved_on_join <= 1.10 * stats.ideal
    # A join that moved too little would mean the newcomer is starved; that is a failure too.
    assert stats.moved_on_join >= 0.90 * stats.ideal


def test_no_node_is_starved() -> None:
    ring = Ring(0, (f"node-{index}" for index in range(10)))
    owned = Counter(ring.owner(f"channel-{index}") for index in range(20_000))
    assert set(owned) == set(ring.members)
    assert min(owned.values()) >= 0.9 * 20_000 / 10


def test_small_simulation_is_pinned() -> None:
    assert format_stats(simulate(3, 1000)) == (
        "nodes=3 channels=1000 max_over_mean=1.0320 moved_on_join=0.2390 ideal=0.2500"
    )


def test_format_stats_prints_four_decimals() -> None:
    stats = RingStats(nodes=4, channels=10, max_over_mean=1.23456, moved_on_join=0.2, ideal=0.2)
    assert format_stats(stats) == "nodes=4 channels=10 max_over_mean=1.2346 moved_on_join=0.2000 ideal=0.2000"


def test_simulate_rejects_empty_inputs() -> None:
    with pytest.raises(ValueError):
        simulate(0, 10)
    with pytest.raises(ValueError):
        simulate(3, 0)


# Edges.


@given(channels=channel_lists)
def test_an_empty_ring_owns_nothing(channels: list[str]) -> None:
    ring = Ring(0, [])
    assert len(ring) == 0
    assert ring.members == ()
    assert all(ring.owner(channel) is None for channel in channels)
    assert "node-0" not in ring


@given(member=member_ids, channels=channel_lists)
def test_a_single_member_owns_everything(member: str, channels: list[str]) -> None:
    ring = Ring(0, [member])
    assert all(ring.owner(channel) == member for channel in channels)


def test_members_are_sorted_and_unique() -> None:
    ring = Ring(5, ["node-2", "node-0", "node-2", "node-1"])
    assert ring.members == ("node-0", "node-1", "node-2")
    assert len(ring) == 3
    assert "node-1" in ring
    assert "node-3" not in ring


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Ring(-1, ["node-0"])
    with pytest.raises(TypeError):
        Ring(0, "node-0")
    with pytest.raises(ValueError):
        Ring(0, ["node-0", ""])
    with pytest.raises(ValueError):
        Ring(0, ["node-0"], owner_cache_entries_max=0)


# The memo.


@given(
    members=member_sets.filter(bool),
    lookups=st.lists(st.sampled_from([f"channel-{index}" for index in range(30)]), max_size=200),
    bound=st.integers(min_value=1, max_value=16),
)
def test_the_memo_stays_within_its_bound_and_never_changes_an_answer(
    members: set[str], lookups: list[str], bound: int
) -> None:
    ring = Ring(0, members, owner_cache_entries_max=bound)
    for channel in lookups:
        assert ring.owner(channel) == _reference_owner(members, channel)
        assert 1 <= ring.owner_cache_entries <= bound


def test_the_default_memo_stays_within_its_bound() -> None:
    ring = Ring(0, ["node-0", "node-1", "node-2"])
    for index in range(owner_cache_entries_max + 10):
        ring.owner(f"channel-{index}")
        assert ring.owner_cache_entries <= owner_cache_entries_max
    assert ring.owner_cache_entries > 0
