"""The history checker: a pure judge of what a run of the platform did.

A history records, for one run: every publish operation as invoke → ok / fail / unknown with its
message ids and (on ok) the serials it was given; every delivery each subscriber received, in the
order received; and each channel's final log as read from a quorum of store replicas. The same
checker judges the seeded simulator and runs against real processes.

It reports, per channel:

- LOST: an acknowledged message that is not in the final log.
- SERIAL_CHANGED: an acknowledged message that is in the final log, but at another serial (or one
  id acknowledged with two different serials).
- SERIAL_REUSED: two different messages acknowledged with the same serial.
- DUPLICATE: one message id stored more than once in the final log.
- LOG_GAP: the final log's serials are not exactly 1..n.
- FAILED_BUT_STORED: a message whose publish definitely failed (never reached an owner) is stored.
- UNKNOWN_MESSAGE: the log holds a message no publisher ever sent.
- SUBSCRIBER_GAP / SUBSCRIBER_DUPLICATE / SUBSCRIBER_REORDER: a subscriber's serials did not run
  start+1, start+2, ... (an explicit ContinuityLost marker is the one allowed jump).
- PHANTOM_DELIVERY: a subscriber received, at some serial, a message that the final log does not
  hold at that serial (it saw something that was never committed, or that changed).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class Outcome(enum.Enum):
    OK = "ok"
    FAIL = "fail"  # certainly not stored: no attempt reached a point where serials were assigned
    UNKNOWN = "unknown"  # may or may not be stored


@dataclass(frozen=True, slots=True)
class PublishOp:
    op_id: int
    channel: str
    message_ids: tuple[str, ...]
    outcome: Outcome
    serials: tuple[int, ...] = ()
    invoke_ms: int = 0
    complete_ms: int = 0


@dataclass(frozen=True, slots=True)
class ContinuityLost:
    """The platform told the subscriber, explicitly, that it resumes at `next_serial`."""

    next_serial: int


@dataclass(slots=True)
class SubscriberRecord:
    subscriber_id: str
    channel: str
    start_after: int
    received: list[tuple[int, str] | ContinuityLost] = field(default_factory=list)


@dataclass(slots=True)
class History:
    publishes: list[PublishOp] = field(default_factory=list)
    subscribers: list[SubscriberRecord] = field(default_factory=list)
    final_logs: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    channel: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} channel={self.channel} {self.detail}"


def check(history: History) -> list[Violation]:
    """Every violation the history shows, channel by channel, in a deterministic order."""
    violations: list[Violation] = []
    channels = sorted(set(history.final_logs) | {op.channel for op in history.publishes})
    for channel in channels:
        log = history.final_logs.get(channel, [])
        publishes = [op for op in history.publishes if op.channel == channel]
        violations.extend(_check_log(channel, log, publishes))
        violations.extend(_check_acks(channel, log, publishes))
    for record in history.subscribers:
        violations.extend(_check_subscriber(record, history.final_logs.get(record.channel, [])))
    return violations


def _check_log(channel: str, log: Sequence[tuple[int, str]], publishes: Iterable[PublishOp]) -> list[Violation]:
    found: list[Violation] = []
    for index, (serial, _) in enumerate(log):
        if serial != index + 1:
            found.append(Violation("LOG_GAP", channel, f"position {index + 1} holds serial {serial}"))
            break
    for message_id, count in sorted(Counter(message_id for _, message_id in log).items()):
        if count > 1:
            serials = [serial for serial, held in log if held == message_id]
            found.append(Violation("DUPLICATE", channel, f"id={message_id} stored at serials {serials}"))
    sent: set[str] = set()
    failed: set[str] = set()
    for op in publishes:
        sent.update(op.message_ids)
        if op.outcome is Outcome.FAIL:
            failed.update(op.message_ids)
    # An id that some other attempt may have stored (ok or unknown) is not "certainly not stored".
    failed -= {message_id for op in publishes if op.outcome is not Outcome.FAIL for message_id in op.message_ids}
    for serial, message_id in log:
        if message_id in failed:
            found.append(Violation("FAILED_BUT_STORED", channel, f"id={message_id} serial={serial}"))
        elif message_id not in sent:
            found.append(Violation("UNKNOWN_MESSAGE", channel, f"id={message_id} serial={serial}"))
    return found


def _check_acks(channel: str, log: Sequence[tuple[int, str]], publishes: Iterable[PublishOp]) -> list[Violation]:
    found: list[Violation] = []
    id_at = dict(log)
    serials_of: dict[str, list[int]] = {}
    for serial, message_id in log:
        serials_of.setdefault(message_id, []).append(serial)
    acked_serial: dict[str, int] = {}
    acked_id: dict[int, str] = {}
    for op in publishes:
        if op.outcome is not Outcome.OK:
            continue
        for message_id, serial in zip(op.message_ids, op.serials, strict=True):
            earlier = acked_serial.setdefault(message_id, serial)
            if earlier != serial:
                found.append(Violation("SERIAL_CHANGED", channel, f"id={message_id} acked as {earlier} and {serial}"))
            holder = acked_id.setdefault(serial, message_id)
            if holder != message_id:
                found.append(
                    Violation("SERIAL_REUSED", channel, f"serial={serial} acked for {holder} and {message_id}")
                )
            if id_at.get(serial) == message_id:
                continue
            if message_id in serials_of:
                found.append(
                    Violation(
                        "SERIAL_CHANGED",
                        channel,
                        f"id={message_id} acked at {serial}, stored at {serials_of[message_id]}",
                    )
                )
            else:
                found.append(Violation("LOST", channel, f"id={message_id} acked at serial={serial} (op {op.op_id})"))
    return found


def _check_subscriber(record: SubscriberRecord, log: Sequence[tuple[int, str]]) -> list[Violation]:
    found: list[Violation] = []
    id_at = dict(log)
    expected = record.start_after + 1
    where = f"subscriber={record.subscriber_id}"
    for item in record.received:
        if isinstance(item, ContinuityLost):
            expected = max(expected, item.next_serial)  # a gap may only skip forward
            continue
        serial, message_id = item
        if serial != expected:
            if serial > expected:
                kind = "SUBSCRIBER_GAP"
            elif serial == expected - 1:
                kind = "SUBSCRIBER_DUPLICATE"
            else:
                kind = "SUBSCRIBER_REORDER"
            found.append(Violation(kind, record.channel, f"{where} expected {expected} got {serial}"))
        if id_at.get(serial) != message_id:
            found.append(
                Violation(
                    "PHANTOM_DELIVERY",
                    record.channel,
                    f"{where} serial={serial} got {message_id} log has {id_at.get(serial)}",
                )
            )
        expected = max(expected, serial + 1)
    return found
