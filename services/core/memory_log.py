"""The in-memory log engine: the simulator's store, and the reference the store contract tests compare
the durable engines to."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from services.core.entries import ORIGIN, Entry, Position
from services.core.invariants import invariant
from services.core.replica_log import base_advances, message_ids


class _ChannelLog:
    __slots__ = ("fence", "entries", "epochs", "base", "committed", "missing", "damaged")

    def __init__(self) -> None:
        self.fence = 0
        self.entries: list[Entry] = []  # serials base.serial + 1, base.serial + 2, ...
        self.epochs: list[int] = []  # entries[i].epoch, kept for bisect
        self.base = ORIGIN
        self.committed = 0
        self.missing: set[int] = set()  # serials lost at rest (`damage`): their slots hold nothing
        self.damaged = 0

    def drop_missing_tail(self) -> None:
        """A log ends with its last entry that is there (as a database's last row does)."""
        while self.entries and self.entries[-1].serial in self.missing:
            self.missing.discard(self.entries.pop().serial)
            self.epochs.pop()


class MemoryLogStorage:
    """An in-memory engine: the simulator's store, and the reference the contract tests compare to.

    With `journal` set, every mutation is also recorded there, so an adapter can replay exactly the
    mutations that reached "disk" onto another storage (the simulator's model of fsync).
    """

    def __init__(self, *, journal: list[tuple[str, str, object]] | None = None) -> None:
        self._logs: dict[str, _ChannelLog] = {}
        self.journal = journal

    def _log(self, channel: str) -> _ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _ChannelLog()
        return log

    def _record(self, kind: str, channel: str, argument: object) -> None:
        if self.journal is not None:
            self.journal.append((kind, channel, argument))

    def channels(self) -> list[str]:
        return sorted(self._logs)

    def channels_after(self, channel: str, count: int) -> list[str]:
        names = self.channels()
        start = bisect.bisect_right(names, channel)
        return names[start : start + max(count, 0)]

    def fence_of(self, channel: str) -> int:
        log = self._logs.get(channel)
        return log.fence if log else 0

    def set_fence(self, channel: str, epoch: int) -> None:
        log = self._log(channel)
        invariant(epoch >= log.fence, "fence never decreases")
        log.fence = epoch
        self._record("fence", channel, epoch)

    def base(self, channel: str) -> Position:
        log = self._logs.get(channel)
        return log.base if log else ORIGIN

    def committed(self, channel: str) -> int:
        log = self._logs.get(channel)
        return log.committed if log else 0

    def set_committed(self, channel: str, serial: int) -> None:
        log = self._log(channel)
        invariant(serial >= log.committed, "what is known committed stays known")
        log.committed = serial
        self._record("committed", channel, serial)

    def last(self, channel: str) -> Position:
        log = self._logs.get(channel)
        if not log:
            return ORIGIN
        return log.entries[-1].position if log.entries else log.base

    def epoch_at(self, channel: str, serial: int) -> int | None:
        if serial == 0:
            return 0
        log = self._logs.get(channel)
        if not log:
            return None
        if serial == log.base.serial:
            return log.base.epoch
        index = serial - log.base.serial - 1
        if index < 0 or index >= len(log.entries) or serial in log.missing:
            return None
        return log.epochs[index]

    def first_serial_of_epoch(self, channel: str, epoch: int) -> int:
        log = self._log(channel)
        index = bisect.bisect_left(log.epochs, epoch)
        if log.base.epoch == epoch and log.base.serial > 0:
            return log.base.serial
        invariant(index < len(log.epochs) and log.epochs[index] == epoch, "epoch is in the log")
        return log.base.serial + index + 1

    def truncate_after(self, channel: str, serial: int) -> None:
        log = self._log(channel)
        keep = max(serial - log.base.serial, 0)
        del log.entries[keep:]
        del log.epochs[keep:]
        log.missing = {missing for missing in log.missing if missing <= serial}
        log.drop_missing_tail()
        self._record("truncate", channel, serial)

    def drop_through(self, channel: str, base: Position) -> None:
        log = self._log(channel)
        invariant(base_advances(base, log.base), "the base only moves forward")
        drop = base.serial - log.base.serial
        del log.entries[:drop]
        del log.epochs[:drop]
        log.base = base
        log.missing = {missing for missing in log.missing if missing > base.serial}
        self._record("drop", channel, base)

    def damaged(self, channel: str) -> int:
        log = self._logs.get(channel)
        return log.damaged if log else 0

    def set_damaged(self, channel: str, serial: int) -> None:
        self._log(channel).damaged = serial
        self._record("damaged", channel, serial)

    def remove(self, channel: str, serial: int) -> None:
        log = self._log(channel)
        index = serial - log.base.serial - 1
        invariant(0 <= index < len(log.entries), "a removed entry is in the log")
        log.missing.add(serial)
        log.drop_missing_tail()
        self._record("remove", channel, serial)

    def fill(self, channel: str, entries: Sequence[Entry]) -> None:
        log = self._log(channel)
        for entry in entries:
            invariant(entry.serial in log.missing, "only missing entries are filled")
            index = entry.serial - log.base.serial - 1
            log.entries[index] = entry
            log.epochs[index] = entry.epoch
            log.missing.discard(entry.serial)
        self._record("fill", channel, tuple(entries))

    def damage(self, channel: str, serial: int, how: str) -> None:
        """Damage at rest, for tests and the simulator (no rule calls it): the entry at `serial`
        goes "missing" (as a deleted row) or turns "corrupt" (its checksum no longer matches)."""
        log = self._log(channel)
        index = serial - log.base.serial - 1
        invariant(0 <= index < len(log.entries) and serial not in log.missing, "damage hits a held entry")
        if how == "missing":
            log.missing.add(serial)
            log.drop_missing_tail()
        else:
            entry = log.entries[index]
            log.entries[index] = Entry(entry.serial, entry.epoch, entry.message, entry.checksum ^ 1)

    def extend(self, channel: str, entries: Sequence[Entry]) -> None:
        log = self._log(channel)
        for entry in entries:
            invariant(entry.serial == log.base.serial + len(log.entries) + 1, "log stays contiguous")
            invariant(entry.epoch >= (log.epochs[-1] if log.epochs else log.base.epoch), "epochs never decrease")
            log.entries.append(entry)
            log.epochs.append(entry.epoch)
        self._record("extend", channel, tuple(entries))

    def read(self, channel: str, after_serial: int, limit: int) -> list[Entry]:
        log = self._logs.get(channel)
        if not log:
            return []
        start = max(after_serial - log.base.serial, 0)
        if not log.missing:
            return log.entries[start : start + max(limit, 0)]
        found: list[Entry] = []
        for entry in log.entries[start:]:
            if len(found) >= limit:
                break
            if entry.serial not in log.missing:
                found.append(entry)
        return found

    def read_ids(self, channel: str, after_serial: int, limit: int) -> list[tuple[int, str, int]]:
        return message_ids(self.read(channel, after_serial, limit))

    def replay(self, journal: Sequence[tuple[str, str, object]]) -> None:
        """Apply mutations recorded by another storage's journal, in order."""
        apply = {
            "fence": self.set_fence,
            "committed": self.set_committed,
            "truncate": self.truncate_after,
            "drop": self.drop_through,
            "extend": self.extend,
            "damaged": self.set_damaged,
            "remove": self.remove,
            "fill": self.fill,
        }
        for kind, channel, argument in journal:
            apply[kind](channel, argument)  # type: ignore[operator]

    def clone(self, *, journal: list[tuple[str, str, object]] | None = None) -> MemoryLogStorage:
        """A deep-enough copy (entries are immutable), recording into `journal` from now on."""
        copy = MemoryLogStorage(journal=journal)
        for channel, log in self._logs.items():
            copied = copy._log(channel)
            copied.fence, copied.entries, copied.epochs = log.fence, list(log.entries), list(log.epochs)
            copied.base, copied.committed = log.base, log.committed
            copied.missing, copied.damaged = set(log.missing), log.damaged
        return copy
