"""The replica log rules against models: rule 3 against a naive reference (hypothesis), and a
stateful model of owners at distinct epochs writing one replica (services/core/replica_log.py)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.core.entries import ORIGIN, Entry, Message, Position
from services.core.memory_log import MemoryLogStorage
from services.core.replica_log import AppendStatus, ReplicaLog
from tests.core.test_store_log import held_entries, make_entries

channel = "orders"
other_channel = "chat:lobby"

# Large enough to read any log these tests build, in one call to the storage (which has no cap).
whole_log_count = 1_000_000


# Rule 3 against a naive reference, on a replica and an owner whose logs share a prefix then diverge.


def _reference_append(log: list[Entry], entries: Sequence[Entry]) -> list[Entry]:
    """Rule 3 written naively: walk the entries, skip the held ones, truncate at the first conflict."""
    result = list(log)
    for index, entry in enumerate(entries):
        if entry.serial <= len(result) and result[entry.serial - 1].epoch == entry.epoch:
            continue
        return result[: entry.serial - 1] + list(entries[index:])
    return result


nondecreasing_epochs = st.lists(st.integers(min_value=1, max_value=4), max_size=8).map(sorted)


@given(
    common_epochs=nondecreasing_epochs,
    replica_extra=st.integers(min_value=0, max_value=6),
    owner_shares=st.integers(min_value=0, max_value=6),
    owner_new=st.integers(min_value=0, max_value=4),
    data=st.data(),
)
def test_append_matches_the_naive_reference(
    common_epochs: list[int], replica_extra: int, owner_shares: int, owner_new: int, data: st.DataObject
) -> None:
    owner_epoch = 5
    # After the common part, earlier owners (epochs up to 4) wrote a tail this replica holds.
    floor = common_epochs[-1] if common_epochs else 1
    replica_tail_epochs = sorted(
        data.draw(st.lists(st.integers(floor, 4), min_size=replica_extra, max_size=replica_extra))
    )
    replica_log = make_entries(1, [*common_epochs, *replica_tail_epochs], tag="replica")
    # The owner holds the common part, a copy of some of the replica's tail, then its own entries at epoch 5.
    shared = replica_log[: len(common_epochs) + min(owner_shares, replica_extra)]
    owner_log = shared + make_entries(len(shared) + 1, [owner_epoch] * owner_new, tag="owner")

    storage = MemoryLogStorage()
    storage.set_fence(channel, data.draw(st.integers(min_value=max(floor, *replica_tail_epochs, 0), max_value=5)))
    storage.extend(channel, replica_log)
    replica = ReplicaLog(storage)
    start = data.draw(st.integers(min_value=0, max_value=len(owner_log)), label="prev index")
    end = data.draw(st.integers(min_value=start, max_value=len(owner_log)), label="end")
    prev = owner_log[start - 1].position if start else ORIGIN
    entries = owner_log[start:end]

    reply = replica.append(channel, owner_epoch, prev, entries)

    assert reply.fence_epoch == storage.fence_of(channel) == owner_epoch
    if prev.serial == 0 or (prev.serial <= len(replica_log) and replica_log[prev.serial - 1].epoch == prev.epoch):
        assert reply.status is AppendStatus.OK
        expected = _reference_append(replica_log, entries)
        assert held_entries(storage) == expected
        assert reply.match_serial == end
        assert held_entries(storage)[:end] == owner_log[:end]
        assert reply.last == (expected[-1].position if expected else ORIGIN)
    else:
        assert reply.status is AppendStatus.MISMATCH
        assert held_entries(storage) == replica_log
        assert reply.last == (replica_log[-1].position if replica_log else ORIGIN)
        if prev.serial <= len(replica_log):
            held_epoch = replica_log[prev.serial - 1].epoch
            first = next(entry.serial for entry in replica_log if entry.epoch == held_epoch)
            assert (reply.conflict_epoch, reply.conflict_first_serial) == (held_epoch, first)
        else:
            assert (reply.conflict_epoch, reply.conflict_first_serial) == (0, 0)


# A stateful model: owners at distinct epochs, each with its own copy of the log.


epochs_max = 12
malformations = st.sampled_from(["checksum", "serial", "epoch-above", "epoch-below", "prev-above"])


class ReplicaLogMachine(RuleBasedStateMachine):
    """One replica, several owners. Every reply and every log is compared with a naive model."""

    def __init__(self) -> None:
        super().__init__()
        self.journal: list[tuple[str, str, object]] = []
        self.storage = MemoryLogStorage(journal=self.journal)
        self.replica = ReplicaLog(self.storage)
        self.fence = 0
        self.owners: dict[int, list[Entry]] = {}
        self.message_count = 0

    def _log(self) -> list[Entry]:
        return held_entries(self.storage)

    def _new_message(self) -> Message:
        self.message_count += 1
        return Message(f"message-{self.message_count}")

    @initialize(data=st.data())
    def first_owner(self, data: st.DataObject) -> None:
        self.take_over(data)

    @precondition(lambda self: len(self.owners) < epochs_max)
    @rule(data=st.data())
    def take_over(self, data: st.DataObject) -> None:
        # Each epoch has one owner. Usually the next owner takes the next epoch above the fence; sometimes
        # an owner arrives late with an epoch below the fence and is stale from the start.
        unused = [epoch for epoch in range(1, epochs_max + 1) if epoch not in self.owners]
        stale = [epoch for epoch in unused if epoch < self.fence]
        fresh = [epoch for epoch in unused if epoch > self.fence]
        if stale and (not fresh or data.draw(st.integers(min_value=0, max_value=3), label="stale") == 0):
            epoch = data.draw(st.sampled_from(stale), label="stale epoch")
        else:
            epoch = fresh[0]
        before = self._log()
        reply = self.replica.fence(channel, epoch)
        assert reply.fenced == (epoch < self.fence)
        self.fence = max(self.fence, epoch)
        assert reply.fence_epoch == self.fence
        assert reply.last == (before[-1].position if before else ORIGIN)
        assert self._log() == before
        # The owner adopts a prefix of this log (as if another replica of the fence quorum were shorter),
        # keeping only entries it could have seen (a stale owner never sees later epochs), then rewrites
        # the tail at its own epoch, as recovery does.
        keep = data.draw(st.integers(min_value=0, max_value=len(before)), label="keep")
        adopted = [entry for entry in before[:keep] if entry.epoch <= epoch]
        rewrite = data.draw(st.integers(min_value=1 if adopted else 0, max_value=len(adopted)), label="rewrite")
        for index in range(len(adopted) - rewrite, len(adopted)):
            adopted[index] = adopted[index].with_epoch(epoch)
        self.owners[epoch] = adopted
        if data.draw(st.booleans(), label="recover now"):
            # Recovery writes the rewritten tail right away, after the last entry it did not rewrite.
            start = len(adopted) - rewrite
            self._send(epoch, adopted[start - 1].position if start else ORIGIN, adopted[start:])

    @rule(data=st.data(), count=st.integers(min_value=1, max_value=3))
    def publish(self, data: st.DataObject, count: int) -> None:
        epoch = self._draw_owner(data)
        owner_log = self.owners[epoch]
        for _ in range(count):
            owner_log.append(Entry.make(len(owner_log) + 1, epoch, self._new_message()))

    def _draw_owner(self, data: st.DataObject, length_min: int = 0) -> int:
        """Usually the newest owner (the one that is not stale), sometimes any owner."""
        epochs = sorted(epoch for epoch, owner_log in self.owners.items() if len(owner_log) >= length_min)
        if data.draw(st.booleans(), label="newest"):
            return epochs[-1]
        return data.draw(st.sampled_from(epochs), label="owner")

    def _draw_append(self, data: st.DataObject, length_min: int = 0) -> tuple[int, Position, list[Entry]]:
        epoch = self._draw_owner(data, length_min)
        owner_log = self.owners[epoch]
        start = data.draw(st.integers(min_value=0, max_value=len(owner_log) - length_min), label="prev index")
        length = data.draw(st.integers(min_value=length_min, max_value=len(owner_log) - start), label="length")
        prev = owner_log[start - 1].position if start else ORIGIN
        return epoch, prev, owner_log[start : start + length]

    @rule(data=st.data(), count=st.integers(min_value=0, max_value=3))
    def publish_and_send_tail(self, data: st.DataObject, count: int) -> None:
        """The common case: an owner publishes and sends everything from some point to its end."""
        epoch = self._draw_owner(data)
        owner_log = self.owners[epoch]
        for _ in range(count):
            owner_log.append(Entry.make(len(owner_log) + 1, epoch, self._new_message()))
        start = data.draw(st.integers(min_value=0, max_value=len(owner_log)), label="prev index")
        self._send(epoch, owner_log[start - 1].position if start else ORIGIN, owner_log[start:])

    @rule(data=st.data())
    def send_append(self, data: st.DataObject) -> None:
        self._send(*self._draw_append(data))

    def _send(self, epoch: int, prev: Position, entries: list[Entry]) -> None:
        before = self._log()
        reply = self.replica.append(channel, epoch, prev, entries)
        if epoch < self.fence:
            assert reply.status is AppendStatus.FENCED
            assert reply.fence_epoch == self.fence
            assert self._log() == before
            return
        self.fence = epoch
        assert reply.fence_epoch == epoch
        prev_held = prev.serial == 0 or (prev.serial <= len(before) and before[prev.serial - 1].epoch == prev.epoch)
        if not prev_held:
            assert reply.status is AppendStatus.MISMATCH
            assert self._log() == before
            assert reply.last == (before[-1].position if before else ORIGIN)
            if prev.serial <= len(before):
                held_epoch = before[prev.serial - 1].epoch
                first = next(entry.serial for entry in before if entry.epoch == held_epoch)
                assert (reply.conflict_epoch, reply.conflict_first_serial) == (held_epoch, first)
            else:
                assert (reply.conflict_epoch, reply.conflict_first_serial) == (0, 0)
            return
        assert reply.status is AppendStatus.OK
        after = self._log()
        assert after == _reference_append(before, entries)
        assert reply.match_serial == prev.serial + len(entries)
        assert reply.last == (after[-1].position if after else ORIGIN)
        # The replica now matches the owner up to match_serial.
        assert after[: reply.match_serial] == self.owners[epoch][: reply.match_serial]

    @precondition(lambda self: any(self.owners.values()))
    @rule(data=st.data(), kind=malformations)
    def send_malformed_append(self, data: st.DataObject, kind: str) -> None:
        epoch, prev, entries = self._draw_append(data, length_min=1)
        index = data.draw(st.integers(min_value=0, max_value=len(entries) - 1), label="index")
        entry = entries[index]
        floor = entries[index - 1].epoch if index else prev.epoch
        expected = AppendStatus.INVALID
        if kind == "checksum":
            entries = [*entries[:index], Entry(entry.serial, entry.epoch, entry.message, entry.checksum + 1)]
            expected = AppendStatus.CORRUPT
        elif kind == "serial":
            entries = [*entries[:index], Entry.make(entry.serial + 1, entry.epoch, entry.message)]
        elif kind == "epoch-above":
            entries = [*entries[:index], Entry.make(entry.serial, epoch + 1, entry.message)]
        elif kind == "epoch-below" and floor >= 1:
            entries = [*entries[:index], Entry.make(entry.serial, floor - 1, entry.message)]
        else:
            prev = Position(prev.serial, epoch + 1)
        before, fence, journal_length = self._log(), self.storage.fence_of(channel), len(self.journal)
        reply = self.replica.append(channel, epoch, prev, entries)
        assert reply.status is (AppendStatus.FENCED if epoch < self.fence else expected)
        assert self._log() == before
        assert self.storage.fence_of(channel) == fence
        assert len(self.journal) == journal_length

    @invariant()
    def log_is_contiguous_ordered_and_intact(self) -> None:
        held = self._log()
        assert [entry.serial for entry in held] == list(range(1, len(held) + 1))
        epochs = [entry.epoch for entry in held]
        assert epochs == sorted(epochs)
        assert all(entry.intact() for entry in held)
        assert max(epochs, default=0) <= self.fence
        assert self.storage.fence_of(channel) == self.fence
        assert self.storage.last(channel) == (held[-1].position if held else ORIGIN)

    @invariant()
    def journal_replays_to_the_same_state(self) -> None:
        replayed = MemoryLogStorage()
        replayed.replay(self.journal)
        assert replayed.fence_of(channel) == self.storage.fence_of(channel)
        assert held_entries(replayed) == self._log()


ReplicaLogMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_replica_log_model = ReplicaLogMachine.TestCase
