"""Subscribers and history reads (rules 4, 7, 8): committed entries in serial order, from memory or read
from a replica that matches, every reply checked, and explicit gaps where retention trimmed."""

from __future__ import annotations

from ringcast.reasons import Reason
from services.core.entries import Entry
from services.core.replica_log import ReadReply
from services.core.role.base import ReadInFlight, ReadPurpose, RoleBase, Subscriber
from services.core.role.messages import (
    Delivery,
    Effects,
    HistoryAnswer,
    HistoryResult,
    SubscriberDelivery,
)
from services.core.role.states import RoleState


class Reads(RoleBase):
    def _subscribe(self, token: int, after_serial: int, now_ms: int, effects: Effects) -> None:
        """Deliver every committed entry after `after_serial`, in order, then live ones."""
        self.last_activity_ms = now_ms
        if self.state is RoleState.STOPPED:
            effects.deliveries.append(SubscriberDelivery(token, Delivery(end_reason=Reason.CHANNEL_MOVED)))
            return
        if token not in self.subscribers and len(self.subscribers) >= self.config.subscribers_max:
            effects.deliveries.append(SubscriberDelivery(token, Delivery(end_reason=Reason.TOO_MANY_SUBSCRIBERS)))
            return
        self.subscribers[token] = Subscriber(max(after_serial, 0) + 1)
        self._feed_subscribers(now_ms, effects)

    def unsubscribe(self, token: int) -> None:
        self.subscribers.pop(token, None)

    def _visible(self) -> int:
        """The last serial subscribers may see: the commit point (or the log end, when buggy)."""
        return self.last if "deliver-uncommitted" in self.bugs else self.commit

    def _feed_subscribers(self, now_ms: int, effects: Effects) -> None:
        if self.state is not RoleState.SERVING:
            return
        visible = self._visible()
        commit_known = self.commit >= self.recovered_last  # then no client has seen a serial above it
        beyond: list[int] = []
        for token, subscriber in self.subscribers.items():
            if subscriber.next_serial > visible + 1 and commit_known:
                beyond.append(token)  # it would wait for serials it skips: say so instead (G6)
                continue
            if subscriber.next_serial <= self.trimmed_through and not subscriber.read_sequence:
                subscriber.next_serial = self.trimmed_through + 1
                effects.deliveries.append(SubscriberDelivery(token, Delivery(gap_next_serial=subscriber.next_serial)))
            while subscriber.next_serial <= visible and not subscriber.read_sequence:
                first = subscriber.next_serial
                if first > self.tail_base:
                    end = min(visible, first + self.config.delivery_entries_max - 1)
                    effects.deliveries.append(SubscriberDelivery(token, Delivery(self._entries(first, end))))
                    subscriber.next_serial = end + 1
                else:
                    limit = min(self.tail_base, visible) - (first - 1)
                    subscriber.read_sequence = self._read_committed(
                        "subscriber", token, first - 1, limit, now_ms, effects
                    )
                    if not subscriber.read_sequence:
                        break  # no replica is known to match that far yet; the next tick tries again
        for token in beyond:
            del self.subscribers[token]
            effects.deliveries.append(SubscriberDelivery(token, Delivery(end_reason=Reason.CURSOR_BEYOND_END)))

    def _read_history(self, token: int, after_serial: int, limit: int, now_ms: int, effects: Effects) -> None:
        """Committed entries after `after_serial`, at most `limit` (bounded by read_entries_max)."""
        self.last_activity_ms = now_ms
        limit = max(0, min(limit, self.config.read_entries_max))
        if self.state is RoleState.STOPPED:
            effects.histories.append(HistoryAnswer(token, HistoryResult(reason=Reason.CHANNEL_MOVED)))
            return
        self.histories[token] = (max(after_serial, 0), limit)
        self._answer_histories(now_ms, effects)

    def _answer_histories(self, now_ms: int, effects: Effects) -> None:
        if self.state is not RoleState.SERVING or self.commit < self.recovered_last:
            return  # until our rewrite of the adopted log is on a quorum, commit is unknown
        for token, (asked_after, limit) in list(self.histories.items()):
            if any(read.owner == token and read.purpose == "history" for read in self.reads.values()):
                continue
            if asked_after > self.commit:  # beyond the end: not an empty page, which would hide the gap
                del self.histories[token]
                effects.histories.append(HistoryAnswer(token, HistoryResult(reason=Reason.CURSOR_BEYOND_END)))
                continue
            after = max(asked_after, self.trimmed_through)
            gap = after + 1 if after > asked_after else 0
            end = min(self.commit, after + limit)
            if after >= end:
                del self.histories[token]
                effects.histories.append(HistoryAnswer(token, HistoryResult((), gap_next_serial=gap)))
            elif after >= self.tail_base:
                del self.histories[token]
                effects.histories.append(
                    HistoryAnswer(token, HistoryResult(self._entries(after + 1, end), gap_next_serial=gap))
                )
            else:
                self._read_committed("history", token, after, min(end, self.tail_base) - after, now_ms, effects)

    def _read_committed(
        self, purpose: ReadPurpose, owner: int, after: int, limit: int, now_ms: int, effects: Effects
    ) -> int:
        """Read committed entries we no longer hold from the replica that matches us furthest."""
        source = max(self.replicas.values(), key=lambda r: r.match)
        limit = min(limit, self.config.read_entries_max, source.match - after)
        if limit <= 0:
            return 0
        return self._send_read(purpose, source.name, after, limit, owner, now_ms, effects)

    def _checked_committed(
        self, read: ReadInFlight, reply: ReadReply, effects: Effects
    ) -> tuple[tuple[Entry, ...], int] | None:
        """The reply's committed entries that can be trusted, with the serial they resume at when the
        replica no longer holds the first ones asked for (else 0); None when nothing in it can be
        used (the read is then made again, from a replica that matches: this one no longer does)."""
        gap = reply.base.serial + 1 if reply.base.serial > read.after_serial else 0
        entries, damaged = self._verified(read.after_serial, reply)
        if not entries and not gap and not damaged:
            damaged = max(read.after_serial, reply.base.serial) + 1  # nothing, where it should hold entries
        if damaged:
            self._note_damage(self.replicas[read.replica], damaged, "read", effects)
        entries = tuple(entry for entry in entries if entry.serial <= self.commit)
        if not entries and not gap:
            return None
        return entries, gap

    def _on_subscriber_read(self, read: ReadInFlight, reply: ReadReply, now_ms: int, effects: Effects) -> None:
        subscriber = self.subscribers.get(read.owner)
        if subscriber is None or subscriber.read_sequence == 0:
            return
        subscriber.read_sequence = 0
        checked = self._checked_committed(read, reply, effects)
        if checked and subscriber.next_serial == read.after_serial + 1:
            entries, gap = checked
            if entries or gap:
                effects.deliveries.append(SubscriberDelivery(read.owner, Delivery(entries, gap_next_serial=gap)))
                subscriber.next_serial = entries[-1].serial + 1 if entries else gap
        self._feed_subscribers(now_ms, effects)

    def _on_history_read(self, read: ReadInFlight, reply: ReadReply, now_ms: int, effects: Effects) -> None:
        if read.owner not in self.histories:
            return
        checked = self._checked_committed(read, reply, effects)
        if checked is None:
            return  # retried by the next call to _answer_histories
        entries, gap = checked
        asked_after, _ = self.histories.pop(read.owner)
        resumes_after = gap - 1 if gap else read.after_serial  # later than asked when trimmed
        gap = resumes_after + 1 if resumes_after > asked_after else 0
        effects.histories.append(HistoryAnswer(read.owner, HistoryResult(entries, gap_next_serial=gap)))
