"""dashboard/aggregate.py: merged histograms, summed counters, n/N reporting, skew flags."""

from __future__ import annotations

import pytest

from dashboard.aggregate import (
    DOWN_AFTER,
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


def buckets(*pairs: tuple[float | None, int]) -> list[int]:
    """A histogram of (upper bound in seconds, count) pairs; bound None is the +Inf bucket."""
    out = list(EMPTY)
    for bound, count in pairs:
        out[len(LATENCY_BOUNDS) if bound is None else LATENCY_BOUNDS.index(bound)] = count
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
    """Half of 10 observations in (2.25 ms, 2.5 ms] puts p50 at the bucket's lower edge + half."""
    hist = buckets((0.0025, 10))
    assert quantile(0.5, hist) == pytest.approx(0.00225 + 0.00025 * 0.5)
    assert quantile(1.0, hist) == pytest.approx(0.0025)


def test_quantile_of_nothing_is_none():
    """No observations, no quantile (not 0 ms)."""
    assert quantile(0.99, EMPTY) is None


def test_quantile_in_the_inf_bucket_is_the_largest_bound():
    """Observations beyond the last bound report that bound, never infinity."""
    assert quantile(0.99, buckets((None, 5))) == LATENCY_BOUNDS[-1]


def test_cluster_p99_comes_from_merged_buckets_not_averaged_p99s():
    """A fast busy node and a slow quiet one: the merged p99 follows the requests."""
    fast = buckets((0.001, 990))  # 990 requests at (0.95, 1] ms
    slow = buckets((0.5, 10))  # 10 requests at (450, 500] ms
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


def test_each_queue_has_its_own_card_and_ages_are_the_oldest_not_a_sum():
    def entry(queue: str, route: str, depth: int, age: float) -> dict:
        gauges = {"depth": depth, "oldest_job_age_seconds": age}
        return {
            "name": "queue",
            "route": route,
            "scope": queue,
            "card": queue,
            "counters": {"published": 1},
            "cluster_gauges": gauges,
        }

    a = {"plugins": [entry("reports", "/r", 3, 40.0), entry("mail", "/m", 2, 5.0)]}
    b = {"plugins": [entry("reports", "/r", 3, 41.0), entry("mail", "/m", 2, 6.0)]}
    merged = merge_plugins([a, b])
    assert set(merged) == {"queue:reports", "queue:mail"}
    reports = merged["queue:reports"]
    assert (reports["name"], reports["card"]) == ("queue", "reports")
    assert reports["cluster_gauges"] == {"depth": 3, "oldest_job_age_seconds": 41.0}
    assert reports["counters"] == {"published": 2}
    assert merged["queue:mail"]["cluster_gauges"]["oldest_job_age_seconds"] == 6.0

    one_node = merge_plugins(
        [
            {
                "plugins": [
                    {**entry("q", "/a", 1, 30.0), "scope": "q1", "card": None},
                    {**entry("q", "/b", 1, 10.0), "scope": "q2", "card": None},
                ]
            }
        ]
    )["queue"]
    assert one_node["cluster_gauges"] == {"depth": 2, "oldest_job_age_seconds": 30.0}


def test_a_node_goes_stale_then_down_and_stays_listed():
    """Silent past STALE_AFTER: stale; past DOWN_AFTER: down, last seen when it last beat."""
    records = [
        record("a", rps=5),
        record("b", rps=50, age=STALE_AFTER + 0.5),
        record("c", rps=9, age=DOWN_AFTER + 60),
        record("d", rps=9, age=30, left=True),
    ]
    rows, cluster = aggregate(records, NOW)
    assert [r["state"] for r in rows] == ["up", "stale", "down", "left"]
    assert rows[2]["last_seen"] == pytest.approx(NOW - DOWN_AFTER - 60)
    assert cluster["states"] == {"up": ["a"], "stale": ["b"], "down": ["c"], "left": ["d"]}
    assert (cluster["nodes"], cluster["reporting"], cluster["rps"]) == (3, 1, 5)
    assert cluster["partial"] is True  # b is late: the total misses its share


def test_the_registry_age_wins_over_the_node_clock():
    """A node whose wall clock is off still counts as up when its beat is fresh in Redis."""
    skewed = {**record("a", rps=1, age=120), "age": 0.4}
    (row,), _ = aggregate([skewed], NOW)
    assert row["state"] == "up"


def test_an_idle_cluster_has_no_shares_or_error_rate():
    """No traffic: shares and error % are unknown (None, shown as "—"), not 0 %."""
    rows, cluster = aggregate([record("a"), record("b")], NOW)
    assert [r["share"] for r in rows] == [None, None]
    assert cluster["error_pct"] is None


def test_routes_are_summed_across_nodes_with_merged_quantiles():
    """Per route: req/s and statuses add up, p99 from the merged buckets, 4xx/5xx %."""
    index = str(LATENCY_BOUNDS.index(0.001))
    slow = str(LATENCY_BOUNDS.index(0.2))

    def routes(rps, ok, bad, buckets):
        return {
            "/x": {"rps_10s": rps, "status_10s": {"2xx": ok, "4xx": bad}, "buckets_10s": buckets}
        }

    a = record("a", rps=10)
    a["metrics"]["routes"] = routes(10.0, 95, 5, {index: 100})
    b = record("b", rps=30)
    b["metrics"]["routes"] = {
        **routes(20.0, 200, 0, {index: 199, slow: 1}),
        "/y": {"rps_10s": 10.0, "status_10s": {"5xx": 100}, "buckets_10s": {index: 100}},
    }
    _, cluster = aggregate([a, b], NOW)
    x, y = cluster["routes"]
    assert (x["route"], x["rps"], x["nodes"], x["share"]) == ("/x", 30.0, 2, 0.75)
    assert x["client_error_pct"] == pytest.approx(100 * 5 / 300)
    assert x["error_pct"] == 0.0
    assert 0.95 <= x["p50"] <= 1.0  # (0.95, 1] ms: the bucket of all but one
    assert 0.95 <= x["p99"] <= 1.0  # 1 slow request in 300 stays above p99
    assert x["status_rps"]["4xx"] == pytest.approx(0.5)
    assert (y["error_pct"], y["client_error_pct"]) == (100.0, 0.0)


def test_in_flight_is_the_mean_over_the_window():
    """The nodes' mean in-flight (seconds spent answering per second) adds up."""
    a, b = record("a", rps=1), record("b", rps=1)
    a["metrics"]["in_flight_avg"], b["metrics"]["in_flight_avg"] = 2.5, 4.0
    _, cluster = aggregate([a, b], NOW)
    assert cluster["in_flight"] == 6.5
