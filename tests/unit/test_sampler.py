"""node/sampler.py: rates over 1 s and 10 s from cumulative counters, with a fake clock."""

from __future__ import annotations

import pytest

from node.metrics import NodeStats
from node.sampler import NodeSampler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting:
    name = "stamp"

    def __init__(self) -> None:
        self.counters = {"seen": 0}

    def snapshot(self) -> dict:
        return {"counters": dict(self.counters), "gauges": {"open": 1}}


def test_rates_over_one_and_ten_seconds():
    """10 requests a second for 10 s, then 50 in the last second: 10 s and 1 s rates differ."""
    stats, clock, cpu = NodeStats(), Clock(), Clock()
    sampler = NodeSampler(stats, dict, clock=clock, cpu_clock=cpu)
    route = stats.route("/a")
    sampler.snapshot()
    for _ in range(9):
        clock.now += 1.0
        for _ in range(10):
            route.record(200, 0.002)
        sampler.snapshot()
    clock.now += 1.0
    for _ in range(50):
        route.record(503, 0.2)
    metrics = sampler.snapshot()["metrics"]
    assert metrics["rps_1s"] == pytest.approx(50.0)
    assert metrics["rps_10s"] == pytest.approx(14.0)
    assert metrics["status_10s"]["2xx"] == 90
    assert metrics["status_10s"]["5xx"] == 50
    assert sum(metrics["buckets_10s"]) == 140
    assert sum(metrics["buckets_1s"]) == 50
    assert metrics["p99"] == pytest.approx(200.0, rel=0.05)


def test_old_readings_leave_the_window():
    """Traffic older than 10 s no longer counts in the 10 s rate."""
    stats, clock = NodeStats(), Clock()
    sampler = NodeSampler(stats, dict, clock=clock, cpu_clock=Clock())
    route = stats.route("/a")
    sampler.snapshot()
    for _ in range(100):
        route.record(200, 0.001)
    for _ in range(15):
        clock.now += 1.0
        sampler.snapshot()
    metrics = sampler.snapshot()["metrics"]
    assert metrics["rps_10s"] == 0.0
    assert metrics["window"] == pytest.approx(10.0)


def test_plugin_snapshots_carry_their_rates():
    """Each plugin's counters come with per-second rates over the window."""
    stats, clock = NodeStats(), Clock()
    plugin = Counting()
    stats.plugins.append(("/a", plugin))
    sampler = NodeSampler(stats, dict, clock=clock, cpu_clock=Clock())
    sampler.snapshot()
    clock.now += 2.0
    plugin.counters["seen"] = 8
    (entry,) = sampler.snapshot()["plugins"]
    assert entry == {
        "name": "stamp",
        "route": "/a",
        "counters": {"seen": 8},
        "gauges": {"open": 1},
        "rates": {"seen": 4.0},
    }


def test_cpu_percent_from_process_time():
    """Half a CPU second over one wall second is 50 %."""
    stats, clock, cpu = NodeStats(), Clock(), Clock()
    sampler = NodeSampler(stats, dict, clock=clock, cpu_clock=cpu)
    sampler.snapshot()
    clock.now += 1.0
    cpu.now += 0.5
    assert sampler.snapshot()["metrics"]["cpu_percent"] == pytest.approx(50.0)


def test_upstream_pools_carry_pool_and_member_rates():
    """A pool's retries, budget exhaustion, reroutes and rejections get per-second rates."""
    stats, clock = NodeStats(), Clock()
    counts = {"retries": 0, "budget_exhausted": 0, "rerouted": 0, "rejected": 0}
    member = {"url": "http://u:1", "requests": 0, "failures": 0, "timeouts": 0}

    def pools() -> dict:
        return {"shop": {**counts, "members": [dict(member)]}}

    sampler = NodeSampler(stats, pools, clock=clock, cpu_clock=Clock())
    sampler.snapshot()
    clock.now += 2.0
    counts.update(retries=6, budget_exhausted=2, rejected=4)
    member.update(requests=20, timeouts=1)
    shop = sampler.snapshot()["upstreams"]["shop"]
    assert shop["rates"] == {
        "retries": 3.0,
        "budget_exhausted": 1.0,
        "rerouted": 0.0,
        "rejected": 2.0,
    }
    assert shop["members"][0]["rates"] == {"requests": 10.0, "errors": 0.5}


def test_routes_and_mean_in_flight_over_the_window():
    """Per route: req/s, status classes and sparse buckets of the window; the mean in-flight
    is the time spent answering per second (Little's law), not the count at sampling time."""
    stats, clock = NodeStats(), Clock()
    sampler = NodeSampler(stats, dict, clock=clock, cpu_clock=Clock())
    a, b = stats.route("/a"), stats.route("/b")
    sampler.snapshot()
    clock.now += 10.0
    for _ in range(100):
        a.record(200, 0.05)  # 100 x 50 ms in 10 s: 0.5 requests in the node on average
    b.record(404, 0.001)
    metrics = sampler.snapshot()["metrics"]
    assert metrics["in_flight"] == 0
    assert metrics["in_flight_avg"] == pytest.approx(0.5 + 0.0001)
    route_a, route_b = metrics["routes"]["/a"], metrics["routes"]["/b"]
    assert route_a["rps_10s"] == pytest.approx(10.0)
    assert route_b["status_10s"]["4xx"] == 1
    assert sum(route_a["buckets_10s"].values()) == 100
    assert len(route_a["buckets_10s"]) == 1  # sparse: only the bucket that holds them


def test_the_ring_stays_bounded_at_any_pace():
    """Snapshots every 50 ms keep readings about 0.5 s apart: a couple of dozen, not hundreds."""
    stats, clock = NodeStats(), Clock()
    sampler = NodeSampler(stats, dict, clock=clock, cpu_clock=Clock())
    for _ in range(1000):
        clock.now += 0.05
        sampler.snapshot()
    assert len(sampler._ring) <= 25
