"""Takeover and recovery (rules 1–3, and 8 for what a takeover adopts): fence every replica, adopt the
most up-to-date log of a quorum's answers, read its suffix whole and its dedup range as ids, and serve."""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence

from ringcast.reasons import Reason
from services.core.entries import Entry, Position
from services.core.invariants import invariant
from services.core.quorum import most_up_to_date
from services.core.replica_log import FenceReply, ReadReply
from services.core.role.base import ReadInFlight, RoleBase
from services.core.role.messages import (
    Effects,
    FenceRequest,
    StoreSend,
    TakeoverStep,
)
from services.core.role.states import RoleState


class Takeover(RoleBase):
    def _start(self, effects: Effects, trigger: str = "request") -> None:
        """Begin the takeover: fence every replica at our epoch. `trigger` says why (for metrics, traces)."""
        self.trigger = trigger
        fence_epoch = 0 if "skip-fence" in self.bugs else self.epoch
        for name in self.config.replicas:
            effects.sends.append(StoreSend(name, FenceRequest(self.channel, fence_epoch)))
        effects.events.append(f"takeover {self.channel} epoch={self.epoch} fencing")
        details: dict[str, int | str] = {"replicas": len(self.config.replicas), "trigger": trigger}
        effects.takeovers.append(TakeoverStep(self.channel, self.epoch, "fencing", details))

    def _on_fence_reply(self, replica: str, reply: FenceReply, now_ms: int, effects: Effects) -> None:
        invariant(replica in self.replicas, f"a fence reply from {replica}, not one of our replicas")
        if reply.fenced and reply.fence_epoch > self.epoch:
            self._fenced_out(self.replicas[replica], reply.fence_epoch, effects)
            return
        invariant(reply.last.epoch < self.epoch or "skip-fence" in self.bugs, "no entry at our epoch yet")
        answering = self.replicas[replica]
        answering.fence_last = reply.last  # kept while recovering too: a re-adoption may need it
        if reply.damaged:
            self._note_damage(answering, reply.damaged, "reported by the replica", effects)
        self.progress_ms = now_ms
        if self.state is RoleState.FENCING:
            self._adopt(now_ms, effects)

    def _adopt(self, now_ms: int, effects: Effects) -> None:
        """Once a quorum answered the fence: adopt the most up-to-date log among the answers (rule 2).

        Any quorum of answers will do (all of them hold our fence), so replicas that reported damage
        are left out when the others still make a quorum, and a replica whose recovery read failed
        its checks is left out for the rest of this takeover; without a quorum of others we wait.
        """
        needed = 1 if "recover-from-one" in self.bugs else self.quorum
        answered = [r for r in self.replicas.values() if r.fence_last is not None and not r.unreadable]
        if len(answered) < needed:
            return
        sound = [r for r in answered if not r.damaged]
        if len(sound) >= needed:
            answered = sound
        self._enter(RoleState.RECOVERING)
        effects.takeovers.append(TakeoverStep(self.channel, self.epoch, "recovering", {"fence_answers": len(answered)}))
        lasts = [(r.name, r.fence_last) for r in answered if r.fence_last is not None]
        if "adopt-highest-epoch-per-serial" in self.bugs:
            sources = lasts
        else:
            # Replicas with the same last position hold the same log; which one to read from among
            # them is free, so channels take turns (by name) instead of all reading the first.
            turn = zlib.crc32(self.channel.encode()) % len(lasts)
            adopted = most_up_to_date(lasts[turn:] + lasts[:turn])
            sources = [(adopted, self.replicas[adopted].fence_last)]  # type: ignore[list-item]
        self._begin_recovery(sources, now_ms, effects)

    def _begin_recovery(self, sources: Sequence[tuple[str, Position | None]], now_ms: int, effects: Effects) -> None:
        """Read the adopted log's suffix: from `recovery_start` (its entry gives our base epoch)
        whole, and the dedup range before it as ids only."""
        targets = {name: last for name, last in sources if last is not None}
        invariant(len(targets) == len(sources), "every source answered its fence")
        self.recovered_last = max(last.serial for last in targets.values())
        full = min(self.config.recovery_full_entries_max, self.config.recovery_read_entries_max)
        self.recovery_start = max(0, self.recovered_last - full)
        self.recovery_ids_from = max(0, self.recovered_last - self.config.recovery_read_entries_max)
        if self.recovered_last == 0:
            self._install_recovered([], now_ms, effects)
            return
        after = max(0, self.recovery_start - 1)
        for name, target in targets.items():
            self.recovery[name] = []
            self.recovery_target[name] = target
            if target.serial > after:
                self._send_read("recover", name, after, target.serial - after, 0, now_ms, effects)
        if self.recovery_ids_from < self.recovery_start:
            self.recovery_ids_source = max(targets, key=lambda name: (targets[name].epoch, targets[name].serial))
            self._send_ids_read(now_ms, effects)

    def _send_ids_read(self, now_ms: int, effects: Effects) -> None:
        after = self.recovery_ids_from + len(self.recovery_ids)
        limit = min(self.config.recovery_ids_per_read, self.recovery_start - after)
        self._send_read("recover-ids", self.recovery_ids_source, after, limit, 0, now_ms, effects, ids_only=True)

    def _on_recovery_ids_read(self, read: ReadInFlight, reply: ReadReply, now_ms: int, effects: Effects) -> None:
        target = self.recovery_target.get(read.replica)
        after = read.after_serial
        if target is not None and reply.base.serial > after:
            # Trimmed: those entries are older than any dedup window (stores keep that much).
            self.recovery_ids = []
            self.recovery_ids_from = after = min(reply.base.serial, self.recovery_start)
        if target is None:
            self._stop(Reason.RECOVERY_READ_FAILED, effects)
            return
        if reply.damaged or (not reply.ids and after < self.recovery_start):
            self._recovery_source_damaged(read.replica, reply.damaged or after + 1, now_ms, effects)
            return
        if reply.last.serial < target.serial:
            self._stop(Reason.FENCED, effects)  # the adopted log got shorter under us: a later epoch is writing
            return
        self.recovery_ids.extend(reply.ids[: self.recovery_start - after])
        self.progress_ms = now_ms
        if self.recovery_ids_from + len(self.recovery_ids) < self.recovery_start:
            self._send_ids_read(now_ms, effects)
            return
        self._install_if_recovered(now_ms, effects)

    def _on_recovery_read(self, read: ReadInFlight, reply: ReadReply, now_ms: int, effects: Effects) -> None:
        name = read.replica
        target = self.recovery_target[name]
        got = self.recovery[name]
        base = reply.base
        if base.serial > target.serial or (base.serial == target.serial and base.epoch != target.epoch):
            self._stop(Reason.FENCED, effects)  # the adopted log moved on under us: a later epoch is writing
            return
        trimmed = base.serial > read.after_serial
        if trimmed and (got or name in self.recovery_base):
            self._stop(Reason.RECOVERY_READ_FAILED, effects)  # trimmed between our reads: start the takeover again
            return
        start = base.serial if trimmed else read.after_serial
        entries, damaged = self._verified(read.after_serial, reply)
        if (damaged and damaged <= target.serial) or (start < target.serial and not entries):
            self._recovery_source_damaged(name, damaged or start + 1, now_ms, effects)
            return
        entries = tuple(entry for entry in entries if entry.serial <= target.serial)
        if reply.last.serial < target.serial or any(
            entry.serial == target.serial and entry.epoch != target.epoch for entry in entries
        ):
            self._stop(Reason.FENCED, effects)  # the adopted log changed under us: a later epoch is writing
            return
        if trimmed:
            self.recovery_base[name] = base
        got.extend(entries)
        self.progress_ms = now_ms
        have = got[-1].serial if got else base.serial
        if have < target.serial:
            self._send_read("recover", name, have, target.serial - have, 0, now_ms, effects)
            return
        self._install_if_recovered(now_ms, effects)

    def _recovery_source_damaged(self, name: str, serial: int, now_ms: int, effects: Effects) -> None:
        """A recovery read from `name` came back with a hole, a bad checksum or a wrong entry: never
        adopt what cannot be read whole. Leave that replica out of this takeover, and choose again
        among the other answers (or wait for one more)."""
        replica = self.replicas[name]
        replica.unreadable = True
        self._note_damage(replica, serial, "read during takeover", effects)
        for sequence in [s for s, r in self.reads.items() if r.purpose in ("recover", "recover-ids")]:
            del self.reads[sequence]
        self.recovery.clear()
        self.recovery_target.clear()
        self.recovery_base.clear()
        self.recovery_ids, self.recovery_ids_source = [], ""
        self._enter(RoleState.FENCING)
        self._adopt(now_ms, effects)

    def _install_if_recovered(self, now_ms: int, effects: Effects) -> None:
        whole = all(self._recovered_enough(name) for name in self.recovery)
        ids = self.recovery_ids_from + len(self.recovery_ids) >= self.recovery_start
        if whole and ids and not any(r.purpose in ("recover", "recover-ids") for r in self.reads.values()):
            self._install_recovered(self._merge_recovered(), now_ms, effects)

    def _recovered_enough(self, name: str) -> bool:
        """Whether what we read of `name` reaches its target (true, too, when nothing was to be read;
        reads still in flight are checked apart)."""
        entries, base = self.recovery[name], self.recovery_base.get(name)
        if entries:
            return entries[-1].serial >= self.recovery_target[name].serial
        return base is None or base.serial >= self.recovery_target[name].serial

    def _merge_recovered(self) -> list[Entry]:
        """The adopted suffix. With the `adopt-highest-epoch-per-serial` bug: a per-serial merge."""
        if len(self.recovery) == 1:
            (entries,) = self.recovery.values()
            return entries
        by_serial: dict[int, Entry] = {}
        for entries in self.recovery.values():
            for entry in entries:
                held = by_serial.get(entry.serial)
                if held is None or entry.epoch > held.epoch:
                    by_serial[entry.serial] = entry
        merged: list[Entry] = []
        first = min(by_serial)
        while first + len(merged) in by_serial:
            merged.append(by_serial[first + len(merged)])
        return merged

    def _install_recovered(self, entries: list[Entry], now_ms: int, effects: Effects) -> None:
        """Make the adopted suffix our log, rewrite its last entry at our epoch, and serve."""
        trimmed_base = self.recovery_base.get(next(iter(self.recovery))) if len(self.recovery) == 1 else None
        if trimmed_base is not None:
            # The source had dropped everything up to here: committed, and where our log starts.
            self.tail_base, self.tail_base_epoch = trimmed_base.serial, trimmed_base.epoch
            self.commit = self.trimmed_through = trimmed_base.serial
            suffix = entries
        elif entries and self.recovery_start > 0:
            base, suffix = entries[0], entries[1:]
            self.tail_base, self.tail_base_epoch = base.serial, base.epoch
            invariant(bool(suffix), "a suffix read from after its base has entries")
        else:
            suffix = entries
        if suffix:
            invariant(suffix[0].serial == self.tail_base + 1, "adopted suffix follows its base")
            rewrite_from = suffix[-1].serial  # the last adopted entry: what moves commit to our epoch
            if "adopt-highest-epoch-per-serial" in self.bugs:
                # The merged suffix mixes logs, so the bug rewrites all of it past the common part.
                lasts = [r.fence_last.serial for r in self.replicas.values() if r.fence_last is not None]
                rewrite_from = max(min(lasts) + 1, suffix[0].serial)
            self.tail = [e if e.serial < rewrite_from else e.with_epoch(self.epoch) for e in suffix]
            self.tail_batch_last = [entry.serial for entry in self.tail]
            self.epoch_start_serial = min(rewrite_from, self.last)
        else:
            self.epoch_start_serial = self.last + 1  # nothing to rewrite: what we adopted is committed
        self.recovered_last = self.last
        tail_base = Position(self.tail_base, self.tail_base_epoch)
        matched_max = max(self.last - 1, 0) if suffix else self.last  # the rewritten entry matches nowhere yet
        for replica in self.replicas.values():
            replica.next = max(self.last, 1)
            fence_last = replica.fence_last
            if fence_last is not None and (_holds(entries, fence_last) or fence_last == tail_base):
                replica.match = min(fence_last.serial, matched_max)
                replica.next = replica.match + 1
            if replica.damaged and replica.match >= replica.damaged:
                replica.match = replica.damaged - 1  # rewritten from its first bad serial (rule 8)
                replica.next = replica.match + 1
        if "reset-dedup-on-takeover" not in self.bugs:
            # Ages relative to the newest message adopted, whatever our own wall clock says.
            newest_ms = max(
                [timestamp_ms for _, timestamp_ms in self.recovery_ids[-1:]]
                + [entry.message.timestamp_ms for entry in self.tail],
                default=0,
            )
            for offset, (message_id, timestamp_ms) in enumerate(self.recovery_ids):
                born_ms = now_ms - max(0, newest_ms - timestamp_ms)
                self.dedup.add(message_id, self.recovery_ids_from + 1 + offset, born_ms)
            for entry in self.tail:
                self.dedup.add(entry.message.id, entry.serial, now_ms - max(0, newest_ms - entry.message.timestamp_ms))
            self.dedup.expire(now_ms)
        self.recovery_ids = []
        self._enter(RoleState.SERVING)
        details: dict[str, int | str] = {
            "last": self.last,
            "adopted_entries": len(entries),
            "rewritten_at_epoch": self.last - self.epoch_start_serial + 1 if entries else 0,
            "dedup_ids": len(self.dedup),
            "trigger": self.trigger,
            "duration_ms": now_ms - self.started_ms,
        }
        effects.takeovers.append(TakeoverStep(self.channel, self.epoch, "serving", details))
        self.recovery.clear()
        self.recovery_target.clear()
        self.recovery_base.clear()
        effects.events.append(f"takeover {self.channel} epoch={self.epoch} serving last={self.last}")
        queued, self.queued = self.queued, deque()
        for token, messages in queued:
            self._publish(token, messages, now_ms, effects)
        self._pump(now_ms, effects)


def _holds(entries: Sequence[Entry], position: Position) -> bool:
    """True when `entries` (a contiguous run of a log) hold `position`; the origin always is."""
    if position.serial == 0:
        return True
    if not entries or not entries[0].serial <= position.serial <= entries[-1].serial:
        return False
    index = position.serial - entries[0].serial
    invariant(index < len(entries) and entries[index].serial == position.serial, "a run of a log is contiguous")
    return entries[index].epoch == position.epoch
