"""Which gateway to send the next request to: health that is not binary.

Rules (a pure core: no I/O, `now` is an argument, so tests drive it with a fake clock):

- The endpoints are tried in the order given: the first healthy one is the *preferred* one, and a
  client uses it as long as it stays healthy (Ably's primary host and fallback hosts).
- Every outcome is recorded. A success feeds the endpoint's latency average (EWMA) and error rate.
  A *hard* failure (the connection broke, the endpoint did not answer within the attempt timeout)
  demotes the endpoint at once. A *soft* failure (the endpoint answered UNAVAILABLE with a reason:
  something behind it is down) only raises its error rate; past `error_rate_max` it is demoted too.
- An endpoint whose average latency passes `slow_latency_s` while another endpoint is not known to
  be slower is demoted as slow.
- A demoted endpoint rests for `demotion_s_min`, doubling with each demotion in a row up to
  `demotion_s_max`; then it is tried again with a clean slate (so the preferred endpoint is taken
  back once it recovers). A success ends the run of demotions.
- When every endpoint is demoted, the one whose rest ends first is used: there is always an answer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

latency_weight = 0.2
"""Weight of a new sample in the latency and error-rate averages."""

error_rate_samples_min = 5
"""Outcomes an endpoint needs before its error rate can demote it."""


class EndpointState(enum.Enum):
    HEALTHY = "healthy"
    DEMOTED = "demoted"


class Outcome(enum.Enum):
    SUCCESS = "success"
    SOFT_FAILURE = "soft_failure"
    HARD_FAILURE = "hard_failure"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    slow_latency_s: float = 1.0
    error_rate_max: float = 0.5
    demotion_s_min: float = 5.0
    demotion_s_max: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.demotion_s_min <= self.demotion_s_max:
            raise ValueError("need 0 < demotion_s_min <= demotion_s_max")
        if not 0 < self.error_rate_max <= 1:
            raise ValueError("error_rate_max must be in (0, 1]")
        if self.slow_latency_s <= 0:
            raise ValueError("slow_latency_s must be positive")


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """What the client thinks of one gateway right now."""

    address: str
    state: EndpointState
    latency_ms: float | None
    error_rate: float
    demoted_for_s: float
    demotions: int
    last_reason: str


@dataclass(slots=True)
class _Endpoint:
    address: str
    latency_s: float | None = None
    error_rate: float = 0.0
    samples: int = 0
    demoted_until: float = 0.0
    demotions_in_row: int = 0
    demotions: int = 0
    last_reason: str = ""


class EndpointPool:
    """The gateways a client knows, in preference order, and what it has seen of each."""

    def __init__(self, addresses: Sequence[str], policy: HealthPolicy | None = None) -> None:
        if not addresses:
            raise ValueError("at least one endpoint is needed")
        if len(set(addresses)) != len(addresses):
            raise ValueError("endpoints must be distinct")
        self.policy = policy or HealthPolicy()
        self._endpoints = [_Endpoint(address) for address in addresses]
        self._by_address = {endpoint.address: endpoint for endpoint in self._endpoints}

    @property
    def addresses(self) -> list[str]:
        return [endpoint.address for endpoint in self._endpoints]

    def pick(self, now: float, avoid: str | None = None) -> str:
        """The endpoint for the next attempt: the first healthy one, other than `avoid` if possible."""
        healthy = [endpoint for endpoint in self._endpoints if endpoint.demoted_until <= now]
        for endpoint in healthy:
            if endpoint.demoted_until:  # its rest is over: a clean slate, tried again
                endpoint.demoted_until = 0.0
                endpoint.latency_s, endpoint.error_rate, endpoint.samples = None, 0.0, 0
        choices = [endpoint for endpoint in healthy if endpoint.address != avoid] or healthy
        if choices:
            return choices[0].address
        return min(self._endpoints, key=lambda endpoint: endpoint.demoted_until).address

    def record(self, address: str, outcome: Outcome, now: float, latency_s: float = 0.0, reason: str = "") -> bool:
        """Learn from one attempt. True when it demoted the endpoint."""
        endpoint = self._by_address[address]
        endpoint.samples += 1
        failed = 0.0 if outcome is Outcome.SUCCESS else 1.0
        endpoint.error_rate += latency_weight * (failed - endpoint.error_rate)
        if outcome is Outcome.SUCCESS:
            endpoint.demotions_in_row = 0
            previous = endpoint.latency_s
            endpoint.latency_s = latency_s if previous is None else previous + latency_weight * (latency_s - previous)
            if endpoint.latency_s > self.policy.slow_latency_s and self._someone_faster(endpoint, now):
                return self._demote(endpoint, now, f"slow: {endpoint.latency_s * 1000:.0f} ms on average")
            return False
        endpoint.last_reason = reason
        if outcome is Outcome.HARD_FAILURE:
            return self._demote(endpoint, now, reason)
        if endpoint.samples >= error_rate_samples_min and endpoint.error_rate > self.policy.error_rate_max:
            return self._demote(endpoint, now, f"error rate {endpoint.error_rate:.0%}: {reason}")
        return False

    def _someone_faster(self, slow: _Endpoint, now: float) -> bool:
        """Another endpoint that is not resting and not known to be slower."""
        assert slow.latency_s is not None
        return any(
            other is not slow
            and other.demoted_until <= now
            and (other.latency_s is None or other.latency_s < slow.latency_s)
            for other in self._endpoints
        )

    def _demote(self, endpoint: _Endpoint, now: float, reason: str) -> bool:
        if endpoint.demoted_until > now:
            return False
        rest = min(self.policy.demotion_s_max, self.policy.demotion_s_min * 2**endpoint.demotions_in_row)
        endpoint.demoted_until = now + rest
        endpoint.demotions_in_row += 1
        endpoint.demotions += 1
        endpoint.last_reason = reason
        return True

    def healthy_count(self, now: float) -> int:
        return sum(1 for endpoint in self._endpoints if endpoint.demoted_until <= now)

    def status(self, now: float) -> list[EndpointStatus]:
        return [
            EndpointStatus(
                address=endpoint.address,
                state=EndpointState.DEMOTED if endpoint.demoted_until > now else EndpointState.HEALTHY,
                latency_ms=None if endpoint.latency_s is None else endpoint.latency_s * 1000,
                error_rate=endpoint.error_rate,
                demoted_for_s=max(0.0, endpoint.demoted_until - now),
                demotions=endpoint.demotions,
                last_reason=endpoint.last_reason,
            )
            for endpoint in self._endpoints
        ]
