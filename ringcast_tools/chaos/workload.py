"""A history-recording workload against a real cluster, judged by `services.core.checker`.

Jepsen-style: concurrent publishers and subscribers talk to the gateways the way a careful client
would, and every operation is written down as what the client could know about it — never more.

Publishers
    Each publisher owns one channel and sends batches of 1–`batch_max` messages with ids unique to
    the run (`{run}-p{publisher}-{n}`). One batch is one operation: invoke → ok (with the serials the
    platform returned) / fail / unknown. On UNAVAILABLE, DEADLINE_EXCEEDED or a broken connection it
    retries the *same* ids, switching to the other gateway, with jittered, doubling, bounded
    backoff, until the operation's deadline. Any such error might have come after the owner stored
    the batch, so an operation that never got an ack is UNKNOWN; it is FAIL only when every attempt
    got a definite refusal (INVALID_ARGUMENT and the like), i.e. nothing can have been stored.

Subscribers
    Each follows one channel from serial 0. On any error, a stream that ends, or a stream that has
    been silent for `subscriber_idle_s`, it resumes with `after_serial` = the last serial it
    received, through the other gateway. Every delivery (serial, id) and every explicit
    ContinuityLost is recorded, in the order received.

End of a run
    Publishing stops (operations in flight finish or reach their deadline); the workload learns each
    channel's commit point (GetChannel, and at least the highest acknowledged serial) and waits,
    bounded, for every subscriber to get there; then it stops the subscribers and reads each
    channel's final log through the gateway's History RPC, page by page (limit 1000), retrying
    UNAVAILABLE. Reading the final log last means a subscriber can never have seen a serial the
    final log does not cover.

Every loop is bounded in iterations and in time. The fault injection is someone else's business:
the caller runs `Workload.run()` (or `run_workload`) and breaks the cluster from outside meanwhile;
`stop` (a `threading.Event`) ends the load phase early, so a test can stop once the cluster healed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from ringcast.v1 import message_pb2
from ringcast.v1 import realtime_service_pb2 as realtime_pb2
from ringcast.v1 import realtime_service_pb2_grpc as realtime_grpc
from services.common.errors import reason_of
from services.core.checker import ContinuityLost, History, Outcome, PublishOp, SubscriberRecord

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes after which a publish is retried with the same ids (the SDK's rule, plus deadlines)."""

DEFINITELY_NOT_STORED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Codes that the gateway gives only before anything reached an owner's log: the batch was refused.

Everything else (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, CANCELLED, a transport error…)
may have come after the owner assigned serials, so it leaves the batch "maybe stored"."""

CLIENT_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.enable_retries", 0),
)
"""A restarted gateway is dialled again within a second, and nothing is retried behind our back."""


def clock_ms() -> int:
    """The clock every timestamp of a workload is on (monotonic, shared by all threads)."""
    return int(time.monotonic() * 1000)


class WorkloadError(Exception):
    """The workload could not finish its own job (e.g. the final log could not be read)."""


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    publishers: int = 6
    """Concurrent publishers, spread round-robin over the channels."""
    subscribers: int = 6
    """Concurrent subscribers, spread round-robin over the channels (and over the gateways)."""
    duration_s: float = 20.0
    """Longest load phase; `stop` may end it earlier."""
    batch_max: int = 3
    """Messages per publish: 1..batch_max, at random."""
    op_deadline_s: float = 20.0
    """One publish operation, every attempt included; after it the operation is UNKNOWN (or FAIL)."""
    attempt_timeout_s: float = 5.0
    """Deadline of one Publish RPC."""
    backoff_s_min: float = 0.05
    backoff_s_max: float = 1.0
    publish_pause_s: float = 0.02
    """Pause between one publisher's operations (keeps a 2-core machine responsive)."""
    subscriber_idle_s: float = 6.0
    """A subscription silent this long is reopened through the other gateway (a stalled peer)."""
    catch_up_s: float = 30.0
    """How long subscribers get, after publishing stopped, to reach each channel's commit point."""
    final_read_s: float = 60.0
    """How long reading every final log may take, retries included."""
    attempts_per_op_max: int = 200
    resumes_per_subscriber_max: int = 10_000
    history_pages_max: int = 10_000
    run_id: str = ""
    """Prefix of every message id; random when empty."""
    seed: int | None = None
    """Seed of the jitter and batch sizes (the faults are not seeded: they come from outside)."""
    ca: bytes | None = None
    """PEM of the CA that signed the gateways' certificates: TLS on, checked against it."""
    token: str | None = None
    """Sent as `authorization: Bearer` on every call (needs `ca`: gRPC sends no credentials in plaintext)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One RPC of a publish operation, as the client saw it."""

    op_id: int
    gateway: str
    start_ms: int
    end_ms: int
    code: str  # "OK" or the status code's name, or "TRANSPORT"
    reason: str = ""


@dataclass(slots=True)
class SubscriberStats:
    resumes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    gateways: list[str] = field(default_factory=list)
    """The gateway of each subscription it opened, in order (the first, then every resume)."""


@dataclass(slots=True)
class Summary:
    ok: int
    unknown: int
    fail: int
    messages_acked: int
    deliveries: int
    subscriber_resumes: int
    errors: dict[str, int]
    final_log_lengths: dict[str, int]
    lagging_subscribers: list[str]
    """Subscribers that did not reach their channel's catch-up target (should be none)."""

    def __str__(self) -> str:
        errors = ", ".join(f"{name}={count}" for name, count in sorted(self.errors.items())) or "none"
        return (
            f"ops ok={self.ok} unknown={self.unknown} fail={self.fail} messages_acked={self.messages_acked} "
            f"deliveries={self.deliveries} subscriber_resumes={self.subscriber_resumes} "
            f"final_logs={self.final_log_lengths} lagging={self.lagging_subscribers} errors: {errors}"
        )


class Workload:
    """One run: publishers and subscribers on `channels` through `gateways`, recorded in `.history`.

    The history, the attempts and the stats are plain lists and counters that only the workload's
    event loop appends to; another thread may read their lengths and items while it runs (that is
    how a test waits for "some acks after the fault healed").
    """

    def __init__(self, gateways: Sequence[str], channels: Sequence[str], config: WorkloadConfig) -> None:
        if not gateways:
            raise ValueError("a workload needs at least one gateway")
        if not channels:
            raise ValueError("a workload needs at least one channel")
        self.gateways = list(gateways)
        self.channels = list(channels)
        self.config = config
        self.run_id = config.run_id or uuid.uuid4().hex[:8]
        self.random = random.Random(config.seed)
        self.history = History()
        self.attempts: list[Attempt] = []
        self.errors: Counter[str] = Counter()
        self.subscriber_stats: dict[str, SubscriberStats] = {}
        self.catch_up_targets: dict[str, int] = {}
        self.load_ended_ms = 0
        self._op_ids = 0
        self._stubs: list[realtime_grpc.RealtimeServiceStub] = []
        self._stop_load = asyncio.Event()
        self._stop_subscribers = asyncio.Event()
        self._open_calls: dict[str, grpc.aio.UnaryStreamCall] = {}  # subscriber id → its open call
        self._last_activity: dict[str, float] = {}  # subscriber id → loop time of its last response
        self._idle: set[str] = set()  # subscribers whose call the idle reaper cancelled

    # ----------------------------------------------------------------------------- queries (any thread)

    def acks_since(self, since_ms: int, channel: str | None = None) -> int:
        """Operations acknowledged at or after `since_ms` (on `channel`, or on any)."""
        return sum(
            1
            for op in list(self.history.publishes)
            if op.outcome is Outcome.OK and op.complete_ms >= since_ms and (channel is None or op.channel == channel)
        )

    def longest_ack_gap_ms(self, since_ms: int, until_ms: int, channel: str | None = None) -> int:
        """The longest time without any ack (on `channel`) between `since_ms` and `until_ms`."""
        times = sorted(
            op.complete_ms
            for op in list(self.history.publishes)
            if op.outcome is Outcome.OK and (channel is None or op.channel == channel)
        )
        marks = [since_ms, *(t for t in times if since_ms < t < until_ms), until_ms]
        return max(later - earlier for earlier, later in zip(marks, marks[1:], strict=False))

    def summary(self) -> Summary:
        publishes = list(self.history.publishes)
        outcomes = Counter(op.outcome for op in publishes)
        lagging = [
            record.subscriber_id
            for record in self.history.subscribers
            if _last_serial(record) < self.catch_up_targets.get(record.channel, 0)
        ]
        return Summary(
            ok=outcomes[Outcome.OK],
            unknown=outcomes[Outcome.UNKNOWN],
            fail=outcomes[Outcome.FAIL],
            messages_acked=sum(len(op.message_ids) for op in publishes if op.outcome is Outcome.OK),
            deliveries=sum(len(record.received) for record in self.history.subscribers),
            subscriber_resumes=sum(stats.resumes for stats in self.subscriber_stats.values()),
            errors=dict(self.errors),
            final_log_lengths={channel: len(log) for channel, log in self.history.final_logs.items()},
            lagging_subscribers=lagging,
        )

    # ----------------------------------------------------------------------------- the run

    def _link(self, address: str) -> grpc.aio.Channel:
        if self.config.ca is None:
            if self.config.token is not None:
                raise ValueError("a token needs TLS (ca): gRPC sends no credentials in plaintext")
            return grpc.aio.insecure_channel(address, options=CLIENT_OPTIONS)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.config.ca)
        if self.config.token is not None:
            token = grpc.access_token_call_credentials(self.config.token)
            credentials = grpc.composite_channel_credentials(credentials, token)
        return grpc.aio.secure_channel(address, credentials, options=CLIENT_OPTIONS)

    async def run(self, stop: threading.Event | None = None) -> History:
        """Load for `duration_s` (or until `stop` is set), then catch up and read the final logs."""
        config = self.config
        links = [self._link(address) for address in self.gateways]
        self._stubs = [realtime_grpc.RealtimeServiceStub(link) for link in links]
        subscribers: list[asyncio.Task[None]] = []
        others: list[asyncio.Task[None]] = []
        try:
            subscribers = [
                asyncio.create_task(self._subscriber(index), name=f"subscriber-{index}")
                for index in range(config.subscribers)
            ]
            publishers = [
                asyncio.create_task(self._publisher(index), name=f"publisher-{index}")
                for index in range(config.publishers)
            ]
            others = [
                *publishers,
                asyncio.create_task(self._end_load(stop), name="end-load"),
                asyncio.create_task(self._reap_idle_subscriptions(), name="idle-reaper"),
            ]
            # A publisher ends by itself at the latest op_deadline_s after the load phase.
            bound_s = config.duration_s + config.op_deadline_s + config.backoff_s_max + 10
            done, _ = await asyncio.wait(publishers, timeout=bound_s)
            for task in done:
                task.result()  # a publisher that failed is a bug of the workload: surface it
            if len(done) < len(publishers):
                raise WorkloadError(f"publishers still running {bound_s:.0f} s after the load began")
            self.load_ended_ms = clock_ms()
            await self._catch_up(subscribers)
            await self._end_subscriptions(subscribers)
            await self._read_final_logs()
        finally:
            self._stop_load.set()
            await self._end_subscriptions(subscribers)
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for link in links:
                await link.close()
        return self.history

    async def _end_subscriptions(self, subscribers: list[asyncio.Task[None]]) -> None:
        """Stop every subscriber by cancelling its *call*, so each ends on its own.

        (Cancelling a task that is blocked reading a grpc.aio stream can leave it stuck for good in
        grpcio 1.85, so subscriber tasks are only cancelled as a last resort.)
        """
        self._stop_subscribers.set()
        for call in list(self._open_calls.values()):
            call.cancel()
        if subscribers:
            _, pending = await asyncio.wait(subscribers, timeout=10)
            for task in pending:
                task.cancel()

    async def _reap_idle_subscriptions(self) -> None:
        """Cancel every subscription that has been silent for `subscriber_idle_s`: its subscriber
        then resumes through the other gateway (a stalled gateway or owner never holds it for good)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(0.5, self.config.subscriber_idle_s / 4))
            for subscriber_id, call in list(self._open_calls.items()):
                if loop.time() - self._last_activity.get(subscriber_id, loop.time()) > self.config.subscriber_idle_s:
                    self._idle.add(subscriber_id)
                    call.cancel()

    async def _end_load(self, stop: threading.Event | None) -> None:
        deadline = asyncio.get_running_loop().time() + self.config.duration_s
        while asyncio.get_running_loop().time() < deadline and not (stop is not None and stop.is_set()):
            await asyncio.sleep(0.05)
        self._stop_load.set()

    # ----------------------------------------------------------------------------- publishers

    def _next_op_id(self) -> int:
        self._op_ids += 1
        return self._op_ids

    async def _publisher(self, index: int) -> None:
        channel = self.channels[index % len(self.channels)]
        gateway = index % len(self._stubs)
        sent = 0
        while not self._stop_load.is_set():
            size = self.random.randint(1, self.config.batch_max)
            ids = tuple(f"{self.run_id}-p{index}-{sent + offset}" for offset in range(size))
            sent += size
            op, gateway = await self._publish(channel, ids, gateway)
            self.history.publishes.append(op)
            await asyncio.sleep(self.config.publish_pause_s)

    async def _publish(self, channel: str, ids: tuple[str, ...], gateway: int) -> tuple[PublishOp, int]:
        """One operation: attempts until an ack, a definite refusal, or the deadline. Returns the
        operation and the gateway to use next (the one that last answered, or the other one)."""
        config = self.config
        loop = asyncio.get_running_loop()
        op_id = self._next_op_id()
        request = realtime_pb2.PublishRequest(
            channel=channel,
            messages=[message_pb2.Message(id=message_id, data=message_id.encode()) for message_id in ids],
        )
        invoke_ms = clock_ms()
        deadline = loop.time() + config.op_deadline_s
        maybe_stored = False
        backoff = config.backoff_s_min
        for _ in range(config.attempts_per_op_max):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            started_ms = clock_ms()
            address = self.gateways[gateway]
            try:
                response = await self._stubs[gateway].Publish(request, timeout=min(config.attempt_timeout_s, remaining))
            except grpc.aio.AioRpcError as error:
                code = error.code()
                reason = reason_of(error)
                self.attempts.append(Attempt(op_id, address, started_ms, clock_ms(), code.name, reason))
                self.errors[f"{code.name}/{reason}" if reason != code.name else code.name] += 1
                if code not in DEFINITELY_NOT_STORED:
                    maybe_stored = True
                if code not in RETRYABLE:
                    break
            except (grpc.RpcError, OSError) as error:  # a transport failure outside a status: maybe stored
                self.attempts.append(Attempt(op_id, address, started_ms, clock_ms(), "TRANSPORT", type(error).__name__))
                self.errors["TRANSPORT"] += 1
                maybe_stored = True
            else:
                serials = tuple(int(serial) for serial in response.serials)
                self.attempts.append(Attempt(op_id, address, started_ms, clock_ms(), "OK"))
                if len(serials) != len(ids):
                    # The platform answered with the wrong number of serials: a protocol bug. Record it
                    # where a test will see it, and let the checker judge what was stored.
                    self.errors["BAD_RESPONSE"] += 1
                    return PublishOp(op_id, channel, ids, Outcome.UNKNOWN, (), invoke_ms, clock_ms()), gateway
                return PublishOp(op_id, channel, ids, Outcome.OK, serials, invoke_ms, clock_ms()), gateway
            gateway = (gateway + 1) % len(self._stubs)
            pause = min(backoff, max(0.0, deadline - loop.time())) * self.random.uniform(0.5, 1.0)
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, config.backoff_s_max)
        outcome = Outcome.UNKNOWN if maybe_stored else Outcome.FAIL
        return PublishOp(op_id, channel, ids, outcome, (), invoke_ms, clock_ms()), gateway

    # ----------------------------------------------------------------------------- subscribers

    async def _subscriber(self, index: int) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        this_task = asyncio.current_task()
        channel = self.channels[index % len(self.channels)]
        record = SubscriberRecord(f"s{index}", channel, 0)
        name = record.subscriber_id
        self.history.subscribers.append(record)
        stats = self.subscriber_stats[name] = SubscriberStats()
        gateway = (index // len(self.channels)) % len(self._stubs)
        after = record.start_after
        backoff = config.backoff_s_min
        hard_deadline = loop.time() + config.duration_s + config.op_deadline_s + config.catch_up_s + 30
        for _ in range(config.resumes_per_subscriber_max):
            if self._stop_subscribers.is_set() or loop.time() > hard_deadline:
                return
            stats.gateways.append(self.gateways[gateway])
            call = self._stubs[gateway].Subscribe(realtime_pb2.SubscribeRequest(channel=channel, after_serial=after))
            self._open_calls[name] = call
            self._last_activity[name] = loop.time()
            self._idle.discard(name)
            try:
                while True:
                    response = await call.read()
                    self._last_activity[name] = loop.time()
                    if response is grpc.aio.EOF:
                        stats.errors["END"] += 1
                        break
                    if response.HasField("gap"):
                        record.received.append(ContinuityLost(int(response.gap.next_serial)))
                        after = max(after, int(response.gap.next_serial) - 1)
                    else:
                        serial = int(response.message.serial)
                        record.received.append((serial, response.message.id))
                        after = max(after, serial)
                    backoff = config.backoff_s_min
            except asyncio.CancelledError:
                if this_task is not None and this_task.cancelling():
                    raise  # the task itself is being cancelled, not just its call
                stats.errors["CANCELLED_WHILE_IDLE" if name in self._idle else "CANCELLED"] += 1
            except grpc.aio.AioRpcError as error:
                stats.errors[error.code().name] += 1
            except (grpc.RpcError, OSError):
                stats.errors["TRANSPORT"] += 1
            finally:
                self._open_calls.pop(name, None)
                call.cancel()
            if self._stop_subscribers.is_set():
                return
            stats.resumes += 1
            gateway = (gateway + 1) % len(self._stubs)
            await asyncio.sleep(backoff * self.random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, config.backoff_s_max)

    async def _catch_up(self, subscribers: list[asyncio.Task[None]]) -> None:
        """Wait (bounded) until every subscriber has reached its channel's commit point."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.catch_up_s
        for channel in self.channels:
            acked = [
                max(op.serials)
                for op in self.history.publishes
                if op.channel == channel and op.outcome is Outcome.OK and op.serials
            ]
            target = max(acked, default=0)
            committed = await self._commit_point(channel, deadline)
            self.catch_up_targets[channel] = max(target, committed or 0)
        while loop.time() < deadline:
            if all(
                _last_serial(record) >= self.catch_up_targets.get(record.channel, 0)
                for record in self.history.subscribers
            ) or all(task.done() for task in subscribers):
                return
            await asyncio.sleep(0.1)

    async def _commit_point(self, channel: str, deadline: float) -> int | None:
        """The channel's last committed serial per its owner, or None if no owner answered in time."""
        loop = asyncio.get_running_loop()
        gateway = 0
        backoff = self.config.backoff_s_min
        while loop.time() < deadline:
            try:
                state = await self._stubs[gateway].GetChannel(
                    realtime_pb2.GetChannelRequest(channel=channel),
                    timeout=min(self.config.attempt_timeout_s, max(0.1, deadline - loop.time())),
                )
                return int(state.last_serial)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE:
                    return None
            gateway = (gateway + 1) % len(self._stubs)
            await asyncio.sleep(backoff * self.random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.config.backoff_s_max)
        return None

    # ----------------------------------------------------------------------------- final logs

    async def _read_final_logs(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.final_read_s
        for channel in self.channels:
            self.history.final_logs[channel] = await self._read_log(channel, deadline)

    async def _read_log(self, channel: str, deadline: float) -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        log: list[tuple[int, str]] = []
        after = 0
        gateway = 0
        backoff = self.config.backoff_s_min
        pages = 0
        last_error = ""
        while pages < self.config.history_pages_max:
            if loop.time() >= deadline:
                raise WorkloadError(
                    f"could not read the final log of {channel!r} in {self.config.final_read_s:.0f} s "
                    f"(read {len(log)} entries; last error {last_error})"
                )
            try:
                page = await self._stubs[gateway].History(
                    realtime_pb2.HistoryRequest(channel=channel, after_serial=after, limit=1000),
                    timeout=min(self.config.attempt_timeout_s * 2, max(0.1, deadline - loop.time())),
                )
            except grpc.aio.AioRpcError as error:
                last_error = f"{error.code().name} {reason_of(error)}"
                if error.code() not in RETRYABLE:
                    raise WorkloadError(f"History of {channel!r} refused: {last_error}") from error
                gateway = (gateway + 1) % len(self._stubs)
                await asyncio.sleep(backoff * self.random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.config.backoff_s_max)
                continue
            pages += 1
            backoff = self.config.backoff_s_min
            if not page.messages:
                return log
            log.extend((int(message.serial), message.id) for message in page.messages)
            if log[-1][0] <= after:
                raise WorkloadError(f"History of {channel!r} went backwards: after {after} came {log[-1][0]}")
            after = log[-1][0]
        raise WorkloadError(f"the final log of {channel!r} has more than {self.config.history_pages_max} pages")


def _last_serial(record: SubscriberRecord) -> int:
    for item in reversed(record.received):
        if isinstance(item, ContinuityLost):
            return item.next_serial - 1
        return item[0]
    return record.start_after


async def run_workload(
    gateways: Sequence[str],
    channels: Sequence[str],
    *,
    publishers: int,
    subscribers: int,
    duration_s: float,
    stop: threading.Event | None = None,
    config: WorkloadConfig | None = None,
) -> History:
    """Run one workload (see the module docstring) and return its history, ready for `check`."""
    settings = dataclasses.replace(
        config or WorkloadConfig(), publishers=publishers, subscribers=subscribers, duration_s=duration_s
    )
    return await Workload(gateways, channels, settings).run(stop)
