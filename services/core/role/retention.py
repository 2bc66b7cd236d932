"""Retention and memory bounds (rule 7): the in-memory tail's bound, and commit notices that let an idle
channel's replicas trim."""

from __future__ import annotations

from services.core.role.base import ReplicaView, RoleBase
from services.core.role.messages import (
    Effects,
)


class Retention(RoleBase):
    def _trim_tail(self) -> None:
        """Keep the in-memory log bounded; only committed entries are dropped."""
        excess = len(self.tail) - self.config.tail_entries_max
        if excess <= self.config.tail_entries_max // 4:
            return
        drop = min(excess, self.commit - self.tail_base)
        if drop <= 0:
            return
        self.tail_base_epoch = self.tail[drop - 1].epoch
        self.tail_base += drop
        del self.tail[:drop]
        del self.tail_batch_last[:drop]

    def commit_notice_owed(self, now_ms: int) -> bool:
        """Whether a replica is owed our commit point (`_notify_commit` would send something): a
        query, so that the node's sweep can ask every role it holds cheaply."""
        return any(self._owed_notice(replica, now_ms) for replica in self.replicas.values())

    def _owed_notice(self, replica: ReplicaView, now_ms: int) -> bool:
        return (
            replica.told_commit < self.commit
            and not replica.inflight
            and replica.next > self.last
            and not replica.unreachable
            and not replica.fenced_out
            and now_ms - replica.sent_ms >= self.config.commit_notice_ms
        )

    def _notify_commit(self, now_ms: int, effects: Effects) -> bool:
        """Tell each replica our commit point where the last append it got carried an older one and
        went out `commit_notice_ms` ago or more (an empty append): so an idle channel's last
        entries can be trimmed too. The node calls it on its sweep; True when something was sent."""
        sent = False
        for replica in self.replicas.values():
            if self._owed_notice(replica, now_ms):
                self._send_empty_append(replica, now_ms, effects)
                sent = True
        return sent
