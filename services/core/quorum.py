"""Quorum and commit arithmetic, in one place.

A channel is replicated to `n` store replicas; a quorum is a strict majority. An entry is committed
when a quorum holds it *and* the owner wrote it (or rewrote it) at the owner's own epoch: like Raft,
commit only ever advances through an entry of the current epoch, because an older-epoch entry on a
quorum can still be superseded by a later owner that never saw it. Everything below a committed
entry is committed too (log matching).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.core.entries import Position


def quorum_size(replica_count: int) -> int:
    """Smallest strict majority of `replica_count` replicas."""
    return replica_count // 2 + 1


def quorum_match(matches: Sequence[int], quorum: int) -> int:
    """Highest serial that at least `quorum` replicas hold (each replica given by its match serial)."""
    if len(matches) < quorum:
        return 0
    return sorted(matches, reverse=True)[quorum - 1]


def advance_commit(commit: int, matches: Sequence[int], quorum: int, epoch_start_serial: int) -> int:
    """The new commit point: the quorum match, if it reaches an entry of the owner's own epoch.

    `epoch_start_serial` is the first serial the current owner wrote at its epoch. Commit never
    moves backwards.
    """
    candidate = quorum_match(matches, quorum)
    if candidate >= epoch_start_serial and candidate > commit:
        return candidate
    return commit


def most_up_to_date(lasts: Sequence[tuple[str, Position]]) -> str:
    """The replica whose log a new owner adopts: highest last epoch, then longest; ties by order.

    This is Raft's up-to-date rule. Comparing whole logs by their last entry is what makes it
    safe: a log whose last entry has a higher epoch was written by a later owner, which had already
    adopted every committed entry, so it contains them all.
    """
    best_name, best = lasts[0]
    for name, last in lasts[1:]:
        if (last.epoch, last.serial) > (best.epoch, best.serial):
            best_name, best = name, last
    return best_name
