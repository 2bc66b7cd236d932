"""The fault matrix: one named test per fault, each on a fresh cluster of real processes.

Every test runs the history-recording workload (`ringcast_tools/chaos/workload.py`: publishers that retry
with the same ids through the other gateway, subscribers that resume from their last serial) while it
breaks the cluster from outside, then asks the simulator's checker (`services/core/checker.py`) for
violations: 0 lost, 0 duplicated, 0 gaps, 0 reorders, no phantom deliveries, every subscriber caught
up, and acks in real-time serial order. Each test also demands progress after the fault healed
(a test during which nothing was published proves nothing), and most demand progress *during* the
fault where the guarantees promise it (G5: the channel is re-placed and serves again).
"""

from __future__ import annotations

import datetime
import signal
import time

import pytest

from ringcast_tools.chaos.workload import WorkloadConfig, clock_ms
from ringcast_tools.cluster.launcher import Launcher
from ringcast_tools.cluster.topology import ENGINES, proxy_name
from services.core.checker import Outcome
from services.core.ring import Ring
from tests.chaos.conftest import (
    BUSY,
    Background,
    ClusterFactory,
    LoadStarter,
    LogWatch,
    acked_between,
    assert_history_clean,
    owner_of,
    pause,
    resume,
    terminate,
    wait_until,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

LOAD = WorkloadConfig(duration_s=120.0, op_deadline_s=15.0, attempt_timeout_s=4.0, catch_up_s=30.0)
"""The load phase runs until the test stops it (120 s is only its upper bound)."""

WARM_UP_ACKS = 30
"""Acks on the busy channel before any fault: the channel is owned, replicated and followed."""

HEALED_ACKS = 30
"""Acks on the busy channel after the fault healed: the platform really came back."""

LEASE_TTL_S = 2.0
"""The channel nodes' etcd lease (local_topology's default)."""

RECOVERY_DELAY_MS = 300
"""One-way delay on the links of the node killed during its recovery (a round trip gains twice this)."""

PAUSE_S = 3 * LEASE_TTL_S
"""How long a paused owner sleeps: its lease expires, and the gateways' calls to it (which hang until
their deadline, `LOAD.attempt_timeout_s`) have given up and gone to the new owner well before it wakes."""


def report(name: str, **numbers: object) -> None:
    print(f"[{name}] " + " ".join(f"{key}={value}" for key, value in numbers.items()))


def failover_ms(background: Background, since_ms: int, channel: str = BUSY) -> int | None:
    """From `since_ms` to the ack of the first operation on `channel` invoked after it."""
    acked = [
        op.complete_ms
        for op in list(background.workload.history.publishes)
        if op.channel == channel and op.outcome is Outcome.OK and op.invoke_ms >= since_ms
    ]
    return min(acked) - since_ms if acked else None


def test_owner_sigkill_mid_publish(cluster: Launcher, start_load: LoadStarter) -> None:
    """G5: SIGKILL the owner of a busy channel; the ring moves it, the new owner resumes where the
    old one stopped; the old owner comes back later and the channel moves back to it."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    owner = owner_of(cluster, BUSY)
    killed_ms = clock_ms()
    cluster.kill(owner, signal.SIGKILL)
    wait_until(lambda: owner_of(cluster, BUSY) != owner, "the ring to move the channel away from its dead owner")
    during = background.wait_for_acks(10, since_ms=killed_ms, channel=BUSY, timeout_s=20)
    gap = failover_ms(background, killed_ms)
    cluster.restart(owner)
    restarted_ms = clock_ms()
    wait_until(lambda: owner_of(cluster, BUSY) == owner, "the restarted node to own the channel again")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    report(
        "owner_sigkill",
        owner=owner,
        acks_while_down=during,
        failover_ms=gap,
        longest_ack_gap_ms=background.workload.longest_ack_gap_ms(killed_ms, restarted_ms, BUSY),
        summary=background.workload.summary(),
    )


def test_owner_paused_past_its_lease_then_resumed(cluster: Launcher, start_load: LoadStarter) -> None:
    """A zombie owner: SIGSTOP it for three times its lease, SIGCONT. Meanwhile the channel is
    re-placed and the new owner acks publishes at a newer epoch; when the zombie wakes it still
    believes it owns the channel and has appends and acks queued, so its writes must be fenced and
    nothing it acknowledges may be wrong."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    owner = owner_of(cluster, BUSY)
    paused_ms = clock_ms()
    pause(cluster, owner)
    try:
        wait_until(lambda: owner_of(cluster, BUSY) != owner, "the ring to drop the paused owner")
        # The zombie must have a competitor: the new owner acks while the old one sleeps.
        during = background.wait_for_acks(10, since_ms=paused_ms, channel=BUSY, timeout_s=20)
        time.sleep(max(0.0, PAUSE_S - (clock_ms() - paused_ms) / 1000))
        during = background.workload.acks_since(paused_ms, BUSY)
    finally:
        resume(cluster, owner)
    resumed_ms = clock_ms()
    background.wait_for_acks(HEALED_ACKS, since_ms=resumed_ms, channel=BUSY)
    wait_until(lambda: owner_of(cluster, BUSY) == owner, "the woken node to rejoin and own the channel again")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    report(
        "owner_paused",
        owner=owner,
        paused_s=round((resumed_ms - paused_ms) / 1000, 1),
        acks_during_pause=during,
        failover_ms=failover_ms(background, paused_ms),
        summary=background.workload.summary(),
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_one_zone_store_down_publishes_continue(
    make_cluster: ClusterFactory, start_load: LoadStarter, engine: str
) -> None:
    """G1 with one zone gone: two stores are a quorum, so publishes go on being acked."""
    cluster = make_cluster(engine=engine)
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    killed_ms = clock_ms()
    kill_zone(cluster, "a")
    background.wait_for_acks(HEALED_ACKS, since_ms=killed_ms, channel=BUSY, timeout_s=20)
    time.sleep(2.0)  # keep it down a while under load, so it comes back far behind
    during = background.workload.acks_since(killed_ms)
    restart_zone(cluster, "a")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    report(f"one_store_down[{engine}]", acks_while_down=during, summary=background.workload.summary())


@pytest.mark.parametrize("engine", ENGINES)
def test_two_zone_stores_down_fail_fast_then_heal(
    make_cluster: ClusterFactory, start_load: LoadStarter, engine: str
) -> None:
    """Two zones gone: no quorum, so no publish may be acked (G1) — they must fail with a retryable
    status, not hang past their deadline — and after both stores return nothing acked before is lost."""
    cluster = make_cluster(engine=engine)
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    kill_zone(cluster, "a")
    kill_zone(cluster, "b")
    down_ms = clock_ms()
    time.sleep(8.0)
    healing_ms = clock_ms()
    restart_zone(cluster, "a")
    restart_zone(cluster, "b")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY, timeout_s=30)
    history = background.finish()
    workload = background.workload
    assert_history_clean(background, history)
    # No ack without a quorum: an operation begun after both stores died cannot succeed before one returns.
    impossible = acked_between(history, down_ms, healing_ms)
    assert impossible == [], f"acked without a store quorum: {impossible[:5]}"
    during = [a for a in workload.attempts if down_ms <= a.start_ms and a.end_ms < healing_ms]
    assert during, "no publish was attempted while two stores were down"
    codes = {a.code for a in during}
    assert codes <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
    slowest_ms = max(a.end_ms - a.start_ms for a in during)
    assert slowest_ms <= LOAD.attempt_timeout_s * 1000 + 2_000, f"an attempt hung for {slowest_ms} ms"
    unavailable = sum(1 for a in during if a.code == "UNAVAILABLE")
    report(
        f"two_stores_down[{engine}]",
        attempts_while_down=len(during),
        unavailable=unavailable,
        deadline_exceeded=len(during) - unavailable,
        slowest_attempt_ms=slowest_ms,
        summary=workload.summary(),
    )
    # G5 asks for more than "not past the deadline": a retryable answer *fast*, so the client can go
    # elsewhere or give up early. Safety is checked above; this availability gap is reported, not hidden.
    slow = [a for a in during if a.code != "UNAVAILABLE" or a.end_ms - a.start_ms > LOAD.attempt_timeout_s * 500]
    if slow:
        pytest.xfail(
            f"no fail-fast: {len(slow)} of {len(during)} publishes during the outage waited out their "
            f"{LOAD.attempt_timeout_s:.0f} s deadline ({sorted({a.code for a in slow})}), no early UNAVAILABLE"
        )


def test_gateway_killed_mid_subscription(cluster: Launcher, start_load: LoadStarter) -> None:
    """G4 across gateway loss: half the subscribers follow through gateway-1; SIGKILL it; they
    resume through gateway-2 after their last serial, with no gap and no duplicate."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    workload = background.workload
    victim = cluster.topology.named("gateway-1").address
    through_victim = {name for name, stats in workload.subscriber_stats.items() if stats.gateways[-1:] == [victim]}
    assert through_victim, "some subscribers follow through gateway-1"
    deliveries_before = {r.subscriber_id: len(r.received) for r in workload.history.subscribers}
    assert all(deliveries_before.values()), f"every subscriber is receiving before the fault: {deliveries_before}"
    cluster.kill("gateway-1", signal.SIGKILL)
    wait_until(
        lambda: all(len(r.received) > deliveries_before[r.subscriber_id] + 10 for r in workload.history.subscribers),
        "every subscriber to receive again after the gateway died",
    )
    moved = {name for name in through_victim if workload.subscriber_stats[name].gateways[-1] != victim}
    assert moved == through_victim, f"subscribers still on the dead gateway: {sorted(through_victim - moved)}"
    cluster.restart("gateway-1")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    report("gateway_killed", subscribers_moved=sorted(moved), summary=workload.summary())


def test_ownership_bounced_a_b_a(cluster: Launcher, start_load: LoadStarter) -> None:
    """A→B→A: stop the owner gracefully (it leaves the ring, the channel moves to B at once), then
    start it again (the ring gives the channel back to A). Serials keep strictly increasing: B starts
    after A's last, and A's second term after B's last, with nothing reused or skipped."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    first = owner_of(cluster, BUSY)
    stopped_ms = clock_ms()
    terminate(cluster, first)
    wait_until(lambda: owner_of(cluster, BUSY) != first, "the ring to move the channel to B")
    second = owner_of(cluster, BUSY)
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    moved_back_ms = clock_ms()
    cluster.restart(first)
    wait_until(lambda: owner_of(cluster, BUSY) == first, "the ring to give the channel back to A")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    report(
        "bounced",
        path=f"{first}->{second}->{first}",
        move_gap_ms=failover_ms(background, stopped_ms),
        back_gap_ms=failover_ms(background, moved_back_ms),
        summary=background.workload.summary(),
    )


def test_new_owner_killed_during_recovery(make_cluster: ClusterFactory, start_load: LoadStarter) -> None:
    """SIGKILL the owner A; the ring gives the channel to B, and B is SIGKILLed in the middle of its
    own takeover — after it fenced the stores, before it finished recovering. C then takes over from
    whatever B left behind (a fence at B's epoch, perhaps a partial rewrite) and nothing is lost.

    To hit "during recovery" every time rather than by luck, B's links to the three stores go through
    fault proxies that delay every packet by `RECOVERY_DELAY_MS` (B is known in advance: the ring is
    rendezvous hashing over the node names), so each round trip of B's takeover — fence, read,
    rewrite — takes at least twice that, and B is killed one round trip after it began fencing."""
    names = [f"channel-{index}" for index in (1, 2, 3)]
    first = Ring(1, names).owner(BUSY)
    assert first is not None
    second = Ring(1, [name for name in names if name != first]).owner(BUSY)
    assert second is not None
    links = [proxy_name(f"{second}->store-{zone}") for zone in "abc"]
    cluster = make_cluster(proxies=[f"{second}->store-{zone}" for zone in "abc"])
    assert owner_of(cluster, BUSY) == first
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    for link in links:
        cluster.proxy(link).set("delay", ms=RECOVERY_DELAY_MS)
    second_log = LogWatch(cluster, second)
    cluster.kill(first, signal.SIGKILL)
    fencing = second_log.wait_for(rf"takeover {BUSY} epoch=(\d+) fencing", timeout_s=20)
    time.sleep(RECOVERY_DELAY_MS * 2 / 1000 * 1.5)  # the fence round trip is over, the read is in flight
    killed_ms = clock_ms()
    cluster.kill(second, signal.SIGKILL)
    epoch = fencing.group(1)
    assert not second_log.search(rf"takeover {BUSY} epoch={epoch} serving"), f"{second} finished its takeover"
    for link in links:
        cluster.proxy(link).set("pass")
    wait_until(lambda: owner_of(cluster, BUSY) not in (first, second), "a third owner")
    third = owner_of(cluster, BUSY)
    during = background.wait_for_acks(HEALED_ACKS, since_ms=killed_ms, channel=BUSY, timeout_s=30)
    cluster.restart(first)
    cluster.restart(second)
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    report(
        "new_owner_killed",
        path=f"{first}->{second}(killed at epoch {epoch}, recovering)->{third}",
        second_log=second_log.search(rf"{BUSY}.*"),
        acks_on_third=during,
        failover_ms=failover_ms(background, killed_ms),
        summary=background.workload.summary(),
    )


def test_etcd_restarted(cluster: Launcher, start_load: LoadStarter) -> None:
    """etcd SIGKILLed under load, down for twice the lease TTL, then started again on its data. Every
    node's lease runs out by its own clock, so no owner may ack a publish from then until etcd is
    back (nobody can prove it still owns anything); afterwards they re-register and serve again."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    killed_ms = clock_ms()
    cluster.kill("etcd", signal.SIGKILL)
    time.sleep(2 * LEASE_TTL_S)
    restarting_ms = clock_ms()
    cluster.restart("etcd")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY, timeout_s=30)
    history = background.finish()
    # A lease's deadline is the send time of its last acknowledged keep-alive + the TTL: before the kill.
    leaseless_ms = killed_ms + int(LEASE_TTL_S * 1000) + 500
    assert_history_clean(background, history)
    impossible = acked_between(history, leaseless_ms, restarting_ms)
    assert impossible == [], f"acked with no valid lease anywhere: {impossible[:5]}"
    report(
        "etcd_restarted",
        down_s=round((restarting_ms - killed_ms) / 1000, 1),
        longest_ack_gap_ms=background.workload.longest_ack_gap_ms(killed_ms, clock_ms(), BUSY),
        summary=background.workload.summary(),
    )


def test_rolling_restart_of_every_process(cluster: Launcher, start_load: LoadStarter) -> None:
    """SIGTERM and restart every process, one at a time, waiting for it to be healthy and for the
    busy channel to ack again before the next: stores, channel nodes, gateways, placement, etcd last."""
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    order = [
        spec.name
        for role in ("store", "channel", "gateway", "placement", "etcd")
        for spec in cluster.topology.by_role(role)
    ]
    started = time.monotonic()
    windows: list[tuple[int, int, str]] = []
    for name in order:
        began_ms = clock_ms()
        terminate(cluster, name)
        cluster.restart(name)
        windows.append((began_ms, clock_ms(), name))
        background.wait_for_acks(5, since_ms=clock_ms(), channel=BUSY, timeout_s=30)
    history = background.finish()
    assert_history_clean(background, history)
    # Statuses a careful client cannot retry (the API says: retry UNAVAILABLE only), by the restart
    # they happened during: reported, since an op that ends so is UNKNOWN — allowed, but a cost.
    unretryable = [
        (attempt.code, attempt.reason, next((n for b, e, n in windows if b <= attempt.end_ms <= e + 1000), "?"))
        for attempt in background.workload.attempts
        if attempt.code not in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED")
    ]
    report(
        "rolling_restart",
        processes=len(order),
        restart_s=round(time.monotonic() - started, 1),
        unretryable=unretryable,
        summary=background.workload.summary(),
    )


def test_owner_cut_off_from_etcd_only(make_cluster: ClusterFactory, start_load: LoadStarter) -> None:
    """The owner loses etcd (its lease) but nothing else: it can still reach the stores, placement
    and the gateways can still reach it. It must stop serving by its own clock before its lease
    expires at etcd, so the next owner never overlaps with it (checked in the nodes' logs: the old
    owner steps down before anyone else begins to take the channel over); when the link heals it
    registers again and gets the channel back."""
    cluster = make_cluster(proxies=[f"channel-{index}->etcd" for index in (1, 2, 3)])
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    owner = owner_of(cluster, BUSY)
    logs = {spec.name: LogWatch(cluster, spec.name) for spec in cluster.topology.by_role("channel")}
    link = cluster.proxy(proxy_name(f"{owner}->etcd"))
    cut_ms = clock_ms()
    link.set("blackhole")
    try:
        wait_until(lambda: owner_of(cluster, BUSY) != owner, "the ring to drop the owner cut off from etcd")
        # The next owner must really serve while the old one is cut off (not just the old one's last acks).
        background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY, timeout_s=20)
        during = background.workload.acks_since(cut_ms, BUSY)
    finally:
        link.set("pass")
    healed_ms = clock_ms()
    wait_until(lambda: owner_of(cluster, BUSY) == owner, "the owner to rejoin once etcd is reachable", timeout_s=30)
    background.wait_for_acks(HEALED_ACKS, since_ms=healed_ms, channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    stepped_down = logs[owner].search(rf"stepped down {BUSY} ")
    taken_over = [line for name, log in logs.items() if name != owner for line in log.search(rf"takeover {BUSY} ")]
    assert stepped_down and taken_over, (stepped_down, taken_over)
    overlap_ms = log_time_ms(stepped_down[0]) - log_time_ms(min(taken_over, key=log_time_ms))
    assert overlap_ms < 0, f"the next owner began its takeover {overlap_ms} ms before the old one stopped serving"
    report(
        "cut_off_from_etcd",
        owner=owner,
        stepped_down=stepped_down[0],
        next_takeover=min(taken_over, key=log_time_ms),
        margin_ms=-overlap_ms,
        acks_while_cut_off=during,
        longest_ack_gap_ms=background.workload.longest_ack_gap_ms(cut_ms, healed_ms, BUSY),
        summary=background.workload.summary(),
    )


def kill_zone(cluster: Launcher, zone: str) -> None:
    """SIGKILL the zone's store, and its redis-server when the cluster runs the Redis engine."""
    cluster.kill(f"store-{zone}", signal.SIGKILL)
    if f"redis-{zone}" in cluster.running:
        cluster.kill(f"redis-{zone}", signal.SIGKILL)


def restart_zone(cluster: Launcher, zone: str) -> None:
    if f"redis-{zone}" in cluster.running:
        cluster.restart(f"redis-{zone}")
    cluster.restart(f"store-{zone}")


def log_time_ms(line: str) -> int:
    """The wall-clock time (ms) a service log line was written: they begin `YYYY-MM-DD HH:MM:SS,mmm`."""
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return int(stamp.timestamp() * 1000)


@pytest.mark.parametrize("engine", ENGINES)
def test_store_loses_unsynced_tail_while_another_is_paused(
    make_cluster: ClusterFactory, start_load: LoadStarter, engine: str
) -> None:
    """Pause store-b (SIGSTOP: alive, silent), then SIGKILL store-a mid-load: whatever store-a had
    received but not yet committed (its unsynced tail, the group commit in progress) is gone.
    With only store-c answering nothing can be acked; store-a restarts with its synced log only and,
    with store-c, forms a quorum again while store-b is still paused; then store-b wakes up behind.
    Nothing acked may be lost, and the owner must repair both stores from where their logs match.
    Over Redis, zone a's redis-server is SIGKILLed with its store: it keeps only what its append-only
    file synced."""
    cluster = make_cluster(engine=engine)
    background = start_load(cluster, LOAD)
    background.wait_for_acks(WARM_UP_ACKS, channel=BUSY)
    pause(cluster, "store-b")
    try:
        time.sleep(0.5)  # appends pile up at store-a and store-c, store-b's are in flight
        down_ms = clock_ms()
        kill_zone(cluster, "a")
        time.sleep(3.0)
        healing_ms = clock_ms()
        restart_zone(cluster, "a")
        background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY, timeout_s=30)
    finally:
        resume(cluster, "store-b")
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    cluster.restart("store-b")  # and once more, from its synced log
    background.wait_for_acks(HEALED_ACKS, since_ms=clock_ms(), channel=BUSY)
    history = background.finish()
    assert_history_clean(background, history)
    impossible = acked_between(history, down_ms, healing_ms)
    assert impossible == [], f"acked with only store-c answering: {impossible[:5]}"
    report(f"unsynced_tail[{engine}]", summary=background.workload.summary())
