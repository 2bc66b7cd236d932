"""The channel role and node cores, wired straight to three in-memory replicas (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from services.core.entries import Entry, Message, Position
from services.core.node import EPOCH_ATTEMPTS_PER_VERSION, ChannelNode, NodeConfig, NodeStatus, make_epoch
from services.core.replica_log import AppendReply, FenceReply, MemoryLogStorage, ReadReply, ReplicaLog, Retention
from services.core.ring import Ring
from services.core.role import (
    AppendRequest,
    ChannelRole,
    Effects,
    FenceRequest,
    ReadRequest,
    RoleConfig,
    RoleState,
    StoreRequest,
)

STORES = ("store-a", "store-b", "store-c")


class Replicas:
    """Three replicas answering a role's requests at once, except those marked down."""

    def __init__(self) -> None:
        self.storages = {name: MemoryLogStorage() for name in STORES}
        self.logs = {name: ReplicaLog(storage) for name, storage in self.storages.items()}
        self.down: set[str] = set()

    def run(self, role: ChannelRole, effects: Effects, now_ms: int = 0) -> Effects:
        """Deliver every request the role sends (and the ones its replies cause) until quiet."""
        for name, request, reply in self.replies(effects):
            if isinstance(request, FenceRequest):
                assert isinstance(reply, FenceReply)
                effects.extend(role.on_fence_reply(name, reply, now_ms))
            elif isinstance(request, AppendRequest):
                assert isinstance(reply, AppendReply)
                effects.extend(role.on_append_reply(name, request, reply, now_ms))
            else:
                assert isinstance(reply, ReadReply)
                effects.extend(role.on_read_reply(name, request, reply, now_ms))
        return effects

    def replies(self, effects: Effects) -> Iterator[tuple[str, StoreRequest, FenceReply | AppendReply | ReadReply]]:
        """Each request sent (also those sent while earlier replies are handled) with its answer."""
        index = 0
        while index < len(effects.sends):
            name, request = effects.sends[index]
            index += 1
            if name in self.down:
                continue
            log = self.logs[name]
            if isinstance(request, FenceRequest):
                yield name, request, log.fence(request.channel, request.epoch)
            elif isinstance(request, AppendRequest):
                yield name, request, request.apply_to(log)
            else:
                assert isinstance(request, ReadRequest)
                read = log.read_ids if request.ids_only else log.read
                reply = read(request.channel, request.after_serial, request.limit)
                if reply.damaged:  # what the store process does with damage a read found
                    log.mark_damaged(request.channel, reply.damaged)
                yield name, request, reply

    def ids(self, name: str, channel: str = "ch") -> list[tuple[int, int, str]]:
        return [(e.serial, e.epoch, e.message.id) for e in self.storages[name].read(channel, 0, 10_000)]

    def trim(self, name: str, entries_max: int, channel: str = "ch") -> int:
        """Let replica `name` drop what it knows is committed beyond the newest `entries_max`."""
        retention = Retention(age_ms=10**15, entries_max=entries_max, keep_recent_ms=0, scan_max=10_000)
        return self.logs[name].trim(channel, 0, retention)

    def write(self, name: str, entries: list[Entry], channel: str = "ch") -> None:
        storage = self.storages[name]
        storage.set_fence(channel, max(storage.fence_of(channel), max(e.epoch for e in entries)))
        storage.extend(channel, entries)


def take_over(replicas: Replicas, epoch: int, config: RoleConfig | None = None, now_ms: int = 0) -> ChannelRole:
    role = ChannelRole("ch", epoch, config or RoleConfig(), now_ms)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects, now_ms)
    return role


def publish(replicas: Replicas, role: ChannelRole, token: int, *ids: str, now_ms: int = 0) -> Effects:
    effects = Effects()
    effects.extend(role.publish(token, tuple(Message(message_id) for message_id in ids), now_ms))
    return replicas.run(role, effects, now_ms)


def entries(epoch: int, first: int, *ids: str) -> list[Entry]:
    return [Entry.make(first + index, epoch, Message(message_id)) for index, message_id in enumerate(ids)]


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
    effects = run_node(replicas, node, _published(node, "ch", 99, now_ms=now_ms), now_ms)
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


# --------------------------------------------------------------------------------- damage (rule 8)


def _settle(replicas: Replicas, role: ChannelRole, now_ms: int = 0, rounds: int = 5) -> None:
    """Let a few ticks pass (backfills, repairs), each 1 s apart."""
    for step in range(rounds):
        effects = Effects()
        effects.extend(role.tick(now_ms + step * 1_000))
        replicas.run(role, effects, now_ms + step * 1_000)


def _published_role(count: int, config: RoleConfig | None = None) -> tuple[Replicas, ChannelRole]:
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config or RoleConfig(tail_entries_max=4, read_entries_max=50))
    for index in range(count):
        publish(replicas, role, index, f"m{index + 1}")
    return replicas, role


def test_history_never_skips_a_hole_in_one_replica_and_the_replica_is_rewritten() -> None:
    replicas, role = _published_role(20)
    assert role.tail_base > 3
    replicas.storages["store-a"].damage("ch", 3, "missing")  # store-a: the replica reads go to first
    served: list[int] = []
    while len(served) < 20:
        effects = Effects()
        effects.extend(role.read_history(99, len(served), 100, 0))
        replicas.run(role, effects)
        ((_, result),) = effects.histories
        served += [entry.serial for entry in result.entries]
    assert served == list(range(1, 21))
    faults = [(replica, kind) for _, replica, kind, _ in effects.replica_faults]
    assert faults in ([("store-a", "damaged")], [])  # reported once, on the read that found it
    assert role.replicas["store-a"].damaged == 3
    _settle(replicas, role)
    assert replicas.ids("store-a") == replicas.ids("store-b")  # filled in place from a good replica
    assert role.replicas["store-a"].damaged == 0 and role.replicas["store-a"].match == 20


def test_a_subscriber_from_the_start_gets_every_serial_across_a_hole() -> None:
    replicas, role = _published_role(20)
    replicas.storages["store-a"].damage("ch", 5, "corrupt")
    received: list[int] = []
    faults: list[tuple[str, str]] = []
    effects = Effects()
    effects.extend(role.subscribe(7, 0, 0))
    for step in range(10):
        replicas.run(role, effects, step * 1_000)
        received += [entry.serial for _, delivery in effects.deliveries for entry in delivery.entries]
        faults += [(replica, kind) for _, replica, kind, _ in effects.replica_faults]
        effects = Effects()
        effects.extend(role.tick(step * 1_000))
    assert received == list(range(1, 21))
    assert faults == [("store-a", "damaged")]
    assert replicas.ids("store-a") == replicas.ids("store-b") and role.replicas["store-a"].damaged == 0
    assert replicas.storages["store-a"].read("ch", 4, 1)[0].intact()


def test_the_owner_checks_every_read_itself_even_when_the_replica_does_not() -> None:
    replicas, role = _published_role(20)
    effects = Effects()
    effects.extend(role.read_history(99, 0, 10, 0))
    ((replica, request),) = [(name, r) for name, r in effects.sends if isinstance(r, ReadRequest)]
    held = replicas.storages[replica].read("ch", 0, 10)
    lying = ReadReply((held[0], held[1], held[3], held[4]), Position(20, 7))  # 3 is missing, and not said
    effects.extend(role.on_read_reply(replica, request, lying, 0))
    ((_, result),) = effects.histories
    assert [entry.serial for entry in result.entries] == [1, 2]
    assert [(name, kind) for _, name, kind, _ in effects.replica_faults] == [(replica, "damaged")]
    # An intact entry, but not the one we hold at that serial (the tail's base, whose epoch we know).
    base = role.tail_base
    effects = Effects()
    effects.extend(role.read_history(98, base - 2, 2, 0))
    ((other, request),) = [(name, r) for name, r in effects.sends if isinstance(r, ReadRequest)]
    assert other != replica
    before, at_base = replicas.storages[other].read("ch", base - 2, 2)
    stale = Entry.make(base, role.epoch - 1, at_base.message)
    effects.extend(role.on_read_reply(other, request, ReadReply((before, stale), Position(20, 7)), 0))
    ((_, result),) = effects.histories
    assert [entry.serial for entry in result.entries] == [base - 1]
    assert [(name, kind) for _, name, kind, _ in effects.replica_faults] == [(other, "damaged")]


def _adopted_first(log: list[Entry], config: RoleConfig) -> str:
    """The replica a takeover reads from when every replica holds `log` (found by trying it)."""
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, log)
    role = ChannelRole("ch", 9, config, 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    (adopted,) = {name for name, request in effects.sends if isinstance(request, ReadRequest) and not request.ids_only}
    return adopted


@pytest.mark.parametrize("serial", [10, 30])  # in the whole-entry read; in the ids-only read
def test_a_takeover_never_adopts_a_log_it_cannot_read_whole(serial: int) -> None:
    replicas = Replicas()
    old = entries(3, 1, *(f"m{n}" for n in range(1, 51)))
    for name in STORES:
        replicas.write(name, old)
    config = RoleConfig(recovery_full_entries_max=15, recovery_ids_per_read=7)
    damaged = _adopted_first(old, config)
    replicas.storages[damaged].damage("ch", 50 - serial, "missing")
    role = ChannelRole("ch", 9, config, 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    assert role.state is RoleState.SERVING and role.last == 50
    assert [(name, kind) for _, name, kind, _ in effects.replica_faults] == [(damaged, "damaged")]
    effects = publish(replicas, role, 1, f"m{50 - serial}", "new")  # the dedup window is whole
    assert [(r.serials, r.duplicates) for _, r in effects.results] == [((50 - serial, 51), (True, False))]
    _settle(replicas, role)
    assert replicas.ids(damaged) == replicas.ids(next(name for name in STORES if name != damaged))


def test_damage_a_replica_reports_itself_is_avoided_in_a_takeover_and_repaired() -> None:
    replicas = Replicas()
    for name in STORES:
        replicas.write(name, entries(3, 1, "a", "b", "c", "d"))
    replicas.storages["store-b"].damage("ch", 2, "corrupt")
    assert replicas.logs["store-b"].mark_damaged("ch", 2) == "corrupt"  # its scrub found it
    role = ChannelRole("ch", 9, RoleConfig(), 0)
    effects = Effects()
    effects.extend(role.start())
    replicas.run(role, effects)
    assert role.state is RoleState.SERVING and role.last == 4
    assert ("store-b", "damaged") in [(name, kind) for _, name, kind, _ in effects.replica_faults]
    recovered_from = {name for name, r in effects.sends if isinstance(r, ReadRequest) and r.channel == "ch"}
    assert "store-b" not in recovered_from or role.replicas["store-b"].unreadable
    # Rewritten from its first bad serial by the takeover's own appends: filled, and whole again.
    assert replicas.ids("store-b") == replicas.ids("store-a") == [(1, 3, "a"), (2, 3, "b"), (3, 3, "c"), (4, 9, "d")]
    assert replicas.storages["store-b"].damaged("ch") == 0 and role.replicas["store-b"].damaged == 0


# --------------------------------------------------------------------------------- retention


def _tell_commit(replicas: Replicas, role: ChannelRole, now_ms: int) -> None:
    """Let time pass until the role's commit notices have gone out and been answered."""
    effects = role.notify_commit(now_ms + role.config.commit_notice_ms)
    assert effects.sends
    replicas.run(role, effects, now_ms + role.config.commit_notice_ms)


def test_appends_carry_the_commit_point_and_an_idle_channel_sends_it_once_more() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    for index in range(3):
        publish(replicas, role, index, f"m{index}", now_ms=index)
    assert role.commit == 3
    assert [replicas.storages[name].committed("ch") for name in STORES] == [2, 2, 2]  # told by the next append
    assert role.quiet  # nothing waits on time: the node's sweep sends the notice
    assert not role.notify_commit(role.config.commit_notice_ms - 10).sends  # the last append is too recent
    _tell_commit(replicas, role, 2)
    assert [replicas.storages[name].committed("ch") for name in STORES] == [3, 3, 3]
    assert not role.notify_commit(10 * role.config.commit_notice_ms).sends  # told: nothing owed


def test_a_reader_from_before_the_retained_range_gets_an_explicit_gap() -> None:
    config = RoleConfig(tail_entries_max=4)
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config)
    for index in range(20):
        publish(replicas, role, index, f"m{index}")
    _tell_commit(replicas, role, 0)
    assert [replicas.trim(name, 6) for name in STORES] == [14, 14, 14]
    effects = Effects()
    effects.extend(role.subscribe(5, 3, 0))
    effects.extend(role.read_history(6, 3, 4, 0))
    replicas.run(role, effects)
    (delivery,) = [delivery for token, delivery in effects.deliveries if token == 5 and delivery.gap_next_serial]
    assert delivery.gap_next_serial == 15 and delivery.entries[0].serial == 15
    delivered = [e.serial for token, d in effects.deliveries if token == 5 for e in d.entries]
    assert delivered == list(range(15, 21))  # after the gap, every retained entry once, in order
    ((token, history),) = effects.histories
    assert token == 6 and history.gap_next_serial == 15 and [e.serial for e in history.entries] == [15, 16, 17, 18]
    effects = Effects()
    effects.extend(role.subscribe(8, 16, 0))  # from inside the retained range: no gap
    replicas.run(role, effects)
    assert [(d.gap_next_serial, [e.serial for e in d.entries]) for _, d in effects.deliveries] == [
        (0, [17, 18, 19, 20])
    ]


def test_what_a_replica_trimmed_is_not_served_from_memory_either() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)  # its in-memory tail keeps all 20 entries
    for index in range(20):
        publish(replicas, role, index, f"m{index}")
    _tell_commit(replicas, role, 0)
    replicas.trim("store-a", 6)
    effects = Effects()
    effects.extend(role.subscribe(5, 0, 0))
    assert effects.deliveries[0][1].entries[0].serial == 1  # nobody said anything was trimmed yet
    publish(replicas, role, 99, "m20")  # store-a's reply shows its base
    effects = Effects()
    effects.extend(role.subscribe(6, 0, 0))
    effects.extend(role.read_history(7, 2, 3, 0))
    assert [(d.gap_next_serial, [e.serial for e in d.entries][:1]) for _, d in effects.deliveries] == [
        (15, []),
        (0, [15]),
    ]
    ((_, history),) = effects.histories
    assert history.gap_next_serial == 15 and [e.serial for e in history.entries] == [15, 16, 17]


def test_a_replica_that_refuses_an_append_is_not_sent_it_again_in_a_loop() -> None:
    replicas = Replicas()
    role = take_over(replicas, epoch=7)
    publish(replicas, role, 1, "m1", "m2")
    storage = replicas.storages["store-c"]
    storage.drop_through("ch", Position(2, 9))  # a stamp no owner at epoch 7 can hold: INVALID "trimmed"
    role.replicas["store-c"].match, role.replicas["store-c"].next = 1, 2  # as if it had to catch up
    effects = publish(replicas, role, 2, "m3", now_ms=10)
    refused = [request for name, request in effects.sends if name == "store-c"]
    assert len(refused) == 1 and any("trimmed" in event for event in effects.events)
    effects = Effects()
    effects.extend(role.tick(10 + role.config.append_timeout_ms - 1))
    assert not [request for name, request in effects.sends if name == "store-c"]  # still backing off
    effects = Effects()
    effects.extend(role.tick(10 + role.config.append_timeout_ms))
    assert [name for name, _ in effects.sends] == ["store-c"]  # and then tried again, once


@pytest.mark.parametrize("kept", [3, 0])
def test_a_takeover_of_a_trimmed_log_starts_at_its_base(kept: int) -> None:
    replicas = Replicas()
    first = take_over(replicas, epoch=7)
    for index in range(10):
        publish(replicas, first, index, f"m{index}")
    _tell_commit(replicas, first, 0)
    for name in STORES:
        replicas.trim(name, kept)
    config = RoleConfig(recovery_full_entries_max=5, recovery_read_entries_max=8)
    second = take_over(replicas, epoch=9, config=config)
    assert second.state is RoleState.SERVING
    assert (second.tail_base, second.last, second.commit) == (10 - kept, 10, 10)
    assert len(second.dedup) == kept  # what was trimmed is older than any dedup window
    effects = publish(replicas, second, 1, "m9", "new")  # m9 is serial 10: retained only when kept
    expected = ((10, 11), (True, False)) if kept else ((11, 12), (False, False))
    assert [(r.serials, r.duplicates) for _, r in effects.results] == [expected]
    assert [replicas.storages[name].last("ch").serial for name in STORES] == [expected[0][-1]] * 3


def test_a_replica_behind_every_other_replicas_base_is_reset_and_caught_up() -> None:
    config = RoleConfig(tail_entries_max=4, read_entries_max=3)
    replicas = Replicas()
    role = take_over(replicas, epoch=7, config=config)
    replicas.down = {"store-c"}
    for index in range(12):
        publish(replicas, role, index, f"m{index}")
    _tell_commit(replicas, role, 0)
    replicas.trim("store-a", 2)
    replicas.trim("store-b", 2)
    replicas.down = set()
    for now_ms in range(2_000, 20_000, 2_000):
        effects = Effects()
        effects.extend(role.tick(now_ms))
        replicas.run(role, effects, now_ms)
    assert replicas.storages["store-c"].base("ch") == replicas.storages["store-a"].base("ch")
    assert replicas.ids("store-c") == replicas.ids("store-a")
    assert role.replicas["store-c"].match == 12
    effects = publish(replicas, role, 99, "after", now_ms=20_000)
    assert [r.serials for _, r in effects.results] == [(13,)]
    assert replicas.ids("store-c")[-1] == (13, 7, "after")


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


# ----------------------------------------------------------------------------- the node


def node_with(ring_members: tuple[str, ...], version: int = 3) -> ChannelNode:
    node = ChannelNode("n1", NodeConfig())
    node.on_registered(version)
    node.on_lease(1_000)
    node.on_ring(Ring(version, ring_members))
    return node


def run_node(replicas: Replicas, node: ChannelNode, effects: Effects, now_ms: int = 0) -> Effects:
    """Like `Replicas.run`, through the node."""
    for name, request, reply in replicas.replies(effects):
        if isinstance(request, FenceRequest):
            assert isinstance(reply, FenceReply)
            effects.extend(node.on_fence_reply(name, request, reply, now_ms))
        elif isinstance(request, AppendRequest):
            assert isinstance(reply, AppendReply)
            effects.extend(node.on_append_reply(name, request, reply, now_ms))
        else:
            assert isinstance(reply, ReadReply) and isinstance(request, ReadRequest)
            effects.extend(node.on_read_reply(name, request, reply, now_ms))
    return effects


def test_node_ticks_only_roles_with_work_waiting_on_time() -> None:
    replicas = Replicas()
    node = node_with(("n1",))
    node.on_lease(1_000_000)
    channels = [f"quiet-{index}" for index in range(500)]
    for token, channel in enumerate(channels):
        run_node(replicas, node, _published(node, channel, token))
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
    effects = run_node(replicas, node, _published(node, "quiet-7", 1_000, now_ms=now_ms), now_ms=now_ms)
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
        run_node(replicas, node, _published(node, f"many-{token}", token))
    sweep_ms = max(RoleConfig().commit_notice_ms, NodeConfig().idle_sweep_ms)
    notified = []
    for sweep in range(1, 5):
        effects = Effects()
        effects.extend(node.tick(sweep * sweep_ms + 10))
        notified.append(len({request.channel for _, request in effects.sends}))
        run_node(replicas, node, effects, now_ms=sweep * sweep_ms + 10)
    assert notified == [200, 200, 100, 0]


def test_node_sweeps_every_role_for_idleness_at_its_own_pace() -> None:
    replicas = Replicas()
    node = ChannelNode("n1", NodeConfig(role_idle_ms=5_000, idle_sweep_ms=1_000))
    node.on_registered(3)
    node.on_lease(1_000_000)
    node.on_ring(Ring(3, ("n1",)))
    for token, channel in enumerate(("idle-a", "idle-b")):
        run_node(replicas, node, _published(node, channel, token))
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


def _published(node: ChannelNode, channel: str, token: int, now_ms: int = 0) -> Effects:
    effects = Effects()
    effects.extend(node.publish(channel, token, (Message(f"{channel}-{token}"),), now_ms))
    return effects


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
        run_node(replicas, node, _published(node, channel, 1))
        assert node.roles[channel].state is RoleState.SERVING
        replicas.down = set(STORES)  # every link to the stores is cut (a blackhole: no answer at all)
        now_ms = 100
        run_node(replicas, node, _published(node, channel, 2, now_ms=now_ms), now_ms)
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
