"""node/metrics.py: per-route counters and their Prometheus exposition."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import (
    EXPORT_BOUNDS,
    LATENCY_BOUNDS,
    NodeCollector,
    NodeStats,
    RouteStats,
    fold,
    make_registry,
    quantile,
)

UPSTREAMS = {
    "users": {
        "balance": "round_robin",
        "members": [
            {"url": "http://a:1", "in_flight": 1, "requests": 5, "failures": 1, "timeouts": 2}
        ],
    }
}


def scrape(stats: NodeStats, upstreams=None) -> dict[tuple[str, frozenset], float]:
    """The collector's samples as {(name, labels): value}, parsed back from the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector("n1", stats, lambda: upstreams or {}))
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset:
    return frozenset({"node": "n1", **values}.items())


def test_record_counts_statuses():
    """Each recorded status is counted separately."""
    stats = RouteStats("/a")
    for status in (200, 200, 404, 200):
        stats.record(status, 0.001)
    assert stats.statuses == {200: 3, 404: 1}


@pytest.mark.parametrize(
    ("seconds", "bound"),
    [
        (0.0, 50e-6),
        (0.00005, 50e-6),
        (0.000051, 55e-6),
        (0.0004, 0.0004),
        (0.00061, 0.00065),
        (0.3, 0.3),
        (10.0, 10.0),
        (59.9, 60.0),
        (60.5, None),
    ],
)
def test_record_puts_latency_in_its_bucket(seconds, bound):
    """A latency lands in the first bucket whose upper bound is >= it; beyond 60 s in +Inf."""
    stats = RouteStats("/a")
    stats.record(200, seconds)
    index = stats.buckets.index(1)
    assert (LATENCY_BOUNDS[index] if index < len(LATENCY_BOUNDS) else None) == bound
    assert sum(stats.buckets) == 1


def test_buckets_are_log_linear_and_at_most_12_5_percent_wide():
    """From 50 us to 60 s, each bucket at most 12.5 % wider than the one below it."""
    assert (LATENCY_BOUNDS[0], LATENCY_BOUNDS[-1]) == (50e-6, 60.0)
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BOUNDS)]
    assert max(ratios) <= 1.125 + 1e-9
    assert set(EXPORT_BOUNDS) <= set(LATENCY_BOUNDS)


def test_fold_sums_fine_buckets_into_the_exported_ones():
    """Every fine bucket lands in the exported bucket whose bound covers it, none twice."""
    fine = list(range(len(LATENCY_BOUNDS) + 1))
    folded = fold(fine)
    assert len(folded) == len(EXPORT_BOUNDS) + 1
    assert sum(folded) == sum(fine)
    below_1ms = sum(c for b, c in zip(LATENCY_BOUNDS, fine, strict=False) if b <= 0.001)
    assert sum(folded[:2]) == below_1ms


def test_record_sums_latency():
    """latency_sum adds up every recorded duration."""
    stats = RouteStats("/a")
    stats.record(200, 0.25)
    stats.record(500, 1.5)
    assert stats.latency_sum == pytest.approx(1.75)


def test_there_is_one_bucket_per_bound_plus_inf():
    """Buckets cover every bound and one more for +Inf."""
    assert len(RouteStats("/a").buckets) == len(LATENCY_BOUNDS) + 1


def test_node_stats_reuses_route_stats_per_label():
    """Asking twice for a label returns the same counters."""
    stats = NodeStats()
    assert stats.route("/a") is stats.route("/a")
    assert stats.route("/a") is not stats.route("/b")


def test_requests_total_by_route_and_status():
    """scalenode_requests_total has one series per route and status."""
    stats = NodeStats()
    for status in (200, 200, 503):
        stats.route("/a").record(status, 0.01)
    samples = scrape(stats)
    assert samples["scalenode_requests_total", labels(route="/a", status="200")] == 2
    assert samples["scalenode_requests_total", labels(route="/a", status="503")] == 1


def test_histogram_buckets_are_cumulative():
    """Each le bucket counts every request at or below its bound; +Inf equals _count."""
    stats = NodeStats()
    route = stats.route("/a")
    for seconds in (0.0003, 0.003, 20.0):
        route.record(200, seconds)
    samples = scrape(stats)

    def bucket(le: str) -> float:
        return samples["scalenode_request_duration_seconds_bucket", labels(route="/a", le=le)]

    assert [bucket("0.0005"), bucket("0.001"), bucket("0.005"), bucket("10.0")] == [1, 1, 2, 2]
    assert bucket("+Inf") == 3
    assert samples["scalenode_request_duration_seconds_count", labels(route="/a")] == 3
    assert samples["scalenode_request_duration_seconds_sum", labels(route="/a")] == pytest.approx(
        20.0033
    )


def test_histogram_exposes_every_bound():
    """The histogram has a bucket per exported bound plus +Inf, even for an idle route."""
    stats = NodeStats()
    stats.route("/idle")
    samples = scrape(stats)
    les = {dict(key)["le"] for name, key in samples if name.endswith("_bucket")}
    assert les == {repr(bound) for bound in EXPORT_BOUNDS} | {"+Inf"}


def test_in_flight_gauge():
    """scalenode_requests_in_flight reports the route's current in-flight count."""
    stats = NodeStats()
    stats.route("/a").in_flight = 4
    assert scrape(stats)["scalenode_requests_in_flight", labels(route="/a")] == 4


def test_route_label_is_the_route_name():
    """Series carry the route label given to NodeStats, not the request path."""
    stats = NodeStats()
    stats.route("users-api").record(200, 0.01)
    assert ("scalenode_requests_total", labels(route="users-api", status="200")) in scrape(stats)


def test_upstream_series_per_member():
    """Upstream members export requests, failure and timeout errors, and in-flight."""
    samples = scrape(NodeStats(), UPSTREAMS)
    member = {"upstream": "users", "member": "http://a:1"}
    assert samples["scalenode_upstream_requests_total", labels(**member)] == 5
    assert samples["scalenode_upstream_errors_total", labels(**member, kind="failure")] == 1
    assert samples["scalenode_upstream_errors_total", labels(**member, kind="timeout")] == 2
    assert samples["scalenode_upstream_in_flight", labels(**member)] == 1


def test_make_registry_adds_process_metrics():
    """The node's registry exposes process metrics next to the node's own series."""
    stats = NodeStats()
    stats.route("/a").record(200, 0.01)
    text = generate_latest(make_registry(NodeCollector("n1", stats, dict))).decode()
    assert "process_cpu_seconds_total" in text
    assert 'scalenode_requests_total{node="n1",route="/a",status="200"} 1.0' in text


def test_resilience_series_per_member_and_pool():
    """Breaker state (one-hot), health, breaker and retry counters, ring share, pool totals."""
    member = {
        "url": "http://a:1",
        "in_flight": 0,
        "requests": 9,
        "failures": 0,
        "timeouts": 0,
        "state": "open",
        "healthy": False,
        "trips": 2,
        "rejections": 7,
        "probes": 1,
        "retries": 3,
        "ring_share": 0.25,
    }
    pool = {"members": [member], "retries": 3, "budget_exhausted": 4, "rejected": 5}
    samples = scrape(NodeStats(), {"users": pool})
    key = {"upstream": "users", "member": "http://a:1"}
    state = "scalenode_upstream_breaker_state"
    assert samples[state, labels(**key, state="open")] == 1
    assert samples[state, labels(**key, state="closed")] == 0
    assert samples["scalenode_upstream_healthy", labels(**key)] == 0
    assert samples["scalenode_upstream_trips_total", labels(**key)] == 2
    assert samples["scalenode_upstream_rejections_total", labels(**key)] == 7
    assert samples["scalenode_upstream_probes_total", labels(**key)] == 1
    assert samples["scalenode_upstream_retries_total", labels(**key)] == 3
    assert samples["scalenode_upstream_ring_share", labels(**key)] == 0.25
    pool_key = labels(upstream="users")
    assert samples["scalenode_upstream_pool_budget_exhausted_total", pool_key] == 4
    assert samples["scalenode_upstream_pool_unavailable_total", pool_key] == 5


@pytest.mark.parametrize("median_ms", [0.08, 0.3, 1.0, 7.0, 120.0])
def test_quantiles_match_the_exact_ones_of_known_samples(median_ms):
    """p50/p95/p99 of 20 000 log-normal latencies, from the buckets, are within 3 % of the
    exact order statistics, from a fast node's tenths of a millisecond to slow ones."""
    rng = random.Random(17)
    samples = sorted(rng.lognormvariate(math.log(median_ms / 1000), 0.6) for _ in range(20_000))
    route = RouteStats("/a")
    for seconds in samples:
        route.record(200, seconds)
    for q in (0.50, 0.95, 0.99):
        exact = samples[math.ceil(q * len(samples)) - 1]
        assert quantile(q, route.buckets) == pytest.approx(exact, rel=0.03), q


def test_quantiles_of_merged_nodes_are_those_of_all_their_samples():
    """Two nodes' buckets summed give the quantiles of the pooled samples (merged exactly)."""
    rng = random.Random(3)
    fast = [rng.uniform(0.0002, 0.0006) for _ in range(9_000)]
    slow = [rng.uniform(0.004, 0.02) for _ in range(1_000)]
    a, b = RouteStats("/a"), RouteStats("/a")
    for seconds in fast:
        a.record(200, seconds)
    for seconds in slow:
        b.record(200, seconds)
    merged = [x + y for x, y in zip(a.buckets, b.buckets, strict=True)]
    pooled = sorted(fast + slow)
    for q in (0.50, 0.95, 0.99):
        exact = pooled[math.ceil(q * len(pooled)) - 1]
        assert quantile(q, merged) == pytest.approx(exact, rel=0.03), q
