"""Publishing and replication (rules 4–6): serials, the pipelined append window, repair of lagging and
damaged replicas (backfill), fences from a minority, quorum loss, and commit."""

from __future__ import annotations

from ringcast.reasons import Reason
from services.core.entries import Entry, Message, Position
from services.core.invariants import invariant
from services.core.quorum import advance_commit
from services.core.replica_log import AppendReply, AppendStatus, ReadReply
from services.core.role.base import PendingPublish, ReadInFlight, ReplicaView, RoleBase
from services.core.role.messages import (
    AppendRequest,
    Effects,
    PublishAnswer,
    PublishResult,
    ReplicaFault,
    StoreSend,
)
from services.core.role.states import RoleState


class Replication(RoleBase):
    def _publish(
        self, token: int, messages: tuple[Message, ...], now_ms: int, effects: Effects, *, send: bool = True
    ) -> None:
        """Assign serials to a batch (atomically), or answer at once for duplicates; `send`: pump the
        new entries to the replicas now (False: the caller will, after more publishes)."""
        self.last_activity_ms = now_ms
        if self.state is RoleState.STOPPED:
            effects.results.append(PublishAnswer(token, self._moved_result(False)))
            return
        if self.state is not RoleState.SERVING:
            if len(self.queued) >= self.config.queued_publishes_max:
                effects.results.append(
                    PublishAnswer(token, PublishResult(False, reason=Reason.OWNER_OVERLOADED, retryable=True))
                )
            else:
                self.queued.append((token, messages))
            return
        if self._quorum_unreachable():
            # Fail fast: a quorum of replicas is known to be unreachable, so nothing could commit.
            effects.results.append(
                PublishAnswer(token, PublishResult(False, reason=Reason.QUORUM_UNAVAILABLE, retryable=True))
            )
            return
        uncommitted = self.last - max(self.commit, self.epoch_start_serial - 1)  # adopted entries do not count
        if uncommitted + len(messages) > self.config.pending_entries_max:
            effects.results.append(
                PublishAnswer(token, PublishResult(False, reason=Reason.OWNER_OVERLOADED, retryable=True))
            )
            return
        serials: list[int] = []
        duplicates: list[bool] = []
        seen_in_batch: dict[str, int] = {}
        first_new = self.last + 1
        for message in messages:
            original = self.dedup.get(message.id)
            if original is None:
                original = seen_in_batch.get(message.id)
            if original is not None:
                serials.append(original)
                duplicates.append(True)
                continue
            serial = self.last + 1
            entry = Entry.make(serial, self.epoch, message.stamped(now_ms + self.wall_offset_ms))
            self.tail.append(entry)
            self.tail_batch_last.append(0)  # filled in below, once the batch's end is known
            self.dedup.add(message.id, serial, now_ms)
            seen_in_batch[message.id] = serial
            serials.append(serial)
            duplicates.append(False)
        batch_last = self.last
        for index in range(first_new - self.tail_base - 1, len(self.tail)):
            self.tail_batch_last[index] = batch_last
        pending = PendingPublish(token, max(serials), tuple(serials), tuple(duplicates), now_ms)
        if "ack-before-quorum" in self.bugs or pending.last_serial <= self.commit:
            effects.results.append(PublishAnswer(token, PublishResult(True, pending.serials, pending.duplicates)))
        else:
            self.pending.append(pending)
        if batch_last >= first_new:
            if send:
                self._pump(now_ms, effects)
            if "deliver-uncommitted" in self.bugs:
                self._feed_subscribers(now_ms, effects)

    def _moved_result(self, maybe_stored: bool) -> PublishResult:
        reason = self.stop_reason if self.stop_reason in (Reason.LEASE_LOST,) else Reason.CHANNEL_MOVED
        return PublishResult(False, reason=reason, retryable=True, maybe_stored=maybe_stored)

    def _pump(self, now_ms: int, effects: Effects) -> None:
        """Send every replica what it is missing, within its in-flight window."""
        if self.state is not RoleState.SERVING:
            return
        for replica in self.replicas.values():
            if replica.fenced_out or now_ms - replica.refused_ms < self.config.append_timeout_ms:
                continue
            while replica.next <= self.last and len(replica.inflight) < self.config.append_inflight_max:
                if replica.next - 1 < self.tail_base:
                    self._backfill(replica, now_ms, effects)
                    break
                first = replica.next
                end = min(self.last, first + self.config.append_entries_max - 1)
                end = max(end, self.tail_batch_last[end - self.tail_base - 1])  # whole batches only
                prev_epoch = self.epoch_at(first - 1)
                invariant(prev_epoch is not None, "prev within memory")
                assert prev_epoch is not None
                self._send_append(replica, Position(first - 1, prev_epoch), self._entries(first, end), now_ms, effects)

    def _send_append(
        self,
        replica: ReplicaView,
        prev: Position,
        entries: tuple[Entry, ...],
        now_ms: int,
        effects: Effects,
        *,
        from_base: bool = False,
    ) -> None:
        sequence = self._next_sequence()
        end = prev.serial + len(entries)
        replica.inflight[sequence] = (now_ms, end)
        replica.next = end + 1
        replica.told_commit, replica.sent_ms = self.commit, now_ms
        request = AppendRequest(
            self.channel, self.epoch, prev, entries, sequence, self.commit, from_base, now_ms + self.wall_offset_ms
        )
        effects.sends.append(StoreSend(replica.name, request))

    def _backfill(self, replica: ReplicaView, now_ms: int, effects: Effects) -> None:
        """`replica` needs entries older than our memory: read them from a replica that matches."""
        if any(read.target == replica.name for read in self.reads.values()):
            return
        first = replica.next
        sources = [r for r in self.replicas.values() if r is not replica and r.match >= first]
        if not sources:
            return  # no replica is known to match that far yet; the next tick asks again
        source = max(sources, key=lambda r: r.match)
        after = max(0, first - 2)  # include the entry before `first`: it is the append's prev
        limit = min(self.config.read_entries_max, min(source.match, self.tail_base) - after)
        sequence = self._send_read("backfill", source.name, after, limit, first, now_ms, effects)
        self.reads[sequence].target = replica.name

    def _on_backfill_read(self, read: ReadInFlight, reply: ReadReply, now_ms: int, effects: Effects) -> None:
        replica = self.replicas[read.target]
        first = read.owner
        entries, damaged = self._verified(read.after_serial, reply)
        if damaged:
            self._note_damage(self.replicas[read.replica], damaged, "read", effects)
        if replica.next != first:
            return  # the replica's needs moved on: the next pump asks again
        if reply.base.serial > read.after_serial:
            # The source dropped what the replica lacks: start the replica over from the source's base
            # (committed), then catch it up from there.
            if not entries or entries[0].serial == reply.base.serial + 1:
                self._send_append(replica, reply.base, entries, now_ms, effects, from_base=True)
            self._pump(now_ms, effects)
            return
        if not entries or entries[0].serial != read.after_serial + 1:
            return
        if first >= 2:
            prev, entries = entries[0].position, entries[1:]
        else:
            prev = Position(0, 0)
        if entries:
            self._send_append(replica, prev, entries, now_ms, effects)
        self._pump(now_ms, effects)

    def _on_append_reply(
        self, replica_name: str, request: AppendRequest, reply: AppendReply, now_ms: int, effects: Effects
    ) -> None:
        replica = self.replicas.get(replica_name)
        invariant(replica is not None, f"an append reply from {replica_name}, not one of our replicas")
        assert replica is not None
        replica.inflight.pop(request.sequence, None)
        replica.unreachable = False
        if reply.damaged:
            self._note_damage(replica, reply.damaged, "reported by the replica", effects)
        if reply.status is AppendStatus.OK:
            invariant(reply.match_serial <= self.last, "a replica cannot match beyond our log")
            self.trimmed_through = max(self.trimmed_through, reply.base.serial)
            holds = min(reply.match_serial, reply.damaged - 1) if reply.damaged else reply.match_serial
            if not reply.damaged and replica.damaged and holds >= replica.damaged:
                replica.damaged = 0  # rewritten: the replica knows of no damage up to here
            if holds > replica.match:
                replica.match = holds
                self._advance_commit(now_ms, effects)
        elif reply.status is AppendStatus.FENCED and reply.fence_epoch > self.epoch:
            if self._fenced_out(replica, reply.fence_epoch, effects):
                return
        elif reply.status is AppendStatus.MISMATCH:
            if request.sequence > replica.reset_sequence:
                self._rewind(replica, request, reply, effects)
        else:
            effects.events.append(f"append refused {self.channel} {replica_name} {reply.status.value} {reply.detail}")
            if reply.status is AppendStatus.DATA_LOSS and not replica.conflicted:
                replica.conflicted = True  # it holds another entry at one of our (serial, epoch): say so once
                effects.replica_faults.append(ReplicaFault(self.channel, replica_name, "conflict", reply.detail))
            self._reset(replica)
            replica.refused_ms = now_ms  # sent again after append_timeout_ms, not at once in a loop
        self._pump(now_ms, effects)

    def _rewind(self, replica: ReplicaView, request: AppendRequest, reply: AppendReply, effects: Effects) -> None:
        """Move `replica.next` back to where its log may agree with ours (never below its match)."""
        if request.prev.serial <= replica.match:
            # A stale refusal: a later reply already showed the replica holds `prev`. (A replica
            # that lost synced entries would break G1's premise; it is repaired by hand.)
            return
        if reply.conflict_epoch == 0:
            next_serial = reply.last.serial + 1
        else:
            ours = self._last_serial_with_epoch(reply.conflict_epoch, request.prev.serial)
            next_serial = ours + 1 if ours is not None else reply.conflict_first_serial
        next_serial = min(next_serial, request.prev.serial)
        replica.next = max(next_serial, replica.match + 1, 1)
        replica.inflight.clear()
        replica.reset_sequence = self._sequence

    def _last_serial_with_epoch(self, epoch: int, below: int) -> int | None:
        """The last serial < `below` of ours with `epoch`, if our memory shows it.

        Epochs never decrease along a log, so a binary search over the tail finds it.
        """
        low, high = 0, min(below - 1, self.last) - self.tail_base  # tail indexes [low, high)
        while low < high:
            middle = (low + high) // 2
            if self.tail[middle].epoch <= epoch:
                low = middle + 1
            else:
                high = middle
        if low > 0 and self.tail[low - 1].epoch == epoch:
            return self.tail_base + low
        if low == 0 and self.tail_base_epoch == epoch and self.tail_base > 0:
            return self.tail_base
        return None

    def _fenced_out(self, replica: ReplicaView, fence_epoch: int, effects: Effects) -> bool:
        """`replica` holds a fence above our epoch. That proves a newer owner only once a quorum says
        so: a newer owner must fence a quorum before it can do anything, and then no quorum is left
        for us. One replica alone (a corrupted fence, a takeover that fenced it and died) cannot
        veto us; we go on with the others, which is safe for the same reason as going on without a
        replica that does not answer: every commit still needs a quorum at our epoch."""
        if not replica.fenced_out:
            replica.fenced_out = fence_epoch
            detail = f"its fence {fence_epoch} is above our epoch {self.epoch}"
            effects.replica_faults.append(ReplicaFault(self.channel, replica.name, "fenced_out", detail))
        fenced = sum(1 for other in self.replicas.values() if other.fenced_out)
        if fenced > len(self.replicas) - self.quorum:
            self._stop(Reason.FENCED, effects)
            return True
        self._reset(replica)  # nothing more is sent to it: it would refuse everything at our epoch
        self._fail_without_quorum(effects)
        return False

    def _quorum_unreachable(self) -> bool:
        unreachable = sum(1 for replica in self.replicas.values() if replica.unreachable or replica.fenced_out)
        return unreachable > len(self.replicas) - self.quorum

    def _mark_unreachable(self, replica: ReplicaView, effects: Effects) -> None:
        """Note a replica as unreachable; when that leaves no quorum, fail what waits for one.

        The publishes waiting fail with a retryable QUORUM_UNAVAILABLE (maybe stored: their entries
        stay in our log and may still commit, which a retry with the same ids then finds).
        """
        replica.unreachable = True
        self._fail_without_quorum(effects)

    def _fail_without_quorum(self, effects: Effects) -> None:
        if not self._quorum_unreachable():
            return
        for pending in self.pending:
            result = PublishResult(False, reason=Reason.QUORUM_UNAVAILABLE, retryable=True, maybe_stored=True)
            effects.results.append(PublishAnswer(pending.token, result))
        self.pending.clear()

    def _probe(self, replica: ReplicaView, now_ms: int, effects: Effects) -> None:
        """An empty append to an unreachable replica that has nothing to catch up: any reply clears it."""
        if now_ms - replica.probed_ms < self.config.append_timeout_ms:
            return
        replica.probed_ms = now_ms
        self._send_empty_append(replica, now_ms, effects)

    def _send_empty_append(self, replica: ReplicaView, now_ms: int, effects: Effects) -> None:
        """An append of nothing after our last entry: a probe, or a commit notice."""
        prev_epoch = self.epoch_at(self.last)
        invariant(prev_epoch is not None, "our last entry is in memory")
        assert prev_epoch is not None
        self._send_append(replica, Position(self.last, prev_epoch), (), now_ms, effects)

    def _advance_commit(self, now_ms: int, effects: Effects) -> None:
        matches = [replica.match for replica in self.replicas.values()]
        commit = advance_commit(self.commit, matches, self.quorum, self.epoch_start_serial)
        if commit == self.commit:
            return
        invariant(commit <= self.last, "commit within the log")
        self.commit = commit
        while self.pending and self.pending[0].last_serial <= commit:
            done = self.pending.popleft()
            if "ack-before-quorum" not in self.bugs:
                effects.results.append(PublishAnswer(done.token, PublishResult(True, done.serials, done.duplicates)))
        self._feed_subscribers(now_ms, effects)
        self._answer_histories(now_ms, effects)
        self._trim_tail()
