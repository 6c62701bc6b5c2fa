"""Request statistics kept in plain attributes on the hot path and exported at scrape time.

prometheus-client's own `observe()` + `inc()` per request would cost ~8 % of a request's
CPU, so routes count into `RouteStats` and `NodeCollector` turns them into metric
families only when /metrics is read.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


def log_linear_bounds(lowest: float, highest: float) -> tuple[float, ...]:
    """Upper bounds from `lowest` to `highest` seconds, log-linear: each decade
    [10^k, 10^k+1) in linear steps of 0.1, 0.25 and 0.5 x 10^k (from 1, 2 and 5 on), so a
    bucket is at most 12.5 % wide and 1, 2.5 and 5 x 10^k are all bounds."""
    steps = [1 + i / 10 for i in range(10)] + [2 + i / 4 for i in range(12)]
    steps += [5 + i / 2 for i in range(10)]
    bounds = []
    exponent = math.floor(math.log10(lowest))
    while True:
        for step in steps:
            bound = float(f"{step}e{exponent}")  # decimal: 0.0025, not 0.0025000000000000005
            if bound > highest * (1 + 1e-9):
                return tuple(bounds)
            if bound >= lowest * (1 - 1e-9):
                bounds.append(bound)
        exponent += 1


# The histogram every route keeps (and heartbeats merge across nodes): 50 us to 60 s, fine
# enough that a sub-millisecond node's quantiles are not all "the first bucket"; the last
# bucket is +Inf.
LATENCY_BOUNDS = log_linear_bounds(50e-6, 60.0)
# What /metrics exports: the classic Prometheus-style bounds, each one also a fine bound,
# so folding the fine buckets into these is exact (and a scrape stays small).
EXPORT_BOUNDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
EXPORT_EDGES = tuple(LATENCY_BOUNDS.index(bound) for bound in EXPORT_BOUNDS)


def fold(buckets: Sequence[int]) -> list[int]:
    """Fine buckets (per LATENCY_BOUNDS, +Inf last) summed into EXPORT_BOUNDS' (+Inf last)."""
    out, start = [], 0
    for edge in EXPORT_EDGES:
        out.append(sum(buckets[start : edge + 1]))
        start = edge + 1
    out.append(sum(buckets[start:]))
    return out


MEMBER_COUNTERS = {
    "trips": "Times the member's circuit opened.",
    "rejections": "Calls its open circuit turned away from the member.",
    "probes": "Half-open trial calls sent to the member.",
    "retries": "Retries sent to the member after another one failed.",
}
POOL_COUNTERS = {  # snapshot key: (metric name, help)
    "retries": ("retries", "Retries sent by the pool."),
    "budget_exhausted": ("budget_exhausted", "Retries the retry budget did not allow."),
    "rejected": ("unavailable", "Calls answered 503: no member could take them."),
    "rerouted": ("rerouted", "Keyed calls sent past their key's ring owner (open, ejected, busy)."),
}


class RouteStats:
    __slots__ = ("buckets", "in_flight", "label", "latency_sum", "statuses")

    def __init__(self, label: str) -> None:
        self.label = label
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.in_flight = 0

    def record(self, status: int, seconds: float) -> None:
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds


class NodeStats:
    """All of one node's request statistics, one `RouteStats` per route label."""

    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.plugins: list[tuple[str, Any]] = []  # (route label, plugin), for snapshots

    def in_flight(self) -> int:
        return sum(route.in_flight for route in self.routes.values())

    def route(self, label: str) -> RouteStats:
        return self.routes.setdefault(label, RouteStats(label))


PLUGIN_VALUE_KINDS = (
    ("counters", CounterMetricFamily),
    ("gauges", GaugeMetricFamily),
    ("cluster_gauges", GaugeMetricFamily),
)


def add_plugin_values(
    families: dict[str, Metric],
    plugin: str,
    prefix: str,
    values: dict[str, Any],
    labels: dict[str, str],
) -> None:
    """Add one snapshot part's counters and gauges to their metric families, but those its
    `dashboard_only` names (per member copies for a card, which `by_member` labels here)."""
    left_out = values.get("dashboard_only", ())
    for kind, family_type in PLUGIN_VALUE_KINDS:
        for key, value in values.get(kind, {}).items():
            if key in left_out:
                continue
            name = f"scalenode_{plugin}_{prefix}{key}"
            family = families.get(name)
            if family is None:
                about = "per member: " if prefix else ""
                family = family_type(
                    name, f"{plugin} plugin: {about}{key.replace('_', ' ')}.", labels=list(labels)
                )
                families[name] = family
            family.add_metric(list(labels.values()), value)


class NodeCollector:
    """A prometheus-client collector reading `NodeStats` and the upstream pools' snapshots."""

    def __init__(
        self,
        node: str,
        stats: NodeStats,
        upstreams: Callable[[], dict[str, dict[str, Any]]],
    ) -> None:
        self.node = node
        self.stats = stats
        self.upstreams = upstreams

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "route"]
        requests = CounterMetricFamily(
            "scalenode_requests",
            "Requests answered, by route and status.",
            labels=[*labels, "status"],
        )
        latency = HistogramMetricFamily(
            "scalenode_request_duration_seconds", "Time to answer, by route.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "scalenode_requests_in_flight", "Requests being answered now.", labels=labels
        )
        for route in list(self.stats.routes.values()):
            key = [self.node, route.label]
            for status, count in sorted(route.statuses.items()):
                requests.add_metric([*key, str(status)], count)
            cumulative, running = [], 0
            exported = fold(route.buckets)
            for bound, count in zip((*EXPORT_BOUNDS, float("inf")), exported, strict=True):
                running += count
                cumulative.append((repr(bound) if bound != float("inf") else "+Inf", running))
            latency.add_metric(key, cumulative, route.latency_sum)
            in_flight.add_metric(key, route.in_flight)
        yield from (requests, latency, in_flight)
        yield from self.collect_upstreams()
        yield from self.collect_plugins()

    def collect_plugins(self) -> Iterator[Metric]:
        """Each plugin's snapshot: `counters` become `scalenode_<plugin>_<name>_total`,
        `gauges` and `cluster_gauges` become `scalenode_<plugin>_<name>`, labelled by node
        and route, and by the snapshot's `labels` (the same keys on every route of a plugin:
        the queue's `queue`). A cluster gauge reads the same on every node: take its max.
        `by_member` (a store's shards) gives `scalenode_<plugin>_member_<name>` with a
        `member` label; `dashboard_only` names values left out (the card's copies of those)."""
        families: dict[str, Metric] = {}
        for route, plugin in self.stats.plugins:
            snapshot = plugin.snapshot()
            extra = snapshot.get("labels") or {}
            labels = {
                "node": self.node,
                "route": route,
                **{k: str(extra[k]) for k in sorted(extra)},
            }
            add_plugin_values(families, plugin.name, "", snapshot, labels)
            for member, parts in snapshot.get("by_member", {}).items():
                member_labels = {"node": self.node, "route": route, "member": member}
                add_plugin_values(families, plugin.name, "member_", parts, member_labels)
        yield from families.values()

    def collect_upstreams(self) -> Iterator[Metric]:
        labels = ["node", "upstream", "member"]
        sent = CounterMetricFamily(
            "scalenode_upstream_requests", "Requests sent to an upstream member.", labels=labels
        )
        errors = CounterMetricFamily(
            "scalenode_upstream_errors",
            "Upstream exchanges that failed: kind=failure (502) or timeout (504).",
            labels=[*labels, "kind"],
        )
        busy = GaugeMetricFamily(
            "scalenode_upstream_in_flight", "Requests waiting on an upstream member.", labels=labels
        )
        snapshots = self.upstreams()
        for pool, snapshot in snapshots.items():
            for member in snapshot["members"]:
                key = [self.node, pool, member["url"]]
                sent.add_metric(key, member["requests"])
                errors.add_metric([*key, "failure"], member["failures"])
                errors.add_metric([*key, "timeout"], member["timeouts"])
                busy.add_metric(key, member["in_flight"])
        yield from (sent, errors, busy)
        yield from self.collect_resilience(snapshots)

    def collect_resilience(self, snapshots: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        """Breaker state, health, trips, rejections, trials, retries and ring shares per
        member; retries, exhausted budget, 503s and ring balance per pool."""
        families = resilience_families()
        for pool, snapshot in snapshots.items():
            key = [self.node, pool]
            for field, (name, _) in POOL_COUNTERS.items():
                families[f"pool_{name}"].add_metric(key, snapshot.get(field, 0))
            if snapshot.get("ring_max_deviation") is not None:
                families["pool_ring_max_deviation"].add_metric(key, snapshot["ring_max_deviation"])
            for member in snapshot["members"]:
                add_member([self.node, pool, member["url"]], member, families)
        yield from families.values()


Families = dict[str, GaugeMetricFamily | CounterMetricFamily]


def resilience_families() -> Families:
    """The resilience metric families, by name without the `scalenode_upstream_` prefix."""
    member, pool = ["node", "upstream", "member"], ["node", "upstream"]
    families: Families = {
        "breaker_state": GaugeMetricFamily(
            "scalenode_upstream_breaker_state",
            "1 for the member's circuit state (closed, open, half_open).",
            labels=[*member, "state"],
        ),
        "healthy": GaugeMetricFamily(
            "scalenode_upstream_healthy", "1 unless health checks ejected it.", labels=member
        ),
        "ring_share": GaugeMetricFamily(
            "scalenode_upstream_ring_share", "The member's share of the hash ring.", labels=member
        ),
        "pool_ring_max_deviation": GaugeMetricFamily(
            "scalenode_upstream_pool_ring_max_deviation",
            "The hash ring's worst member share against its weighted fair one (0.06 = 6 % off).",
            labels=pool,
        ),
    }
    for key, help_text in MEMBER_COUNTERS.items():
        families[key] = CounterMetricFamily(f"scalenode_upstream_{key}", help_text, labels=member)
    for name, help_text in POOL_COUNTERS.values():
        families[f"pool_{name}"] = CounterMetricFamily(
            f"scalenode_upstream_pool_{name}", help_text, labels=pool
        )
    return families


def add_member(names: list[str], member: dict[str, Any], families: Families) -> None:
    current = member.get("state", "closed")
    for state in ("closed", "open", "half_open"):
        families["breaker_state"].add_metric([*names, state], 1 if state == current else 0)
    families["healthy"].add_metric(names, 1 if member.get("healthy", True) else 0)
    for key in MEMBER_COUNTERS:
        families[key].add_metric(names, member.get(key, 0))
    if member.get("ring_share") is not None:
        families["ring_share"].add_metric(names, member["ring_share"])


def make_registry(collector: NodeCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def quantile(q: float, buckets: Sequence[int], bounds: Sequence[float] = LATENCY_BOUNDS):
    """The q-quantile (seconds) of a histogram whose `buckets` count per upper bound
    (`bounds`, then +Inf), interpolated linearly inside the bucket as Prometheus's
    histogram_quantile does; None without observations."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            if i >= len(bounds):  # the +Inf bucket: the largest finite bound is all we know
                return float(bounds[-1])
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return float(bounds[-1])
