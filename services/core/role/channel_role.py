"""`ChannelRole`: one channel's owner at one epoch — its inputs, each answered through the state
table (states.py) with the `Effects` it comes to. The rules are in the package's docstring; each
concern's code is in its own module, and this one holds what spans them: dispatching read replies,
transport failures, time, and stopping."""

from __future__ import annotations

from collections.abc import Callable

from ringcast.reasons import Reason
from services.core.entries import Message
from services.core.invariants import invariant
from services.core.replica_log import AppendReply, FenceReply, ReadReply
from services.core.role.messages import (
    AppendRequest,
    Delivery,
    Effects,
    HistoryAnswer,
    HistoryResult,
    PublishAnswer,
    ReadRequest,
    StaleInput,
    StoreRequest,
    SubscriberDelivery,
    TakeoverStep,
)
from services.core.role.reads import Reads
from services.core.role.replication import Replication
from services.core.role.retention import Retention
from services.core.role.states import INPUTS, Handling, RoleState
from services.core.role.takeover import Takeover


class ChannelRole(Takeover, Replication, Reads, Retention):
    """One channel's owner at one epoch. Every input returns the Effects the adapter applies."""

    # ------------------------------------------------------------------ inputs

    def start(self, trigger: str = "request") -> Effects:
        """Begin the takeover: fence every replica at our epoch. `trigger` says why (for metrics, traces)."""
        return self._input("start", lambda effects: self._start(effects, trigger))

    def on_fence_reply(self, replica: str, reply: FenceReply, now_ms: int) -> Effects:
        return self._input("fence_reply", lambda effects: self._on_fence_reply(replica, reply, now_ms, effects))

    def on_append_reply(self, replica: str, request: AppendRequest, reply: AppendReply, now_ms: int) -> Effects:
        return self._input(
            "append_reply", lambda effects: self._on_append_reply(replica, request, reply, now_ms, effects)
        )

    def on_read_reply(self, replica: str, request: ReadRequest, reply: ReadReply, now_ms: int) -> Effects:
        return self._input("read_reply", lambda effects: self._on_read_reply(replica, request, reply, now_ms, effects))

    def on_store_error(self, replica: str, request: StoreRequest, now_ms: int) -> Effects:
        """A request failed in transport (unreachable, deadline exceeded)."""
        return self._input("store_error", lambda effects: self._on_store_error(replica, request, now_ms, effects))

    def publish(self, token: int, messages: tuple[Message, ...], now_ms: int, *, send: bool = True) -> Effects:
        """Assign serials to a batch (atomically), or answer at once for duplicates. `send` False:
        the new entries wait for `send` (so that publishes arriving together go out in one append
        round); the tick sends them anyway."""
        return self._input("publish", lambda effects: self._publish(token, messages, now_ms, effects, send=send))

    def send(self, now_ms: int) -> Effects:
        """Send every replica what it is missing, within its window (the entries of publishes made
        with `send` False)."""
        return self._input("send", lambda effects: self._pump(now_ms, effects))

    def subscribe(self, token: int, after_serial: int, now_ms: int) -> Effects:
        """Deliver every committed entry after `after_serial`, in order, then live ones."""
        return self._input("subscribe", lambda effects: self._subscribe(token, after_serial, now_ms, effects))

    def unsubscribe(self, token: int) -> None:
        if self._admits("unsubscribe", Effects()):
            self.subscribers.pop(token, None)

    def read_history(self, token: int, after_serial: int, limit: int, now_ms: int) -> Effects:
        """Committed entries after `after_serial`, at most `limit` (bounded by read_entries_max)."""
        return self._input(
            "read_history", lambda effects: self._read_history(token, after_serial, limit, now_ms, effects)
        )

    def notify_commit(self, now_ms: int) -> Effects:
        """Tell replicas owed our commit point (empty appends), so an idle channel's entries can be
        trimmed too (`_notify_commit`). The node calls it on its sweep."""
        return self._input("notify_commit", lambda effects: self._notify_commit(now_ms, effects))

    def tick(self, now_ms: int) -> Effects:
        """Time passes: take-over deadline, append and read retransmissions, dedup expiry."""
        return self._input("tick", lambda effects: self._tick(now_ms, effects))

    def stop(self, reason: str) -> Effects:
        """Stop serving at once: fail what is pending, end every subscription."""
        return self._input("stop", lambda effects: self._stop(reason, effects))

    def _input(self, name: str, step: Callable[[Effects], object]) -> Effects:
        """Input `name`, taken by `step` if the state table says so; the effects it comes to."""
        effects = Effects()
        if self._admits(name, effects):
            step(effects)
        return effects

    def _admits(self, name: str, effects: Effects) -> bool:
        """Whether input `name` is handled in the current state (the table in states.py): stale
        answers are reported in `effects.stale`, impossible ones trip an invariant."""
        handling = INPUTS[name][self.state]
        invariant(handling is not Handling.IMPOSSIBLE, f"role {self.channel}: {name} while {self.state.name}")
        if handling is Handling.STALE:
            effects.stale.append(StaleInput(self.channel, self.epoch, name, self.state.value))
        return handling in (Handling.TAKE, Handling.QUEUE, Handling.REFUSE)

    # ------------------------------------------------------------------ across the concerns

    def _on_read_reply(
        self, replica: str, request: ReadRequest, reply: ReadReply, now_ms: int, effects: Effects
    ) -> None:
        read = self.reads.pop(request.sequence, None)
        if read is None or read.replica != replica:  # timed out, or given up with the log it was for
            effects.stale.append(StaleInput(self.channel, self.epoch, "read_reply", self.state.value))
            return
        if read.purpose == "recover":
            self._on_recovery_read(read, reply, now_ms, effects)
        elif read.purpose == "recover-ids":
            self._on_recovery_ids_read(read, reply, now_ms, effects)
        elif read.purpose == "backfill":
            self._on_backfill_read(read, reply, now_ms, effects)
        elif read.purpose == "subscriber":
            self._on_subscriber_read(read, reply, now_ms, effects)
        else:
            self._on_history_read(read, reply, now_ms, effects)

    def _on_store_error(self, replica_name: str, request: StoreRequest, now_ms: int, effects: Effects) -> None:
        """A request failed in transport (unreachable, deadline exceeded)."""
        if isinstance(request, AppendRequest):
            replica = self.replicas.get(replica_name)
            if replica is not None and request.sequence in replica.inflight:
                self._reset(replica)
                self._mark_unreachable(replica, effects)
        elif isinstance(request, ReadRequest):
            self._fail_read(request.sequence, now_ms, effects)

    def _fail_read(self, sequence: int, now_ms: int, effects: Effects) -> None:
        read = self.reads.pop(sequence, None)
        if read is None:
            return
        if read.purpose in ("recover", "recover-ids"):
            self._stop(Reason.RECOVERY_READ_FAILED, effects)
        elif read.purpose == "subscriber":
            subscriber = self.subscribers.get(read.owner)
            if subscriber is not None:
                subscriber.read_sequence = 0

    @property
    def quorum_lost(self) -> bool:
        """Serving, with no quorum of replicas within reach (its publishes fail fast)."""
        return self.state is RoleState.SERVING and self._quorum_unreachable()

    @property
    def quiet(self) -> bool:
        """True when nothing here waits on time: a tick would do nothing until an event arrives.

        The node ticks only roles that are not quiet, so the cost of a tick follows the channels
        with work in flight, not every channel held (10,000 idle channels cost nothing per tick).
        """
        if self.state is not RoleState.SERVING:
            return self.state is RoleState.STOPPED
        if self.pending or self.queued or self.reads or self.histories:
            return False
        last = self.last
        for replica in self.replicas.values():
            if replica.fenced_out:
                continue
            if replica.inflight or replica.unreachable or replica.next <= last:
                return False
        visible = self._visible()
        return all(subscriber.next_serial > visible for subscriber in self.subscribers.values())

    def _tick(self, now_ms: int, effects: Effects) -> None:
        """Time passes: take-over deadline, append and read retransmissions, dedup expiry."""
        if self.state is not RoleState.SERVING:
            if now_ms - self.progress_ms > self.config.takeover_timeout_ms:
                self._stop(Reason.TAKEOVER_TIMEOUT, effects)
            return
        if self.pending and now_ms - self.pending[0].assigned_ms > self.config.commit_stall_ms:
            # Alive but failing: its replicas do not answer in time. Holding the channel would only
            # keep publishes waiting; stepping down lets the node decide whether to leave the ring.
            self._stop(Reason.COMMIT_STALLED, effects)
            return
        for replica in self.replicas.values():
            if replica.fenced_out:
                continue
            if replica.inflight:
                oldest = min(sent for sent, _ in replica.inflight.values())
                if now_ms - oldest > self.config.append_timeout_ms:
                    self._reset(replica)
                    self._mark_unreachable(replica, effects)
            elif replica.unreachable and replica.next > self.last:
                self._probe(replica, now_ms, effects)
        for sequence, read in list(self.reads.items()):
            if now_ms - read.sent_ms > self.config.read_timeout_ms:
                self._fail_read(sequence, now_ms, effects)
        self.dedup.expire(now_ms)
        self._pump(now_ms, effects)
        self._feed_subscribers(now_ms, effects)
        self._answer_histories(now_ms, effects)

    def _stop(self, reason: str, effects: Effects) -> None:
        """Stop serving at once: fail what is pending, end every subscription."""
        if self.state is RoleState.STOPPED:
            return
        if self.state is not RoleState.SERVING:
            effects.takeovers.append(
                TakeoverStep(self.channel, self.epoch, "failed", {"reason": reason, "trigger": self.trigger})
            )
        self._enter(RoleState.STOPPED)
        self.stop_reason = reason
        for pending in self.pending:
            effects.results.append(PublishAnswer(pending.token, self._moved_result(True)))
        for token, _ in self.queued:
            effects.results.append(PublishAnswer(token, self._moved_result(False)))
        for token in self.subscribers:
            effects.deliveries.append(SubscriberDelivery(token, Delivery(end_reason=Reason.CHANNEL_MOVED)))
        for token in self.histories:
            effects.histories.append(HistoryAnswer(token, HistoryResult(reason=Reason.CHANNEL_MOVED)))
        self.pending.clear()
        self.queued.clear()
        self.subscribers.clear()
        self.histories.clear()
        self.reads.clear()
        effects.events.append(f"stepped down {self.channel} epoch={self.epoch} reason={reason}")
