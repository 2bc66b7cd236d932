"""The SDK's gateway health rules (a pure core driven with a fake clock) and its batch cutting."""

from __future__ import annotations

import pytest

from ringcast._endpoints import EndpointPool, EndpointState, HealthPolicy, Outcome
from ringcast._publisher import BatchLimits, chunks
from ringcast.v1 import message_pb2

A, B, C = "a:1", "b:1", "c:1"


def pool(policy: HealthPolicy | None = None) -> EndpointPool:
    return EndpointPool([A, B, C], policy or HealthPolicy(demotion_s_min=5.0, demotion_s_max=40.0))


def test_the_first_endpoint_is_preferred_while_healthy() -> None:
    endpoints = pool()
    for now in range(10):
        assert endpoints.pick(float(now)) == A
        endpoints.record(A, Outcome.SUCCESS, float(now), latency_s=0.01)


def test_a_hard_failure_demotes_at_once_and_the_preferred_is_taken_back_after_its_rest() -> None:
    endpoints = pool()
    assert endpoints.record(A, Outcome.HARD_FAILURE, 0.0, reason="UNAVAILABLE: connection refused")
    assert endpoints.pick(0.1) == B
    assert endpoints.status(0.1)[0].state is EndpointState.DEMOTED
    assert endpoints.pick(4.9) == B
    assert endpoints.pick(5.0) == A  # rested: tried again with a clean slate
    assert endpoints.status(5.0)[0].latency_ms is None


def test_demotions_in_a_row_rest_longer_up_to_the_cap_and_a_success_resets_them() -> None:
    endpoints = pool()
    now, rests = 0.0, []
    for _ in range(5):
        endpoints.record(A, Outcome.HARD_FAILURE, now, reason="down")
        rests.append(endpoints.status(now)[0].demoted_for_s)
        now += rests[-1]
        assert endpoints.pick(now) == A
    assert rests == [5.0, 10.0, 20.0, 40.0, 40.0]
    endpoints.record(A, Outcome.SUCCESS, now, latency_s=0.01)
    endpoints.record(A, Outcome.HARD_FAILURE, now, reason="down")
    assert endpoints.status(now)[0].demoted_for_s == 5.0


def test_soft_failures_demote_only_past_the_error_rate() -> None:
    endpoints = pool(HealthPolicy(error_rate_max=0.5))
    now = 0.0
    demoted = [endpoints.record(A, Outcome.SOFT_FAILURE, now, reason="QUORUM_UNAVAILABLE") for _ in range(3)]
    assert demoted == [False, False, False]  # too few outcomes to judge
    for _ in range(20):
        endpoints.record(A, Outcome.SUCCESS, now, latency_s=0.01)
    for _ in range(2):  # an occasional soft failure among successes never demotes
        assert not endpoints.record(A, Outcome.SOFT_FAILURE, now, reason="QUORUM_UNAVAILABLE")
        endpoints.record(A, Outcome.SUCCESS, now, latency_s=0.01)
    outcomes = [endpoints.record(A, Outcome.SOFT_FAILURE, now, reason="OWNER_UNREACHABLE") for _ in range(5)]
    assert True in outcomes and endpoints.pick(now) == B


def test_a_slow_endpoint_is_demoted_when_another_may_be_faster() -> None:
    endpoints = pool(HealthPolicy(slow_latency_s=0.5))
    demoted = [endpoints.record(A, Outcome.SUCCESS, 0.0, latency_s=2.0) for _ in range(3)]
    assert demoted[0]
    assert "slow" in endpoints.status(0.0)[0].last_reason
    assert endpoints.pick(0.0) == B


def test_when_every_endpoint_is_slow_none_is_demoted_for_it() -> None:
    endpoints = EndpointPool([A], HealthPolicy(slow_latency_s=0.5))
    assert not endpoints.record(A, Outcome.SUCCESS, 0.0, latency_s=2.0)
    assert endpoints.pick(0.0) == A


def test_when_all_are_demoted_the_one_rested_soonest_is_used() -> None:
    endpoints = pool()
    endpoints.record(B, Outcome.HARD_FAILURE, 0.0, reason="down")
    endpoints.record(C, Outcome.HARD_FAILURE, 1.0, reason="down")
    endpoints.record(A, Outcome.HARD_FAILURE, 2.0, reason="down")
    assert endpoints.healthy_count(2.0) == 0
    assert endpoints.pick(2.0) == B


def test_a_retry_avoids_the_endpoint_that_just_failed_if_another_is_healthy() -> None:
    endpoints = pool()
    endpoints.record(A, Outcome.SOFT_FAILURE, 0.0, reason="QUORUM_UNAVAILABLE")
    assert endpoints.pick(0.0, avoid=A) == B
    single = EndpointPool([A])
    assert single.pick(0.0, avoid=A) == A


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        EndpointPool([])
    with pytest.raises(ValueError):
        EndpointPool([A, A])
    with pytest.raises(ValueError):
        HealthPolicy(demotion_s_min=10.0, demotion_s_max=1.0)
    with pytest.raises(ValueError):
        BatchLimits(pending_messages_max=10)


def test_chunks_respect_the_batch_limits_and_keep_the_order() -> None:
    limits = BatchLimits(batch_messages_max=3, batch_bytes_max=1000, pending_messages_max=10, pending_bytes_max=5000)
    messages = [message_pb2.Message(id=str(index), data=b"x" * 100) for index in range(7)]
    messages.insert(4, message_pb2.Message(id="big", data=b"x" * 2000))  # alone in its batch, refused there
    runs = chunks(messages, limits)
    assert [[message.id for message in run] for run in runs] == [["0", "1", "2"], ["3"], ["big"], ["4", "5", "6"]]
