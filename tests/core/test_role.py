"""The channel role, wired straight to three in-memory replicas (no network): takeover, dedup,
fencing, recovery, replication, subscribers and timeouts."""

from __future__ import annotations

from dataclasses import replace

from services.core.entries import Message
from services.core.memory_log import MemoryLogStorage
from services.core.node import ChannelNode, NodeConfig, make_epoch
from services.core.replica_log import AppendReply, FenceReply, ReadReply, ReplicaLog
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    ChannelRole,
    Effects,
    ReadRequest,
    RoleConfig,
    RoleState,
)
from tests.core.role_harness import STORES, Replicas, entries, publish, published_via, run_node, take_over


def test_publishes_made_together_go_to_each_replica_in_one_append_and_are_acked_each_in_order() -> None:
    """Publishes made with `send` False wait; one `send` carries them all in one append per replica
    (an owner's group commit), and each publish is still answered on its own, in serial order."""
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    effects = Effects()
    for token in (1, 2, 3):
        effects.extend(role.publish(token, (Message(f"m{token}"), Message(f"m{token}b")), 0, send=False))
    effects.extend(role.publish(4, (Message("m1"),), 0, send=False))  # a retry: waits for serial 1 to commit
    assert effects.sends == [] and effects.results == []
    sent = role.send(0)
    appends = [request for _, request in sent.sends]
    assert len(appends) == len(STORES)
    assert all(isinstance(a, AppendRequest) and [e.serial for e in a.entries] == [1, 2, 3, 4, 5, 6] for a in appends)
    replicas.run(role, sent)
    assert [(token, result.ok, result.serials) for token, result in sent.results] == [
        (1, True, (1, 2)),
        (2, True, (3, 4)),
        (3, True, (5, 6)),
        (4, True, (1,)),
    ]


def test_a_node_sends_what_publishes_left_waiting_per_channel() -> None:
    node = ChannelNode("n1", NodeConfig())
    assert node.send(["no-such-channel"], 0).sends == []


def test_takeover_of_an_empty_channel_serves_and_acks_at_quorum() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    assert role.state is RoleState.SERVING
    replicas.down = {"store-c"}
    effects = publish(replicas, role, 1, "m1", "m2")
    assert [(token, result.ok, result.serials) for token, result in effects.results] == [(1, True, (1, 2))]
    assert replicas.ids("store-a") == [(1, 7, "m1"), (2, 7, "m2")]
    assert replicas.ids("store-c") == []


def test_a_takeover_reads_the_newest_entries_whole_and_older_dedup_ids_only() -> None:
    replicas = Replicas()
    old = entries(3, 1, *(f"m{n}" for n in range(1, 51)))
    for name in STORES:
        replicas.write(name, old)
    config = RoleConfig(recovery_full_entries_max=5, recovery_ids_per_read=7, recovery_read_entries_max=40)
    role = ChannelRole("ch", 9, config, 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    reads = [request for _, request in effects.sends if isinstance(request, ReadRequest)]
    whole = [read for read in reads if not read.ids_only]
    ids = [read for read in reads if read.ids_only]
    assert sum(read.limit for read in whole) == 6  # the base entry (45) and the 5 newest (46..50)
    assert [(read.after_serial, read.limit) for read in ids] == [(10, 7), (17, 7), (24, 7), (31, 7), (38, 7)]
    assert role.state is RoleState.SERVING and role.tail_base == 45 and len(role.tail) == 5
    assert len(role.dedup) == 40  # m11..m50: the ids of 11..45 and the tail's 46..50
    effects = publish(replicas, role, 1, "m12", "m47", "new")  # retries of old messages, and a new one
    assert [(token, r.serials, r.duplicates) for token, r in effects.results] == [
        (1, (12, 47, 51), (True, True, False))
    ]


def test_no_ack_without_a_quorum_and_a_retry_finds_the_original_serial() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    replicas.down = {"store-b", "store-c"}
    effects = publish(replicas, role, 1, "m1")
    assert effects.results == []
    replicas.down = set()
    effects = Effects()
    effects.extend(role.tick(2_000))  # both appends timed out: no quorum is reachable, so the publish fails fast...
    replicas.run(role, effects, 2_000)  # ...while the resent appends land and commit serial 1 anyway
    assert [(token, r.reason, r.maybe_stored) for token, r in effects.results] == [(1, "QUORUM_UNAVAILABLE", True)]
    assert role.commit == 1
    effects = publish(replicas, role, 2, "m1")  # the client's retry, same id
    assert [(token, r.serials, r.duplicates) for token, r in effects.results] == [(2, (1,), (True,))]


def test_publishes_fail_fast_while_a_quorum_is_unreachable_and_resume_after() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    replicas.down = {"store-b", "store-c"}
    publish(replicas, role, 1, "m1")
    effects = Effects()
    effects.extend(role.tick(2_000))
    replicas.run(role, effects, 2_000)
    effects = publish(replicas, role, 2, "m2", now_ms=2_001)  # refused at once, nothing assigned
    ((_, result),) = effects.results
    assert (result.ok, result.reason, result.maybe_stored) == (False, "QUORUM_UNAVAILABLE", False)
    assert role.last == 1
    replicas.down = set()
    for now_ms in (4_000, 6_000):  # retransmissions and probes find the replicas again
        effects = Effects()
        effects.extend(role.tick(now_ms))
        replicas.run(role, effects, now_ms)
    effects = publish(replicas, role, 3, "m3", now_ms=6_001)
    assert [(r.ok, r.serials) for _, r in effects.results] == [(True, (2,))]


def test_ack_before_quorum_bug_acks_with_no_replica() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=RoleConfig(bugs=frozenset({"ack-before-quorum"})))
    replicas.down = set(STORES)
    effects = publish(replicas, role, 1, "m1")
    assert [result.ok for _, result in effects.results] == [True]


def test_duplicate_id_returns_the_original_serial_also_after_takeover() -> None:
    replicas = Replicas()
    first = take_over(replicas, epoch=7)
    publish(replicas, first, 1, "a", "b")
    effects = publish(replicas, first, 2, "b", "c")
    ((_, result),) = effects.results
    assert result.serials == (2, 3) and result.duplicates == (True, False)
    second = take_over(replicas, epoch=9)
    effects = publish(replicas, second, 3, "a")
    ((_, result),) = effects.results
    assert result.serials == (1,) and result.duplicates == (True,)
    assert [message_id for _, _, message_id in replicas.ids("store-a")] == ["a", "b", "c"]


def test_a_new_owner_whose_clock_is_far_off_still_finds_retries_of_adopted_messages() -> None:
    day_ms = 86_400_000
    for skew_ms in (80 * day_ms, -80 * day_ms):
        replicas = Replicas()
        first = take_over(replicas, epoch=7)
        first.wall_offset_ms = 1_000_000_000_000  # wall-clock time, about 2001
        publish(replicas, first, 1, "a", "b", now_ms=10)
        second = ChannelRole("ch", 9, RoleConfig(dedup_window_ms=120_000), 20)
        second.wall_offset_ms = 1_000_000_000_000 + skew_ms
        effects = Effects()
        effects.extend(second.start())
        replicas.run(second, effects, 20)
        for now_ms in (1_000, 60_000):  # well inside the window, as the clients' retries come
            effects = Effects()
            effects.extend(second.tick(now_ms))
            effects = publish(replicas, second, 2, "b", now_ms=now_ms)
            assert [(r.serials, r.duplicates) for _, r in effects.results] == [((2,), (True,))], skew_ms
        effects = Effects()
        effects.extend(second.tick(200_000))  # past the window: forgotten, by the owner's own elapsed time
        assert second.dedup.get("b") is None


def test_reset_dedup_bug_stores_a_retry_twice() -> None:
    replicas = Replicas()
    first = take_over(replicas, epoch=7)
    publish(replicas, first, 1, "a")
    buggy = take_over(replicas, epoch=9, config=RoleConfig(bugs=frozenset({"reset-dedup-on-takeover"})))
    effects = publish(replicas, buggy, 2, "a")
    ((_, result),) = effects.results
    assert result.serials == (2,)


def test_takeover_rewrites_the_last_adopted_entry_at_its_epoch() -> None:
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, entries(5, 1, "x", "y"))
    role = take_over(replicas, epoch=8)
    assert role.last == 2 and role.epoch_start_serial == 2
    assert role.commit == 2  # the rewritten entry is on a quorum, so everything up to it is committed
    assert replicas.ids("store-a") == [(1, 5, "x"), (2, 8, "y")]


def superseded_minority_write() -> Replicas:
    """DESIGN §3's trap. Owner e10 committed 1..3 and wrote 4, 5 to store-a only. Owner e20 fenced
    store-b and store-c, adopted 1..3, rewrote 3 and committed its own serial 4 ("new")."""
    replicas = Replicas()
    committed = entries(10, 1, "m1", "m2", "m3")
    replicas.write("store-a", committed + entries(10, 4, "old4", "old5"))
    for name in ("store-b", "store-c"):
        replicas.write(name, committed[:2] + entries(20, 3, "m3", "new"))
    replicas.down = {"store-c"}  # the next owner fences store-a and store-b
    return replicas


def test_recovery_adopts_the_most_up_to_date_log_and_keeps_superseded_entries_out() -> None:
    replicas = superseded_minority_write()
    role = take_over(replicas, epoch=30)
    assert [(e.serial, e.message.id) for e in role.tail] == [(1, "m1"), (2, "m2"), (3, "m3"), (4, "new")]
    assert [message_id for _, _, message_id in replicas.ids("store-a")] == ["m1", "m2", "m3", "new"]


def test_adopt_highest_epoch_per_serial_bug_resurrects_the_superseded_entry() -> None:
    replicas = superseded_minority_write()
    bugs = frozenset({"adopt-highest-epoch-per-serial"})
    role = take_over(replicas, epoch=30, config=RoleConfig(bugs=bugs))
    assert [e.message.id for e in role.tail] == ["m1", "m2", "m3", "new", "old5"]


def test_recover_from_one_bug_can_adopt_a_stale_log() -> None:
    replicas = Replicas()
    for name in ("store-b", "store-c"):
        replicas.write(name, entries(5, 1, "x", "y"))
    role = take_over(replicas, epoch=8, config=RoleConfig(bugs=frozenset({"recover-from-one"})))
    assert role.last == 0  # it trusted store-a alone, which has nothing: x and y are gone
    correct = take_over(Replicas(), epoch=8)
    assert correct.last == 0
    replicas_ok = Replicas()
    for name in ("store-b", "store-c"):
        replicas_ok.write(name, entries(5, 1, "x", "y"))
    assert take_over(replicas_ok, epoch=8).last == 2


def test_a_fenced_owner_steps_down_and_fails_pending_publishes_as_retryable() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    for name in ("store-a", "store-b"):
        replicas.logs[name].fence("ch", 9)
    effects = publish(replicas, role, 1, "m1")
    assert role.state is RoleState.STOPPED and role.stop_reason == "FENCED"
    ((_, result),) = effects.results
    assert not result.ok and result.reason == "CHANNEL_MOVED" and result.retryable and result.maybe_stored


def test_a_stale_owner_cannot_take_over() -> None:
    replicas = Replicas()
    for name in STORES:
        replicas.logs[name].fence("ch", 9)
    role = take_over(replicas, epoch=7)
    assert role.state is RoleState.STOPPED and role.stop_reason == "FENCED"


def test_one_replica_with_an_absurd_fence_cannot_veto_a_takeover_a_quorum_accepts() -> None:
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, entries(5, 1, "x", "y"))
    replicas.logs["store-a"].fence("ch", 1 << 40)  # a corrupted fence, or a takeover that died
    role = ChannelRole("ch", 9, RoleConfig(), 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    assert role.state is RoleState.SERVING
    assert effects.replica_faults == [("ch", "store-a", "fenced_out", f"its fence {1 << 40} is above our epoch 9")]
    effects = publish(replicas, role, 1, "z", "x")
    assert [(r.ok, r.serials, r.duplicates) for _, r in effects.results] == [(True, (3, 1), (False, True))]
    assert [message_id for _, _, message_id in replicas.ids("store-b")] == ["x", "y", "z"]
    assert [message_id for _, _, message_id in replicas.ids("store-a")] == ["x", "y"]  # nothing sent to it
    assert not any(name == "store-a" for name, request in effects.sends if isinstance(request, AppendRequest))
    replicas.down = {"store-c"}  # now a quorum needs store-a, which refuses us: fail fast, retryable
    effects = publish(replicas, role, 2, "w")
    effects2 = Effects()
    effects2.extend(role.tick(RoleConfig().append_timeout_ms + 1))
    assert [(r.ok, r.reason) for _, r in effects.results + effects2.results] == [(False, "QUORUM_UNAVAILABLE")]


def test_a_serving_owner_steps_down_only_when_a_quorum_fenced_it() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    replicas.logs["store-a"].fence("ch", 9)
    effects = publish(replicas, role, 1, "m1")
    assert role.state is RoleState.SERVING and [r.ok for _, r in effects.results] == [True]
    assert [(replica, kind) for _, replica, kind, _ in effects.replica_faults] == [("store-a", "fenced_out")]
    replicas.logs["store-b"].fence("ch", 9)  # a newer owner fenced a quorum: we are stale
    effects = publish(replicas, role, 2, "m2")
    assert role.state is RoleState.STOPPED and role.stop_reason == "FENCED"
    assert [(r.ok, r.reason) for _, r in effects.results] == [(False, "CHANNEL_MOVED")]


def test_failed_takeovers_back_off_and_a_served_one_resets_the_backoff() -> None:
    config = NodeConfig(takeover_backoff_ms_min=100, takeover_backoff_ms_max=400)
    node = ChannelNode("n1", config)
    node.on_registered(3)
    node.on_lease(1_000_000)
    node.on_ring(Ring(3, ("n1",)))
    replicas = Replicas()
    for name in ("store-a", "store-b"):
        replicas.logs[name].fence("ch", make_epoch(50, 0))  # a quorum is fenced above ring 3: stale
    attempts, now_ms = 0, 0
    while now_ms < 3_000:
        effects = Effects()
        effects.extend(node.publish("ch", now_ms, (Message("m"),), now_ms))
        if effects.sends:  # a takeover began
            attempts += 1
            run_node(replicas, node, effects, now_ms)
            assert "ch" not in node.roles  # fenced by a quorum: dropped at once
        else:
            assert [(r.reason, r.retryable) for _, r in effects.results] == [("TAKEOVER_BACKOFF", True)]
        now_ms += 10
    # 100, 200, 400, 400, ... ms between attempts: 3 s holds about 9 attempts, not 300.
    assert 7 <= attempts <= 10, attempts
    assert node._attempts["ch"].made == attempts
    for name in ("store-a", "store-b"):
        replicas.storages[name] = MemoryLogStorage()
        replicas.logs[name] = ReplicaLog(replicas.storages[name])
    now_ms += 400
    effects = run_node(replicas, node, published_via(node, "ch", 99, now_ms=now_ms), now_ms)
    assert node.roles["ch"].state is RoleState.SERVING and [r.ok for _, r in effects.results] == [True]
    assert node._attempts["ch"].failures == 0


def test_a_prepared_takeover_that_failed_is_prepared_again_after_its_wait() -> None:
    node = ChannelNode("n1", NodeConfig(takeover_backoff_ms_min=100))
    node.on_registered(3)
    node.on_lease(1_000_000)
    node.on_ring(Ring(3, ("n1",)))
    replicas = Replicas()
    replicas.down = set(STORES)  # no fence is answered: the takeover times out
    queued, effects = node.prepare(["ch"], 0)
    assert queued == 1
    run_node(replicas, node, effects)
    timeout_ms = RoleConfig().takeover_timeout_ms + 1
    node.tick(timeout_ms)
    assert "ch" not in node.roles  # failed, and nobody asks for the channel
    replicas.down = set()
    effects = Effects()
    effects.extend(node.tick(timeout_ms + 50))
    assert "ch" not in node.roles  # still waiting
    effects.extend(node.tick(timeout_ms + 101))
    run_node(replicas, node, effects, timeout_ms + 101)
    assert node.roles["ch"].state is RoleState.SERVING


def test_skip_fence_bug_leaves_replicas_unfenced() -> None:
    replicas = Replicas()
    take_over(replicas, epoch=7, config=RoleConfig(bugs=frozenset({"skip-fence"})))
    assert all(storage.fence_of("ch") == 0 for storage in replicas.storages.values())
    take_over(replicas, epoch=7)
    assert all(storage.fence_of("ch") == 7 for storage in replicas.storages.values())


def test_bounded_recovery_read_and_backfill_of_an_empty_replica() -> None:
    config = RoleConfig(recovery_read_entries_max=5, tail_entries_max=4, read_entries_max=3, append_entries_max=2)
    replicas = Replicas()
    replicas.down = {"store-c"}
    first = take_over(replicas, epoch=7, config=config)
    for index in range(20):
        publish(replicas, first, index, f"m{index}")
    replicas.down = set()
    second = take_over(replicas, epoch=9, config=config)
    assert second.tail_base == 15 and second.last == 20  # read 5 entries and the one before them
    for now_ms in range(0, 40_000, 2_000):
        effects = Effects()
        effects.extend(second.tick(now_ms))
        replicas.run(second, effects, now_ms)
    expected = [message_id for _, _, message_id in replicas.ids("store-a")]
    assert [message_id for _, _, message_id in replicas.ids("store-c")] == expected
    assert len(expected) == 20


def test_history_below_the_tail_is_read_from_a_matching_replica() -> None:
    config = RoleConfig(tail_entries_max=4, read_entries_max=3)
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config)
    for index in range(12):
        publish(replicas, role, index, f"m{index}")
    assert role.tail_base > 0
    effects = Effects()
    effects.extend(role.read_history(99, 0, 100, 0))
    replicas.run(role, effects)
    ((token, result),) = effects.histories
    assert token == 99 and [e.serial for e in result.entries] == [1, 2, 3]  # one page: read_entries_max


def test_subscribers_get_only_committed_entries_in_order() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    effects = Effects()
    effects.extend(role.subscribe(5, 0, 0))
    replicas.down = {"store-b", "store-c"}
    effects = publish(replicas, role, 1, "m1", "m2")
    assert effects.deliveries == []
    replicas.down = set()
    effects = Effects()
    effects.extend(role.tick(2_000))
    replicas.run(role, effects, 2_000)
    delivered = [e.serial for _, delivery in effects.deliveries for e in delivery.entries]
    assert delivered == [1, 2]


def test_deliver_uncommitted_bug_delivers_before_quorum() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=RoleConfig(bugs=frozenset({"deliver-uncommitted"})))
    role.subscribe(5, 0, 0)
    replicas.down = {"store-b", "store-c"}
    effects = publish(replicas, role, 1, "m1")
    assert [e.serial for _, delivery in effects.deliveries for e in delivery.entries] == [1]


def test_a_subscriber_resuming_mid_log_gets_exactly_the_rest() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    for index in range(5):
        publish(replicas, role, index, f"m{index}")
    effects = Effects()
    effects.extend(role.subscribe(5, 3, 0))
    assert [e.serial for _, delivery in effects.deliveries for e in delivery.entries] == [4, 5]


def test_a_cursor_beyond_the_end_is_refused_for_subscribers_and_history_but_the_end_itself_waits() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    for index in range(3):
        publish(replicas, role, index, f"m{index}")
    beyond = role.subscribe(10, 5, 0)  # after serial 5 on a channel of 3: serials 4 and 5 would be skipped
    assert [(token, delivery.end_reason) for token, delivery in beyond.deliveries] == [(10, "CURSOR_BEYOND_END")]
    assert 10 not in role.subscribers
    at_end = role.subscribe(11, 3, 0)  # after the last serial: waits for the next one
    assert at_end.deliveries == [] and 11 in role.subscribers
    effects = publish(replicas, role, 12, "m3")
    assert [(token, [e.serial for e in d.entries]) for token, d in effects.deliveries] == [(11, [4])]
    history = role.read_history(13, 9, 10, 0)
    assert [(token, result.reason) for token, result in history.histories] == [(13, "CURSOR_BEYOND_END")]
    at_last = role.read_history(14, 4, 10, 0)
    assert [(token, result.reason, result.entries) for token, result in at_last.histories] == [(14, "", ())]


def test_stop_ends_subscriptions_and_fails_queued_publishes() -> None:
    role = ChannelRole("ch", 7, RoleConfig(), 0)
    effects = Effects()
    effects.extend(role.start())
    effects.extend(role.subscribe(5, 0, 0))
    effects.extend(role.publish(1, (Message("m"),), 0))
    effects.extend(role.stop("CHANNEL_MOVED"))
    assert [(token, result.maybe_stored) for token, result in effects.results] == [(1, False)]
    assert [(token, delivery.end_reason) for token, delivery in effects.deliveries] == [(5, "CHANNEL_MOVED")]


def test_takeover_times_out_without_a_quorum() -> None:
    replicas = Replicas()
    replicas.down = {"store-b", "store-c"}
    role = take_over(replicas, epoch=7)
    effects = Effects()
    effects.extend(role.tick(RoleConfig().takeover_timeout_ms + 1))
    assert role.state is RoleState.STOPPED and role.stop_reason == "TAKEOVER_TIMEOUT"


def test_a_long_recovery_that_keeps_progressing_is_not_timed_out() -> None:
    """The takeover timeout counts time without progress: a recovery whose reads each take 2 s
    (many takeovers sharing a store) finishes, though it takes far longer than the timeout."""
    config = RoleConfig(takeover_timeout_ms=3_000)
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, entries(5, 1, *(f"m{index}" for index in range(20))))
    role = ChannelRole("ch", 7, config, 0)
    effects = Effects()
    effects.extend(role.start())
    now_ms = 0
    for name, request, reply in replicas.replies(effects):
        if isinstance(reply, FenceReply):
            effects.extend(role.on_fence_reply(name, reply, now_ms))
            continue
        now_ms += 2_000  # each page of the recovery arrives 2 s after the one before
        effects.extend(role.tick(now_ms))
        assert role.state is not RoleState.STOPPED, role.stop_reason
        if isinstance(reply, ReadReply):
            assert isinstance(request, ReadRequest)
            page = replace(reply, entries=reply.entries[:3])  # a store's answer is bounded in bytes
            effects.extend(role.on_read_reply(name, request, page, now_ms))
        else:
            assert isinstance(request, AppendRequest) and isinstance(reply, AppendReply)
            effects.extend(role.on_append_reply(name, request, reply, now_ms))
    assert now_ms > 3 * config.takeover_timeout_ms
    assert role.state is RoleState.SERVING and role.last == 20
    stalled = ChannelRole("ch", 9, config, now_ms)
    stalled.start()  # no replica ever answers
    stalled.tick(now_ms + config.takeover_timeout_ms + 1)
    assert stalled.stop_reason == "TAKEOVER_TIMEOUT"


def test_batch_over_the_pending_bound_is_refused_and_changes_nothing() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=RoleConfig(pending_entries_max=2))
    replicas.down = set(STORES)
    effects = publish(replicas, role, 1, "a", "b", "c")
    ((_, result),) = effects.results
    assert not result.ok and result.reason == "OWNER_OVERLOADED" and not result.maybe_stored
    assert role.last == 0
