"""The dedup window of a channel role: message id → serial for the recent part of its log."""

from __future__ import annotations

from collections import deque


class DedupWindow:
    """Message id → serial for the recent part of the log, bounded by age and by count.

    Ages are kept on the role's monotonic clock (`now_ms`), never read off a wall clock: an id is
    added with the monotonic time it was "born" at, and forgotten `window_ms` after it. An id a
    takeover rebuilds is born as much before the takeover as its message is older than the newest
    message adopted, so the window holds whatever this node's wall clock says (a node ahead by
    80 days must not forget every id it adopts: a retry would then be stored twice).
    """

    def __init__(self, window_ms: int, entries_max: int) -> None:
        self.window_ms = window_ms
        self.entries_max = entries_max
        self._serial_by_id: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._serial_by_id)

    def get(self, message_id: str) -> int | None:
        return self._serial_by_id.get(message_id)

    def add(self, message_id: str, serial: int, born_ms: int) -> None:
        """Remember `message_id` at `serial`, as of monotonic time `born_ms`."""
        self._serial_by_id[message_id] = serial
        self._order.append((born_ms, message_id))
        while len(self._order) > self.entries_max:
            self._forget_oldest()

    def expire(self, now_ms: int) -> None:
        """Forget the ids born more than the window before monotonic time `now_ms`."""
        horizon = now_ms - self.window_ms
        while self._order and self._order[0][0] < horizon:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        _, message_id = self._order.popleft()
        self._serial_by_id.pop(message_id, None)
