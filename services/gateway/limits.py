"""Rate limits and quotas at the gateway (DESIGN §10, issue #16 item 5).

Rules:

1. Publishing costs one token per message from two token buckets: the client's (its token's
   `limits.publish_rate`, else the gateway's `client_publish_rate`) and the channel's (its
   namespace's `publish_rate`, else the gateway's `channel_publish_rate`). Each bucket holds up to
   `burst_s` seconds of its rate. A publish that would overdraw either is refused whole, before it
   reaches an owner: RESOURCE_EXHAUSTED / RATE_LIMITED with a google.rpc.RetryInfo saying when that
   many tokens will be there, and metadata `limit` (client or channel) and `rate`. Nothing is taken
   from either bucket then.
2. A client holds at most its token's `limits.subscriptions` (else `client_subscriptions`)
   subscriptions at once on this gateway; one more is refused the same way, retry in a second.
3. Rate 0 means no limit. Buckets and counts are per gateway: with G gateways a client may reach G
   times its rate, which the docs say.
4. Bounded: at most `buckets_max` buckets of each kind; the least recently used goes first (a bucket
   unused for `burst_s` is full again, the same as a new one).
5. Every refusal is counted: `ringcast_gateway_refusals_total{reason}` (auth refusals too).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from ringcast.reasons import Reason
from services.common.errors import ServiceError
from services.gateway.auth import Grant

buckets_max = 100_000
"""Buckets a gateway keeps per kind (client, channel)."""

burst_s = 2.0
"""A bucket holds this many seconds of its rate."""

subscription_retry_s = 1.0
"""RetryInfo of a refused subscription (held subscriptions end at their own pace)."""


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    client_publish_rate: float = 10_000.0
    """Messages per second one client (token subject) may publish through this gateway by default."""
    channel_publish_rate: float = 0.0
    """Messages per second one channel may take through this gateway (0: no limit)."""
    client_subscriptions: int = 1_000
    """Subscriptions one client may hold at once on this gateway by default."""


class TokenBucket:
    __slots__ = ("level", "rate", "updated")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.level = rate * burst_s
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """0 if `amount` tokens are there (and takes them), else the seconds until they will be."""
        capacity = self.rate * burst_s
        self.level = min(capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        # A batch larger than the whole bucket goes through once the bucket is full, into debt (the
        # level goes below 0 and the next publishes wait it off); else it could never go through.
        if amount <= self.level or self.level >= capacity:
            self.level -= amount
            return 0.0
        return (min(amount, capacity) - self.level) / self.rate

    def give_back(self, amount: float) -> None:
        self.level = min(self.rate * burst_s, self.level + amount)


class _Buckets:
    def __init__(self) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, key: str, rate: float, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, now)
            while len(self._buckets) > buckets_max:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(key)
        if bucket.rate != rate:  # another token of the same client, with another rate: keep what is used
            bucket.wait_for(0, now)
            bucket.rate = rate
            bucket.level = min(bucket.level, rate * burst_s)
        return bucket


def rate_limited(message: str, retry_after_s: float, **metadata: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.RATE_LIMITED,
        message,
        metadata,
        retry_after_s=max(0.001, retry_after_s),
    )


class Limiter:
    def __init__(self, limits: GatewayLimits, *, now: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.now = now
        self._clients = _Buckets()
        self._channels = _Buckets()
        self._subscriptions: dict[str, int] = {}

    def publish(self, grant: Grant | None, channel: str, messages: int, channel_rate: float = 0.0) -> None:
        """Take `messages` tokens from the client's and the channel's buckets, or raise RATE_LIMITED.
        `channel_rate` (the channel's namespace's `publish_rate`), when above 0, is the channel's rate
        instead of the gateway's `channel_publish_rate`."""
        now = self.now()
        client_rate = (
            grant.limits.publish_rate if grant and grant.limits.publish_rate else self.limits.client_publish_rate
        )
        taken: TokenBucket | None = None
        if grant is not None and client_rate > 0:
            bucket = self._clients.get(grant.sub, client_rate, now)
            wait = bucket.wait_for(messages, now)
            if wait:
                raise rate_limited(
                    f"{grant.sub!r} may publish {client_rate:g} messages per second",
                    wait,
                    limit="client",
                    rate=f"{client_rate:g}",
                )
            taken = bucket
        channel_rate = channel_rate or self.limits.channel_publish_rate
        if channel_rate > 0:
            wait = self._channels.get(channel, channel_rate, now).wait_for(messages, now)
            if wait:
                if taken is not None:
                    taken.give_back(messages)
                raise rate_limited(
                    f"{channel!r} takes {channel_rate:g} messages per second",
                    wait,
                    limit="channel",
                    rate=f"{channel_rate:g}",
                )

    @contextmanager
    def subscription(self, grant: Grant | None) -> Iterator[None]:
        """Hold one of the client's subscriptions for the `with` block, or raise RATE_LIMITED."""
        if grant is None:
            yield
            return
        allowed = grant.limits.subscriptions or self.limits.client_subscriptions
        held = self._subscriptions.get(grant.sub, 0)
        if allowed and held >= allowed:
            raise rate_limited(
                f"{grant.sub!r} may hold {allowed} subscriptions at once on this gateway",
                subscription_retry_s,
                limit="subscriptions",
                subscriptions=str(allowed),
            )
        self._subscriptions[grant.sub] = held + 1
        try:
            yield
        finally:
            left = self._subscriptions[grant.sub] - 1
            if left:
                self._subscriptions[grant.sub] = left
            else:
                del self._subscriptions[grant.sub]


__all__ = ["GatewayLimits", "Limiter", "TokenBucket", "rate_limited"]
