"""This node's metrics snapshot for its heartbeat: rates, latency and resources, computed
from the counters the hot path already keeps, once a second.

Requests are never touched here: each heartbeat reads the cumulative counters, keeps the
last `WINDOW` readings in a ring, and reports deltas (req/s over 1 s and 10 s, histogram
buckets of the window) so that any node can merge them honestly.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.metrics import LATENCY_BOUNDS, NodeStats, quantile

# Pool-level counters of an upstream snapshot that get per-second rates like the members'.
POOL_COUNTERS = ("retries", "budget_exhausted", "rerouted", "rejected")
WINDOW = 10.0  # seconds of readings kept: the "last 10 s" of every rate
MIN_INTERVAL = 0.04  # seconds; a second caller within this gets the cached snapshot
# Readings closer than this to the one before replace it (the newest is always current), so
# the ring holds about 2 per second of WINDOW whatever the callers' pace.
MIN_SPACING = 0.5
MAX_READINGS = 64
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative counters at one instant."""

    t: float
    cpu: float  # seconds of CPU this process has used
    requests: int
    statuses: tuple[int, ...]  # per STATUS_CLASSES
    buckets: tuple[int, ...]  # per LATENCY_BOUNDS, +Inf last
    counters: dict[str, float]  # "plugin|route|counter", "pool|url|requests", "pool||retries"...
    latency_sum: float = 0.0  # seconds spent answering, all routes
    routes: dict[str, RouteTally] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteTally:
    """One route's cumulative counters at one instant."""

    statuses: tuple[int, ...]  # per STATUS_CLASSES
    buckets: tuple[int, ...]


def status_classes(statuses: dict[int, int]) -> list[int]:
    out = [0] * len(STATUS_CLASSES)
    for status, count in list(statuses.items()):
        out[min(max(status // 100, 1), 5) - 1] += count
    return out


def sparse(buckets: Sequence[int]) -> dict[str, int]:
    """The non-empty buckets as {index: count}: a route's window holds few of the 196."""
    return {str(i): count for i, count in enumerate(buckets) if count}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rate(now: float, then: float, seconds: float) -> float:
    return (now - then) / seconds if seconds > 0 else 0.0


class NodeSampler:
    """Reads `stats`, plugin snapshots and upstream pools; `snapshot()` is the registry hook."""

    def __init__(
        self,
        stats: NodeStats,
        pools: Callable[[], dict[str, dict[str, Any]]],
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.stats = stats
        self.pools = pools
        self.clock = clock
        self.cpu_clock = cpu_clock
        self._ring: deque[Reading] = deque(maxlen=MAX_READINGS)
        self._cached: dict[str, Any] = {}

    def read(self) -> tuple[Reading, list[dict[str, Any]], dict[str, dict[str, Any]]]:
        statuses = [0] * len(STATUS_CLASSES)
        buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        routes: dict[str, RouteTally] = {}
        latency_sum = 0.0
        for route in list(self.stats.routes.values()):
            tally = RouteTally(tuple(status_classes(route.statuses)), tuple(route.buckets))
            routes[route.label] = tally
            statuses = [a + b for a, b in zip(statuses, tally.statuses, strict=True)]
            buckets = [a + b for a, b in zip(buckets, tally.buckets, strict=True)]
            latency_sum += route.latency_sum
        counters: dict[str, float] = {}
        plugins = []
        for route_label, plugin in self.stats.plugins:
            snap = plugin.snapshot()
            plugins.append({"name": plugin.name, "route": route_label, **snap})
            for key, value in snap.get("counters", {}).items():
                counters[f"{plugin.name}|{route_label}|{key}"] = value
        pools = self.pools()
        for pool, snap in pools.items():
            for key in POOL_COUNTERS:
                counters[f"{pool}||{key}"] = snap.get(key, 0)
            for member in snap.get("members", []):
                prefix = f"{pool}|{member['url']}|"
                counters[prefix + "requests"] = member.get("requests", 0)
                counters[prefix + "errors"] = member.get("failures", 0) + member.get("timeouts", 0)
        reading = Reading(
            self.clock(),
            self.cpu_clock(),
            sum(statuses),
            tuple(statuses),
            tuple(buckets),
            counters,
            latency_sum,
            routes,
        )
        return reading, plugins, pools

    def snapshot(self) -> dict[str, Any]:
        """The heartbeat's metrics part: `metrics`, `plugins` and `upstreams`."""
        if self._ring and self.clock() - self._ring[-1].t < MIN_INTERVAL and self._cached:
            return self._cached
        now, plugins, pools = self.read()
        ring = self._ring
        if len(ring) >= 2 and ring[-1].t - ring[-2].t < MIN_SPACING:
            ring.pop()
        ring.append(now)
        while len(ring) > 2 and ring[1].t <= now.t - WINDOW:
            ring.popleft()  # the oldest kept is the last one at least WINDOW old
        first = ring[0]
        last = next((r for r in reversed(ring) if r.t <= now.t - 1.0), first)
        span, span_1s = now.t - first.t, now.t - last.t
        window_buckets = [a - b for a, b in zip(now.buckets, first.buckets, strict=True)]
        metrics = {
            "window": round(span, 3),
            "rps_1s": rate(now.requests, last.requests, span_1s),
            "rps_10s": rate(now.requests, first.requests, span),
            "requests": now.requests,
            "status_10s": {
                name: a - b
                for name, a, b in zip(STATUS_CLASSES, now.statuses, first.statuses, strict=True)
            },
            "buckets_1s": [a - b for a, b in zip(now.buckets, last.buckets, strict=True)],
            "buckets_10s": window_buckets,
            "p50": ms(quantile(0.50, window_buckets)),
            "p95": ms(quantile(0.95, window_buckets)),
            "p99": ms(quantile(0.99, window_buckets)),
            "in_flight": self.stats.in_flight(),
            # Little's law: requests in the node on average = seconds spent answering per
            # second. A handler that never awaits is never "in flight" when this code runs,
            # so the instantaneous count reads 0 under any load; this one does not.
            "in_flight_avg": rate(now.latency_sum, first.latency_sum, span),
            "rss_bytes": rss_bytes(),
            "cpu_percent": 100.0 * rate(now.cpu, first.cpu, span) if span > 0 else 0.0,
        }
        metrics["routes"] = route_windows(now, first, span)
        for entry in plugins:
            entry["rates"] = {
                key: rate(
                    value,
                    first.counters.get(f"{entry['name']}|{entry['route']}|{key}", value),
                    span,
                )
                for key, value in entry.get("counters", {}).items()
            }
        for pool, snap in pools.items():
            snap["rates"] = {
                key: rate(
                    now.counters[f"{pool}||{key}"], first.counters.get(f"{pool}||{key}", 0), span
                )
                for key in POOL_COUNTERS
            }
            for member in snap.get("members", []):
                prefix = f"{pool}|{member['url']}|"
                member["rates"] = {
                    key: rate(now.counters[prefix + key], first.counters.get(prefix + key, 0), span)
                    for key in ("requests", "errors")
                }
        self._cached = {"metrics": metrics, "plugins": plugins, "upstreams": pools}
        return self._cached


def route_windows(now: Reading, first: Reading, span: float) -> dict[str, dict[str, Any]]:
    """Per route over the window: req/s, status classes and latency buckets (sparse), the
    parts a cluster merges exactly."""
    out = {}
    empty = RouteTally((0,) * len(STATUS_CLASSES), (0,) * (len(LATENCY_BOUNDS) + 1))
    for label, tally in now.routes.items():
        before = first.routes.get(label, empty)
        status = [a - b for a, b in zip(tally.statuses, before.statuses, strict=True)]
        out[label] = {
            "rps_10s": rate(sum(status), 0, span),
            "status_10s": dict(zip(STATUS_CLASSES, status, strict=True)),
            "buckets_10s": sparse(
                [a - b for a, b in zip(tally.buckets, before.buckets, strict=True)]
            ),
        }
    return out


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0
