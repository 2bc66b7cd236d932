"""The store contract, randomized: each engine against the in-memory reference, reply for reply."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence

import pytest

from services.core.entries import ORIGIN, Entry, Position
from services.core.memory_log import MemoryLogStorage
from services.core.replica_log import (
    AppendReply,
    FenceReply,
    ReadReply,
    ReplicaLog,
    Retention,
)
from tests.core.store_contract.harness import (
    Engine,
    channels,
    engine_state,
    make_message,
    whole_log_count,
    with_checksum,
)

# --------------------------------------------------------------------------------- randomized comparison


class _RandomRun:
    """Random owners taking over, publishing and appending (and misbehaving) on two channels.

    Each operation is applied to the engine under test and to an in-memory reference; replies must be
    identical. Operations are grouped into transactions of random size (as the server groups
    requests), and on engines with transactions some groups of mutations are rolled back, after which
    the engine must hold exactly what it held before.
    """

    epochs_max = 40

    def __init__(self, seed: int, engine: Engine) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.engine = engine
        self.subject = ReplicaLog(engine.storage)
        self.reference_storage = MemoryLogStorage()
        self.reference = ReplicaLog(self.reference_storage)
        self.owners: dict[str, dict[int, list[Entry]]] = {name: {} for name in channels}
        # The entries up to each channel's base, as the reference held them (or as the owner that
        # reset it had them): with the retained log, the whole log new owners adopt a prefix of.
        self.dropped: dict[str, list[Entry]] = {name: [] for name in channels}
        self.sender_log: list[Entry] = []
        self.messages = itertools.count(1)
        self.outcomes: set[str] = set()

    def _whole(self, name: str) -> list[Entry]:
        return self.dropped[name] + self.reference_storage.read(name, 0, whole_log_count)

    def run(self, steps: int) -> None:
        step = 0
        while step < steps:
            if self.engine.transactional and self.random.random() < 0.1:
                self._rolled_back_group(step)
                continue
            group_size = self.random.randint(1, 6)
            self.engine.begin()
            for _ in range(group_size):
                self._step(step)
                step += 1
            self.engine.commit()
            self._compare_holdings(step)

    def _compare_holdings(self, step: int) -> None:
        for name in channels:
            where = f"seed {self.seed}, step {step}, channel {name}"
            assert self.engine.storage.fence_of(name) == self.reference_storage.fence_of(name), where
            assert self.engine.storage.last(name) == self.reference_storage.last(name), where
            assert self.engine.storage.base(name) == self.reference_storage.base(name), where
            assert self.engine.storage.committed(name) == self.reference_storage.committed(name), where
            expected = self.reference_storage.read(name, 0, whole_log_count)
            assert self.engine.storage.read(name, 0, whole_log_count) == expected, where

    def _step(self, step: int) -> None:
        name = self.random.choice(channels)
        kinds = ["take_over", "publish", "append", "malformed", "read", "trim"]
        kind = self.random.choices(kinds, [1, 4, 6, 1, 2, 0.7])[0]
        operation = getattr(self, f"_{kind}")(name)
        if operation is None:
            return
        before = self._whole(name)
        base = self.reference_storage.base(name)
        expected = operation(self.reference)
        actual = operation(self.subject)
        assert actual == expected, f"seed {self.seed}, step {step}: {kind} on {name}"
        moved = self.reference_storage.base(name)
        if moved != base:
            known = before if len(before) >= moved.serial and before[moved.serial - 1].position == moved else []
            self.dropped[name] = (known or self.sender_log)[: moved.serial]
            self.outcomes.add("trimmed" if known else "reset")
        self._note(expected, before, self._whole(name))

    def _note(self, reply: object, before: list[Entry], after: list[Entry]) -> None:
        if isinstance(reply, FenceReply):
            self.outcomes.add("fenced" if reply.fenced else "fence")
        elif isinstance(reply, AppendReply):
            self.outcomes.add(reply.status.name)
            if reply.conflict_epoch:
                self.outcomes.add("conflict")
            if after[: len(before)] != before:
                self.outcomes.add("truncated")
        elif isinstance(reply, ReadReply) and reply.entries:
            self.outcomes.add("read")

    def _take_over(self, name: str) -> Callable[[ReplicaLog], FenceReply] | None:
        owners = self.owners[name]
        unused = [epoch for epoch in range(1, self.epochs_max + 1) if epoch not in owners]
        if not unused:
            return None
        # Mostly the next epoch up, as rings advance; sometimes an older one: an owner already stale.
        newest = max(owners, default=0)
        newer = [epoch for epoch in unused if epoch > newest]
        older = [epoch for epoch in unused if epoch < newest]
        stale = older and (not newer or self.random.random() < 0.25)
        # Rings skip versions, so newer epochs leave gaps that stale owners may show up with later.
        epoch = self.random.choice(older) if stale else self.random.choice(newer[:3])
        # The new owner adopts a prefix of this replica's log (as if another replica of its fence
        # quorum were shorter), keeping only epochs it could have seen, and rewrites its tail.
        held = self._whole(name)
        adopted = [entry for entry in held[: self.random.randint(0, len(held))] if entry.epoch <= epoch]
        rewrite = self.random.randint(1 if adopted else 0, len(adopted))
        for index in range(len(adopted) - rewrite, len(adopted)):
            adopted[index] = adopted[index].with_epoch(epoch)
        owners[epoch] = adopted
        return lambda replica: replica.fence(name, epoch)

    def _publish(self, name: str) -> None:
        owners = self.owners[name]
        if owners:
            epoch = self._pick_owner(sorted(owners))
            owner_log = owners[epoch]
            for _ in range(self.random.randint(1, 3)):
                owner_log.append(Entry.make(len(owner_log) + 1, epoch, make_message("random", next(self.messages))))

    def _pick_owner(self, epochs: Sequence[int]) -> int:
        """Mostly the newest owner (the one that can make progress); sometimes a stale one."""
        return epochs[-1] if self.random.random() < 0.75 else self.random.choice(epochs)

    def _draw_append(self, name: str, length_min: int) -> tuple[int, Position, list[Entry]] | None:
        candidates = sorted(epoch for epoch, owned in self.owners[name].items() if len(owned) >= length_min)
        if not candidates:
            return None
        epoch = self._pick_owner(candidates)
        owner_log = self.owners[name][epoch]
        start = self.random.randint(0, len(owner_log) - length_min)
        length = self.random.randint(length_min, len(owner_log) - start)
        prev = owner_log[start - 1].position if start else ORIGIN
        return epoch, prev, owner_log[start : start + length]

    def _append(self, name: str) -> Callable[[ReplicaLog], AppendReply] | None:
        drawn = self._draw_append(name, 0)
        if drawn is None:
            return None
        epoch, prev, entries = drawn
        owner_log = self.owners[name][epoch]
        self.sender_log = owner_log
        commit = self.random.randint(len(owner_log) // 2, len(owner_log))
        from_base = self.random.random() < 0.1
        return lambda replica: replica.append(name, epoch, prev, entries, commit=commit, from_base=from_base)

    def _trim(self, name: str) -> Callable[[ReplicaLog], int]:
        retention = Retention(
            age_ms=10**15,
            entries_max=self.random.choice([0, 3, 8, 20]),
            keep_recent_ms=0,
            scan_max=self.random.randint(1, 8),
        )
        return lambda replica: replica.trim(name, 0, retention)

    def _malformed(self, name: str) -> Callable[[ReplicaLog], AppendReply] | None:
        drawn = self._draw_append(name, 1)
        if drawn is None:
            return None
        epoch, prev, entries = drawn
        index = self.random.randrange(len(entries))
        entry = entries[index]
        kind = self.random.choice(["checksum", "serial", "epoch-above", "prev-above"])
        if kind == "checksum":
            entries = [*entries[:index], with_checksum(entry, entry.checksum ^ 0x80)]
        elif kind == "serial":
            entries = [*entries[:index], Entry.make(entry.serial + 1, entry.epoch, entry.message)]
        elif kind == "epoch-above":
            entries = [*entries[:index], Entry.make(entry.serial, epoch + 1, entry.message)]
        else:
            prev = Position(prev.serial, epoch + 1)
        return lambda replica: replica.append(name, epoch, prev, entries)

    def _read(self, name: str) -> Callable[[ReplicaLog], ReadReply]:
        after_serial = self.random.randint(-1, 30)
        limit = self.random.randint(0, 12)
        return lambda replica: replica.read(name, after_serial, limit)

    def _rolled_back_group(self, step: int) -> None:
        """Fences and appends applied to the engine only, then rolled back: nothing may remain."""
        before = engine_state(self.engine)
        self.engine.begin()
        for _ in range(self.random.randint(1, 4)):
            name = self.random.choice(channels)
            self.subject.fence(name, self.random.randint(1, self.epochs_max + 2))
            drawn = self._draw_append(name, 0)
            if drawn is not None:
                epoch, prev, entries = drawn
                self.subject.append(name, epoch, prev, entries)
        self.engine.rollback()
        assert engine_state(self.engine) == before, f"seed {self.seed}, step {step}: rollback left something behind"
        self.outcomes.add("rolled back")


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_give_the_reference_replies_and_logs(new_engine: Callable[[], Engine], seed: int) -> None:
    engine = new_engine()
    run = _RandomRun(seed, engine)
    run.run(steps=600)
    run._compare_holdings(600)
    # The run must have reached every kind of answer, or it proves little.
    expected = {"fence", "fenced", "OK", "FENCED", "MISMATCH", "conflict", "truncated", "read", "trimmed", "reset"}
    expected |= {"rolled back"} if engine.transactional else set()
    assert expected <= run.outcomes, f"seed {seed}: never reached {sorted(expected - run.outcomes)}"
    assert run.outcomes & {"CORRUPT", "INVALID"}
