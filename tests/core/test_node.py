"""The channel node core: the roles one process holds under a lease and a ring."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.core.entries import Message
from services.core.node import EPOCH_ATTEMPTS_PER_VERSION, ChannelNode, NodeConfig, NodeStatus, make_epoch
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    Effects,
    FenceRequest,
    RoleConfig,
    RoleState,
)
from tests.core.role_harness import STORES, Replicas, node_with, publish, published_via, run_node, take_over


def test_node_ticks_only_roles_with_work_waiting_on_time() -> None:
    replicas = Replicas()
    node = node_with(("n1",))
    node.on_lease(1_000_000)
    channels = [f"quiet-{index}" for index in range(500)]
    for token, channel in enumerate(channels):
        run_node(replicas, node, published_via(node, channel, token))
    assert len(node.roles) == 500 and node.busy_channels == 500  # every one was touched
    node.tick(10)
    assert node.busy_channels == 0  # all committed, nothing in flight: quiet, never ticked again
    # The sweep tells the replicas each commit point no append has told them yet, once.
    notice_ms = max(RoleConfig().commit_notice_ms, NodeConfig().idle_sweep_ms)
    effects = Effects()
    effects.extend(node.tick(notice_ms + 10))
    assert sum(1 for _, request in effects.sends if isinstance(request, AppendRequest) and not request.entries) == 1_500
    assert node.busy_channels == 500  # until the replies come
    run_node(replicas, node, effects, now_ms=notice_ms + 10)
    node.tick(notice_ms + 20)
    assert node.busy_channels == 0
    effects = Effects()
    effects.extend(node.tick(2 * notice_ms + 30))  # the next sweep: nothing is owed any more
    assert effects.sends == []
    replicas.down = {"store-b", "store-c"}
    now_ms = 2 * notice_ms + 40
    effects = run_node(replicas, node, published_via(node, "quiet-7", 1_000, now_ms=now_ms), now_ms=now_ms)
    assert node.busy_channels == 1 and not effects.results  # waits for a quorum
    timeout_ms = RoleConfig().append_timeout_ms
    effects.extend(node.tick(now_ms + timeout_ms + 1))
    # The tick reached it: its replicas were found unreachable and the publish failed fast.
    assert [(result.reason, result.maybe_stored) for _, result in effects.results] == [("QUORUM_UNAVAILABLE", True)]
    assert node.busy_channels == 1  # it probes its replicas until they answer


def test_commit_notices_of_many_quiet_channels_are_spread_over_sweeps() -> None:
    replicas = Replicas()
    node = node_with(("n1",))
    node.config = replace(node.config, commit_notices_per_sweep_max=200)
    node.on_lease(1_000_000)
    for token in range(500):
        run_node(replicas, node, published_via(node, f"many-{token}", token))
    tick_ms, pass_ms = 50, node.config.idle_sweep_ms
    begin_ms = RoleConfig().commit_notice_ms  # every channel owes its replicas a notice from here on
    node.tick(begin_ms)  # a pass begins
    per_pass, per_tick = [], []
    for begun_ms in range(begin_ms, begin_ms + 4 * pass_ms, pass_ms):
        notified: set[str] = set()
        for now_ms in range(begun_ms + tick_ms, begun_ms + pass_ms + 1, tick_ms):  # the ticks of one pass
            effects = Effects()
            effects.extend(node.tick(now_ms))
            channels = {request.channel for _, request in effects.sends}
            notified |= channels
            per_tick.append(len(channels))
            run_node(replicas, node, effects, now_ms=now_ms)
        per_pass.append(len(notified))
    assert per_pass == [200, 200, 100, 0]  # at most 200 roles' notices per pass
    # ... and a pass's share of the roles is spread over its ticks, not looked at in one.
    assert max(per_tick) <= 500 * tick_ms // pass_ms + 1


def test_a_sweep_pass_spreads_many_roles_over_its_ticks() -> None:
    replicas = Replicas()
    node = node_with(("n1",))
    node.on_lease(10_000_000)
    for token in range(2_000):
        run_node(replicas, node, published_via(node, f"spread-{token}", token))
    node.config = replace(node.config, role_idle_ms=0)  # every role is idle: the sweep steps down from it
    stepped_down = []
    for now_ms in range(10, 1_011, 50):  # the pass begins at 10 and ends at 1,010
        events = node.tick(now_ms).events
        stepped_down.append(sum(1 for event in events if event.startswith("stepped down")))
    assert sum(stepped_down) == 2_000 and node.roles == {}  # one pass, within idle_sweep_ms
    assert max(stepped_down) <= 2_000 * 50 // node.config.idle_sweep_ms + 2  # an even share per tick


def test_node_sweeps_every_role_for_idleness_at_its_own_pace() -> None:
    replicas = Replicas()
    node = ChannelNode("n1", NodeConfig(role_idle_ms=5_000, idle_sweep_ms=1_000))
    node.on_registered(3)
    node.on_lease(1_000_000)
    node.on_ring(Ring(3, ("n1",)))
    for token, channel in enumerate(("idle-a", "idle-b")):
        run_node(replicas, node, published_via(node, channel, token))
    effects = Effects()
    effects.extend(node.tick(100))  # the first tick sweeps
    effects.extend(node.tick(5_200))  # quiet long enough, and a sweep is due
    assert node.roles == {}
    assert sorted(event.split()[2] for event in effects.events if event.startswith("stepped down")) == [
        "idle-a",
        "idle-b",
    ]


def test_prepared_channels_are_taken_over_a_bounded_number_at_a_time() -> None:
    replicas = Replicas()
    members = ("n1", "n2")
    node = ChannelNode("n1", NodeConfig(takeovers_inflight_max=50, prepared_channels_max=400))
    node.on_registered(3)
    node.on_lease(1_000_000)
    node.on_ring(Ring(3, members))
    ring = Ring(3, members)
    ours = [f"p{i}" for i in range(2_000) if ring.owner(f"p{i}") == "n1"][:500]
    theirs = [f"p{i}" for i in range(2_000) if ring.owner(f"p{i}") == "n2"][:10]
    queued, effects = node.prepare(theirs + ours, 0)
    assert queued == 400  # not ours: ignored; beyond the queue bound: left
    fenced = {request.channel for _, request in effects.sends if isinstance(request, FenceRequest)}
    assert len(fenced) == 50 and fenced <= set(ours)
    assert node.status(0) == NodeStatus(True, 0, 50, 350, 0)
    now_ms = 0
    while node.status(now_ms).channels_prepared or node.status(now_ms).channels_taking_over:
        run_node(replicas, node, effects, now_ms)
        now_ms += 50
        effects = Effects()
        effects.extend(node.tick(now_ms))
        taking_over = {c for c, role in node.roles.items() if role.state is not RoleState.SERVING}
        assert len(taking_over) <= 50
    assert node.status(now_ms) == NodeStatus(True, 400, 0, 0, 400)
    assert set(node.roles) == set(ours[:400])
    assert node.prepare(ours, now_ms)[0] == 100  # held ones are skipped
    lost = ChannelNode("n1", NodeConfig())
    assert lost.prepare(ours, 0)[0] == 0  # no lease, no ring: nothing


def test_node_answers_not_owner_for_channels_of_others() -> None:
    node = node_with(("n1", "n2"))
    channel = next(f"c{i}" for i in range(100) if Ring(3, ("n1", "n2")).owner(f"c{i}") == "n2")
    effects = Effects()
    effects.extend(node.publish(channel, 1, (Message("m"),), 0))
    ((_, result),) = effects.results
    assert result.reason == "NOT_OWNER" and not result.maybe_stored


def test_node_epochs_grow_per_attempt_and_per_ring_version() -> None:
    node = node_with(("n1",))
    effects = Effects()
    effects.extend(node.publish("ch", 1, (Message("m"),), 0))
    assert node.roles["ch"].epoch == make_epoch(3, 0)
    effects.extend(node.roles["ch"].stop("TAKEOVER_TIMEOUT"))
    effects.extend(node.publish("ch", 2, (Message("m"),), 0))
    assert node.roles["ch"].epoch == make_epoch(3, 1)
    effects.extend(node.on_ring(Ring(4, ("n1", "n2"))))
    node.roles.pop("ch", None)
    owned = next(f"c{i}" for i in range(100) if Ring(4, ("n1", "n2")).owner(f"c{i}") == "n1")
    effects.extend(node.publish(owned, 3, (Message("m"),), 0))
    assert node.roles[owned].epoch == make_epoch(4, 0) > make_epoch(3, EPOCH_ATTEMPTS_PER_VERSION - 1)


def test_node_drops_every_channel_when_its_lease_runs_out() -> None:
    node = node_with(("n1",))
    effects = Effects()
    effects.extend(node.publish("ch", 1, (Message("m"),), 0))
    assert node.roles
    effects.extend(node.tick(1_000))
    assert node.roles == {}
    assert [result.reason for _, result in effects.results] == ["LEASE_LOST"]


def test_node_stops_a_role_when_the_ring_moves_its_channel() -> None:
    node = node_with(("n1",))
    effects = Effects()
    moving = next(f"c{i}" for i in range(100) if Ring(4, ("n1", "n2")).owner(f"c{i}") == "n2")
    effects.extend(node.publish(moving, 1, (Message("m"),), 0))
    effects.extend(node.on_ring(Ring(4, ("n1", "n2"))))
    assert moving not in node.roles
    assert [result.reason for _, result in effects.results] == ["CHANNEL_MOVED"]


def test_node_never_serves_under_a_ring_older_than_its_registration() -> None:
    node = ChannelNode("n1", NodeConfig())
    node.on_lease(1_000)
    node.on_ring(Ring(3, ("n1",)))
    node.on_registered(5)
    assert not node.serving(0)
    node.on_ring(Ring(5, ("n1",)))
    assert node.serving(0)


def test_after_etcd_lost_its_data_a_node_serves_under_the_new_rings_only() -> None:
    node = ChannelNode("n1", NodeConfig())
    node.on_lease(1_000)
    assert node.begin_registration() == 0
    node.on_ring(Ring(40, ("n1",)))  # the ring of our own registration can come first
    node.on_registered(40)
    assert node.serving(0)
    node.on_ring(Ring(41, ("n1",)))
    assert node.serving(0) and node.newest_version == 41
    # etcd is wiped: revisions start again, and the node registers anew at revision 3. Placement
    # keeps versions growing (version = revision + offset): the old ring, whose revision 41 is above
    # 3, must not count as new enough; the next ring of the new etcd does.
    assert node.begin_registration() == 41  # the floor the registration carries
    node.on_registered(3)
    assert not node.serving(0)
    node.on_ring(Ring(45, ("n1",), revision=4))
    assert node.serving(0)
    node.on_ring(Ring(46, ("n1",), revision=2))  # from before our registration there
    assert node.ring is not None and node.ring.version == 46 and not node.serving(0)


@pytest.mark.parametrize("attempt", [-1, EPOCH_ATTEMPTS_PER_VERSION])
def test_make_epoch_refuses_attempts_out_of_bounds(attempt: int) -> None:
    with pytest.raises(AssertionError):
        make_epoch(3, attempt)


def test_role_config_is_a_value() -> None:
    assert replace(RoleConfig(), dedup_window_ms=5).dedup_window_ms == 5


def test_a_role_whose_replicas_stop_answering_gives_up_with_commit_stalled() -> None:
    replicas = Replicas()
    config = RoleConfig(commit_stall_ms=1_000)
    role = take_over(replicas, epoch=7, config=config)
    replicas.down = {"store-b", "store-c"}
    publish(replicas, role, 1, "m1", now_ms=0)
    effects = Effects()
    effects.extend(role.tick(500))
    assert role.state is RoleState.SERVING
    effects.extend(role.tick(1_001))
    assert role.state is RoleState.STOPPED and role.stop_reason == "COMMIT_STALLED"
    assert [(result.reason, result.maybe_stored) for _, result in effects.results] == [("CHANNEL_MOVED", True)]


def test_a_node_cut_off_from_its_stores_says_so_after_a_bound_unless_it_is_alone() -> None:
    for members, expected in ((("n1", "n2"), "STORES_UNREACHABLE"), (("n1",), "")):
        node = ChannelNode("n1", NodeConfig(stores_unreachable_ms=4_000))
        node.on_registered(3)
        node.on_lease(1_000_000)
        node.on_ring(Ring(3, members))
        channel = next(f"c{i}" for i in range(100) if Ring(3, members).owner(f"c{i}") == "n1")
        replicas = Replicas()
        run_node(replicas, node, published_via(node, channel, 1))
        assert node.roles[channel].state is RoleState.SERVING
        replicas.down = set(STORES)  # every link to the stores is cut (a blackhole: no answer at all)
        now_ms = 100
        run_node(replicas, node, published_via(node, channel, 2, now_ms=now_ms), now_ms)
        while now_ms < 3_000:
            now_ms += 50
            node.tick(now_ms)
        assert node.health(now_ms) == ""  # publishes fail fast meanwhile; not long enough yet
        while now_ms < 7_000:
            now_ms += 50
            node.tick(now_ms)
        assert node.health(now_ms) == expected
        replicas.down = set()  # the links heal: the probes find the replicas, and all is well again
        for _ in range(60):
            now_ms += 50
            effects = Effects()
            effects.extend(node.tick(now_ms))
            run_node(replicas, node, effects, now_ms)
        assert node.health(now_ms) == ""


def test_a_node_with_stalling_roles_calls_itself_unhealthy_unless_it_is_alone() -> None:
    config = NodeConfig(stalled_roles_max=1, health_window_ms=10_000, role=RoleConfig(commit_stall_ms=100))
    for members, expected in ((("n1", "n2"), "COMMIT_STALLED"), (("n1",), "")):
        node = ChannelNode("n1", config)
        node.on_registered(3)
        node.on_lease(100_000)
        node.on_ring(Ring(3, members))
        owned = [f"c{i}" for i in range(200) if Ring(3, members).owner(f"c{i}") == "n1"][:2]
        effects = Effects()
        for channel in owned:  # no replica ever answers: fence, then nothing
            effects.extend(node.publish(channel, 1, (Message("m"),), 0))
        for role in node.roles.values():  # pretend the takeovers finished and the publishes wait
            role.state = RoleState.SERVING
            effects.extend(role.publish(2, (Message("x"),), 0))
        assert node.health(50) == ""
        effects.extend(node.tick(200))
        assert node.health(200) == expected
        assert node.health(20_000) == ""  # stalls age out of the window
