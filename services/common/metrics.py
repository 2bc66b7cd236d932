"""Prometheus metrics of every ringcast process, served over HTTP at `--metrics-listen HOST:PORT`.

Each process exposes what it knows; a labelled metric appears once it has a value. Names:

- `ringcast_publish_seconds{outcome}` (histogram, gateway): publish to acknowledgement as the gateway
  saw it; outcome `ok` or the error reason.
- `ringcast_gateway_refusals_total{reason}` (counter, gateway): calls refused for their token
  (TOKEN_*), their capability (CAPABILITY_DENIED) or a limit (RATE_LIMITED).
- `ringcast_ring_version` (gauge, gateway and channel): the newest ring this process acts on.
  `ringcast_ring_members{kind}` (gauge, gateway and channel): its members, kind `channel` (channel
  nodes) or `store` (zones with a store).
- `ringcast_ready` (gauge, every service): 1 while its `/readyz` answers ready (services/common/probes.py).
- `ringcast_takeovers_total{trigger,outcome}` (counter, channel): takeovers ended; trigger `request`
  or `prepare`, outcome `serving` or `failed`. `ringcast_takeover_seconds` (histogram): fence to serving.
- `ringcast_channels{state}` (gauge, channel): channels `serving`, `taking_over`, `prepared`.
- `ringcast_replica_behind_entries{zone}` (histogram, channel): at each append acknowledgement, how
  many entries that replica is behind the owner's log (commit lag per replica).
- `ringcast_deliveries_total`, `ringcast_subscribers_dropped_total` (counters, channel): messages
  delivered to subscriptions; subscriptions cut off as too slow (they resume).
- `ringcast_store_commit_requests`, `ringcast_store_commit_seconds` (histograms, store): requests one
  group commit made durable; one commit, its sync to disk included.
- `ringcast_store_trimmed_entries_total{namespace}` (counter, store): entries retention dropped, by
  the channel's namespace (its own name where it has options, else `default`).
  `ringcast_store_trim_passes_total` (counter, store): retention passes finished (one that could not
  judge ages yet, having heard no owner's clock, counts too): flat while the trimmer is stuck.
- `ringcast_store_damaged_entries_total{what}` (counter, store): entries found damaged at rest, what
  `missing` or `corrupt` (a corrupt one is dropped, then missing); found by reads, the scrub or
  fences. `ringcast_store_scrubbed_entries_total` (counter, store): entries the scrub has checked.
  `ringcast_store_repaired_entries_total` (counter, store): missing entries written again in place.
- `ringcast_store_epochs_refused_total{rpc}` (counter, store): fences and appends refused because their
  epoch names a ring version above any etcd has made (EPOCH_AHEAD_OF_RING).
- `ringcast_continuity_lost_total{reader}` (counter, channel): readers told that what they asked for
  is no longer retained; reader `subscription` or `history`.
- `ringcast_clock_skew_seconds{peers}` (gauge, store and channel): this process's wall clock minus
  its peers' (`owners` for a store, `stores` for a channel node), the median of their readings.
- `ringcast_replica_faults_total{zone,kind}` (counter, channel): replicas an owner found at fault, once
  per channel and owner: kind `fenced_out` (a fence above the owner's epoch while a quorum accepts
  it) or `damaged` (a read answered with a hole, a bad checksum or a wrong entry, or the replica
  reported damage itself); the owner reads elsewhere and repairs the replica.
- `ringcast_role_stale_inputs_total{input}` (counter, channel): inputs a channel role's state table
  dropped as answers to an earlier state (`fence_reply` after adoption: the usual third reply; any
  input after a step-down). A steady rate beside no step-downs would be a bug.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("ringcast.metrics")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

publish_seconds = Histogram(
    "ringcast_publish_seconds", "Publish to acknowledgement, at the gateway", ["outcome"], buckets=_LATENCY_BUCKETS
)
gateway_refusals = Counter(
    "ringcast_gateway_refusals", "Calls refused for their token, capability or a rate limit", ["reason"]
)
ring_version = Gauge("ringcast_ring_version", "Version of the newest ring this process acts on")
ring_members = Gauge(
    "ringcast_ring_members", "Members of the newest ring this process holds: channel nodes, store zones", ["kind"]
)
ready = Gauge("ringcast_ready", "1 while this process's /readyz answers ready, 0 otherwise")
takeovers = Counter("ringcast_takeovers", "Takeovers ended", ["trigger", "outcome"])
takeover_seconds = Histogram("ringcast_takeover_seconds", "Takeover from fence to serving", buckets=_LATENCY_BUCKETS)
channels = Gauge("ringcast_channels", "Channels held by this node", ["state"])
replica_behind_entries = Histogram(
    "ringcast_replica_behind_entries",
    "Entries a replica is behind the owner's log when it acknowledges an append",
    ["zone"],
    buckets=(0, 1, 2, 5, 10, 50, 100, 1_000, 10_000),
)
deliveries = Counter("ringcast_deliveries", "Messages delivered to subscriptions")
subscribers_dropped = Counter("ringcast_subscribers_dropped", "Subscriptions cut off as too slow")
store_commit_requests = Histogram(
    "ringcast_store_commit_requests",
    "Requests one group commit made durable",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024),
)
store_commit_seconds = Histogram(
    "ringcast_store_commit_seconds", "One store commit, its sync to disk included", buckets=_LATENCY_BUCKETS
)
store_trimmed_entries = Counter(
    "ringcast_store_trimmed_entries", "Entries retention dropped, by the channel's namespace", ["namespace"]
)
store_trim_passes = Counter("ringcast_store_trim_passes", "Retention passes finished over every channel")
replica_faults = Counter(
    "ringcast_replica_faults", "Replicas an owner found at fault (once per channel and owner)", ["zone", "kind"]
)
stale_inputs = Counter(
    "ringcast_role_stale_inputs", "Inputs a channel role dropped as answers to an earlier state", ["input"]
)
store_damaged_entries = Counter("ringcast_store_damaged_entries", "Entries found damaged at rest", ["what"])
store_scrubbed_entries = Counter("ringcast_store_scrubbed_entries", "Entries the scrub has checked")
store_repaired_entries = Counter("ringcast_store_repaired_entries", "Missing entries written again in place")
store_epochs_refused = Counter(
    "ringcast_store_epochs_refused",
    "Fences and appends refused: their epoch is above any ring version etcd has made",
    ["rpc"],
)
clock_skew_seconds = Gauge("ringcast_clock_skew_seconds", "This process's wall clock minus its peers'", ["peers"])
continuity_lost = Counter(
    "ringcast_continuity_lost", "Readers told that what they asked for is no longer retained", ["reader"]
)
