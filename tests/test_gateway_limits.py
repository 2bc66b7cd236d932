"""Token buckets and subscription caps at the gateway (services/gateway/limits.py), on a fake clock."""

from __future__ import annotations

import grpc
import pytest

from ringcast.reasons import Reason
from services.common.errors import ServiceError
from services.core.capability import Capability
from services.gateway.auth import Grant, TokenLimits
from services.gateway.limits import GatewayLimits, Limiter, burst_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def grant(sub: str = "alice", **limits: float) -> Grant:
    return Grant(sub, "j", 0.0, 1e12, Capability.parse({"*": ["*"]}), TokenLimits(**limits))  # type: ignore[arg-type]


def refusal(call: object) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call()  # type: ignore[operator]
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.reason == Reason.RATE_LIMITED
    return caught.value


def test_a_client_may_burst_then_waits_as_long_as_its_bucket_says() -> None:
    clock = Clock()
    limiter = Limiter(GatewayLimits(client_publish_rate=100), now=clock)
    client = grant(publish_rate=5)  # the token's rate wins over the gateway's
    limiter.publish(client, "c", int(5 * burst_s))  # a full bucket: the burst
    error = refusal(lambda: limiter.publish(client, "c", 2))
    assert error.metadata == {"limit": "client", "rate": "5"}
    assert error.retry_after_s == pytest.approx(2 / 5)
    clock.now += 0.4
    limiter.publish(client, "c", 2)
    limiter.publish(grant("bob"), "c", 100)  # another client has its own bucket, at the gateway's rate


def test_a_channel_limit_refuses_whole_and_takes_nothing_from_the_client() -> None:
    clock = Clock()
    limiter = Limiter(GatewayLimits(client_publish_rate=10, channel_publish_rate=1), now=clock)
    limiter.publish(grant(), "hot", 2)  # the channel's burst
    error = refusal(lambda: limiter.publish(grant(), "hot", 1))
    assert error.metadata["limit"] == "channel"
    limiter.publish(grant(), "other", 18)  # the client still has 20 - 2 tokens: the refusal took none
    refusal(lambda: limiter.publish(grant(), "third", 1))


def test_without_a_token_only_the_channel_limit_applies() -> None:
    limiter = Limiter(GatewayLimits(client_publish_rate=1, channel_publish_rate=0), now=Clock())
    limiter.publish(None, "c", 10_000)


def test_a_client_holds_at_most_its_subscriptions() -> None:
    limiter = Limiter(GatewayLimits(client_subscriptions=5), now=Clock())
    client = grant(subscriptions=2)
    with limiter.subscription(client), limiter.subscription(client):
        error = refusal(lambda: limiter.subscription(client).__enter__())
        assert error.metadata["limit"] == "subscriptions" and error.retry_after_s == 1.0
        with limiter.subscription(grant("bob")):
            pass
    with limiter.subscription(client), limiter.subscription(client):  # released: room again
        pass


def test_a_batch_larger_than_the_bucket_goes_through_once_it_is_full_and_the_debt_is_waited_off() -> None:
    clock = Clock()
    limiter = Limiter(GatewayLimits(), now=clock)
    client = grant(publish_rate=5)  # a bucket of 10
    limiter.publish(client, "c", 50)  # full bucket: a batch of 50 goes through, 40 into debt
    error = refusal(lambda: limiter.publish(client, "c", 1))
    assert error.retry_after_s == pytest.approx(41 / 5)
    clock.now += 41 / 5
    limiter.publish(client, "c", 1)


def test_a_new_token_with_another_rate_does_not_refill_the_bucket() -> None:
    clock = Clock()
    limiter = Limiter(GatewayLimits(), now=clock)
    limiter.publish(grant(publish_rate=5), "c", 10)  # empties the bucket
    refusal(lambda: limiter.publish(grant(publish_rate=6), "c", 1))  # same client, same empty bucket
