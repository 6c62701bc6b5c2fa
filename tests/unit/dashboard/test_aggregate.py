"""dashboard/aggregate.py: merged histograms, summed counters, n/N reporting, skew flags."""

from __future__ import annotations

import pytest

from dashboard.aggregate import (
    STALE_AFTER,
    SkewTracker,
    aggregate,
    merge_buckets,
    merge_plugins,
    quantile,
)
from node.metrics import LATENCY_BOUNDS

NOW = 1_000_000.0
EMPTY = [0] * (len(LATENCY_BOUNDS) + 1)


def buckets(**counts: int) -> list[int]:
    """A histogram with `counts` keyed by bound index: buckets(b3=10) puts 10 in bucket 3."""
    out = list(EMPTY)
    for key, count in counts.items():
        out[int(key[1:])] = count
    return out


def record(name: str, *, rps: float = 0.0, hist=None, status=None, age: float = 0.5, **extra):
    return {
        "name": name,
        "role": "gateway",
        "heartbeat": NOW - age,
        "started": NOW - 100,
        "metrics": {
            "rps_10s": rps,
            "rps_1s": rps,
            "requests": int(rps * 10),
            "buckets_10s": hist or list(EMPTY),
            "status_10s": status or {"2xx": int(rps * 10)},
            "in_flight": 1,
            "cpu_percent": extra.pop("cpu", 10.0),
            "rss_bytes": 100,
        },
        **extra,
    }


def test_quantile_interpolates_inside_the_bucket():
    """Half of 10 observations in (1 ms, 2.5 ms] puts p50 at the bucket's lower edge + half."""
    hist = buckets(b2=10)  # (0.001, 0.0025]
    assert quantile(0.5, hist) == pytest.approx(0.001 + 0.0015 * 0.5)
    assert quantile(1.0, hist) == pytest.approx(0.0025)


def test_quantile_of_nothing_is_none():
    """No observations, no quantile (not 0 ms)."""
    assert quantile(0.99, EMPTY) is None


def test_quantile_in_the_inf_bucket_is_the_largest_bound():
    """Observations beyond the last bound report that bound, never infinity."""
    assert quantile(0.99, buckets(b14=5)) == LATENCY_BOUNDS[-1]


def test_cluster_p99_comes_from_merged_buckets_not_averaged_p99s():
    """A fast busy node and a slow quiet one: the merged p99 follows the requests."""
    fast = buckets(b1=990)  # 990 requests at <= 1 ms
    slow = buckets(b9=10)  # 10 requests at (250, 500] ms
    _, cluster = aggregate([record("a", rps=99, hist=fast), record("b", rps=1, hist=slow)], NOW)
    merged = merge_buckets([fast, slow])
    assert cluster["p99"] == pytest.approx(quantile(0.99, merged) * 1000)
    assert cluster["p99"] <= 1.0  # an average of per-node p99s would say ~250 ms


def test_counters_and_rates_are_summed():
    """Requests/s, in-flight and status counts add up across nodes."""
    records = [
        record("a", rps=10, status={"2xx": 90, "5xx": 10}),
        record("b", rps=30, status={"2xx": 300}),
    ]
    _, cluster = aggregate(records, NOW)
    assert cluster["rps"] == 40
    assert cluster["in_flight"] == 2
    assert cluster["status_10s"] == {"2xx": 390, "5xx": 10}
    assert cluster["error_pct"] == pytest.approx(100 * 10 / 400)


def test_stale_nodes_are_counted_but_not_reporting():
    """A node past STALE_AFTER shows in the count, greyed, and leaves the totals: 1/2 reporting."""
    rows, cluster = aggregate([record("a", rps=5), record("b", rps=50, age=STALE_AFTER + 1)], NOW)
    assert (cluster["nodes"], cluster["reporting"], cluster["healthy"]) == (2, 1, 1)
    assert cluster["rps"] == 5
    assert [row["stale"] for row in rows] == [False, True]


def test_share_against_fair_share():
    """Each reporting node's share of the cluster's req/s, beside the fair 1/N."""
    rows, _ = aggregate([record("a", rps=30), record("b", rps=10)], NOW)
    assert [(r["share"], r["fair"]) for r in rows] == [(0.75, 0.5), (0.25, 0.5)]


def test_plugins_are_summed_by_name_and_route():
    """Any plugin's counters are summed per plugin and per route, whatever its name."""

    def plugin(name, route, **counters):
        return {"name": name, "route": route, "counters": counters, "gauges": {}, "rates": {}}

    a = record("a", plugins=[plugin("ratelimit", "/x", allowed=5, limited=1)])
    b = record("b", plugins=[plugin("ratelimit", "/x", allowed=7), plugin("stamp", "/y", seen=2)])
    _, cluster = aggregate([a, b], NOW)
    plugins = cluster["plugins"]
    assert plugins["ratelimit"]["counters"] == {"allowed": 12, "limited": 1}
    assert plugins["ratelimit"]["nodes"] == 2
    assert plugins["ratelimit"]["routes"]["/x"]["counters"]["allowed"] == 12
    assert plugins["stamp"]["counters"] == {"seen": 2}


def test_breaker_state_is_k_of_n_nodes_and_absent_state_is_closed():
    """One node sees the member open, the other reports no breaker: 1 of 2 nodes open."""

    def pool(**member):
        base = {"url": "http://u:1", "in_flight": 0, "rates": {"requests": 10.0, "errors": 1.0}}
        return {"users": {"balance": "round_robin", "members": [{**base, **member}]}}

    a = record("a", upstreams=pool(state="open", healthy=False))
    b = record("b", upstreams=pool())
    _, cluster = aggregate([a, b], NOW)
    member = cluster["upstreams"]["users"]["members"][0]
    assert (member["open"], member["nodes"], member["unhealthy"]) == (1, 2, 1)
    assert member["rps"] == 20.0
    assert member["error_pct"] == pytest.approx(10.0)


def test_skew_is_flagged_after_a_streak():
    """A node far from its fair share is flagged only after SKEW_STREAK frames in a row."""
    tracker = SkewTracker()
    flags = []
    for _ in range(3):
        rows, cluster = aggregate([record("a", rps=95), record("b", rps=5)], NOW)
        tracker.update(rows, cluster["rps"])
        flags.append([row["skewed"] for row in rows])
    assert flags == [[False, False], [False, False], [True, True]]


def test_pool_counters_are_summed_and_ring_deviation_is_the_worst():
    """Retries, budget exhaustion, reroutes and rejections (totals and rates) add up across
    nodes, as do each member's trips and rejections; the ring's deviation is the worst one."""

    def pool(deviation, retries, exhausted, trips):
        member = {"url": "http://u:1", "in_flight": 0, "trips": trips, "rejections": 2 * trips}
        return {
            "shop": {
                "balance": "hash",
                "retries": retries,
                "budget_exhausted": exhausted,
                "rerouted": 1,
                "rejected": 0,
                "ring_max_deviation": deviation,
                "rates": {"retries": retries / 10, "budget_exhausted": exhausted / 10},
                "members": [member],
            }
        }

    a = record("a", upstreams=pool(0.03, retries=20, exhausted=0, trips=1))
    b = record("b", upstreams=pool(0.06, retries=10, exhausted=5, trips=2))
    c = record("c", upstreams={"other": {"balance": "round_robin", "members": []}})
    _, cluster = aggregate([a, b, c], NOW)
    shop = cluster["upstreams"]["shop"]
    assert shop["counters"] == {"retries": 30, "budget_exhausted": 5, "rerouted": 2, "rejected": 0}
    assert shop["rates"]["retries"] == pytest.approx(3.0)
    assert shop["rates"]["budget_exhausted"] == pytest.approx(0.5)
    assert shop["rates"]["rerouted"] == 0.0  # absent rates count as none
    assert shop["ring_max_deviation"] == 0.06
    (member,) = shop["members"]
    assert (member["trips"], member["rejections"], member["probes"]) == (3, 6, 0)
    other = cluster["upstreams"]["other"]
    assert other["ring_max_deviation"] is None  # not a hash pool: no ring to judge
    assert other["counters"]["retries"] == 0


def test_cluster_gauges_count_each_queue_once_however_many_nodes_and_routes_read_it():
    """Two nodes, each with two routes on queue "a" and one on "b": the depth of "a" read by
    every node's every route is one queue's depth, not four; queues add up."""

    def record(depth_a: int, depth_b: int) -> dict:
        def entry(route: str, scope: str, depth: int) -> dict:
            return {
                "name": "queue",
                "route": route,
                "scope": scope,
                "counters": {"published": 1},
                "cluster_gauges": {"depth": depth},
            }

        entries = [
            entry("/r1", "a", depth_a),
            entry("/r2", "a", depth_a),
            entry("/r3", "b", depth_b),
        ]
        return {"plugins": entries}

    merged = merge_plugins([record(10, 5), record(12, 5)])["queue"]
    assert merged["cluster_gauges"] == {"depth": 17}  # the freshest reading of a, plus b
    assert merged["counters"] == {"published": 6}  # counters are each node's own: summed
