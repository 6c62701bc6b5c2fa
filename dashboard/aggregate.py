"""Cluster aggregation of heartbeat records: pure functions with explicit inputs.

Honest by construction: counters and rates are summed, latency histogram buckets are
merged and only then turned into quantiles (never an average of p99s), and every
aggregate says how many of the known nodes it covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from node.metrics import LATENCY_BOUNDS, quantile

# Seconds since a node's last heartbeat before it is stale (greyed, out of the totals: a
# busy machine's beat can be a second or two late), then down (red, kept listed). Down
# comes within 4 s + one frame of a kill: the page says so within 5 s.
STALE_AFTER = 2.5
DOWN_AFTER = 4.0
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MAX_ROUTES = 200  # routes in one frame; a frame stays small whatever the config
NODE_STATES = ("up", "stale", "down", "left")
SKEW_LOW, SKEW_HIGH = 0.5, 1.5  # a share outside [0.5, 1.5] x fair is off balance
SKEW_STREAK = 3  # ... for this many consecutive frames before it is flagged
SKEW_MIN_RPS = 1.0  # below this much cluster traffic, shares say nothing


def merge_buckets(histograms: Iterable[Sequence[int]], size: int = len(LATENCY_BOUNDS) + 1):
    """Bucket-wise sum of histograms with the same bounds."""
    merged = [0] * size
    for buckets in histograms:
        for i, count in enumerate(buckets[:size]):
            merged[i] += count
    return merged


def error_percent(status: Mapping[str, int], kind: str = "5xx") -> float | None:
    """Answers of `kind` as a percentage of all answers; None without answers."""
    total = sum(status.values())
    return 100.0 * status.get(kind, 0) / total if total else None


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def node_state(record: Mapping[str, Any], age: float) -> str:
    if record.get("left"):
        return "left"
    if age > DOWN_AFTER:
        return "down"
    return "stale" if age > STALE_AFTER else "up"


def node_row(record: Mapping[str, Any], now: float) -> dict[str, Any]:
    """One node's table row from its heartbeat record. `age` (the registry's, by Redis's
    clock) wins over the record's own wall-clock `heartbeat`."""
    metrics = record.get("metrics") or {}
    age = record.get("age")
    if age is None:
        age = max(0.0, now - float(record.get("heartbeat", now)))
    state = node_state(record, age)
    return {
        "name": record.get("name", "?"),
        "role": record.get("role", "?"),
        "address": record.get("address", ""),
        "version": record.get("version", ""),
        "pid": record.get("pid"),
        "started": record.get("started"),
        "uptime": max(0.0, now - float(record.get("started", now))),
        "age": age,
        "last_seen": now - age,
        "state": state,
        "stale": state != "up",
        "reporting": bool(metrics) and state == "up",
        "rps": metrics.get("rps_10s", 0.0),
        "rps_1s": metrics.get("rps_1s", 0.0),
        "p50": metrics.get("p50"),
        "p95": metrics.get("p95"),
        "p99": metrics.get("p99"),
        "error_pct": error_percent(metrics.get("status_10s", {})),
        "in_flight": metrics.get("in_flight_avg", metrics.get("in_flight", 0)),
        "cpu_percent": metrics.get("cpu_percent", 0.0),
        "rss_bytes": metrics.get("rss_bytes", 0),
        "share": None,
        "fair": None,
        "skewed": False,
    }


def add(into: dict[str, float], values: Mapping[str, float]) -> None:
    for key, value in values.items():
        if isinstance(value, int | float):
            into[key] = into.get(key, 0) + value


AGE_SUFFIX = "_age_seconds"  # cluster gauges that are ages: merged by max


def merge_plugins(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Plugin snapshots summed per plugin name, and per route within it.

    `cluster_gauges` are values every node reads from a shared backend (a queue's depth):
    summing them over nodes would count one queue N times. Each node's are summed once per
    `scope` (the queue), and the cluster shows the largest node's reading; ages
    (`*_age_seconds`) are the oldest, never a sum. A snapshot with a `card` (a queue's
    name) gets a card of its own, keyed `name:card`, with `name` and `card` in it."""
    plugins: dict[str, Any] = {}
    for record in records:
        seen: set[str] = set()
        scoped: dict[str, dict[tuple[str, str], float]] = {}  # plugin -> (scope, key) -> value
        for entry in record.get("plugins", []):
            kind = entry.get("name", "?")
            card = entry.get("card")
            name = kind if card is None else f"{kind}:{card}"
            merged = plugins.setdefault(
                name,
                {
                    "name": kind,
                    "card": card,
                    "nodes": 0,
                    "counters": {},
                    "rates": {},
                    "gauges": {},
                    "cluster_gauges": {},
                    "routes": {},
                },
            )
            scope = str(entry.get("scope", entry.get("route", "?")))
            for key, value in entry.get("cluster_gauges", {}).items():
                if isinstance(value, int | float):
                    scoped.setdefault(name, {})[(scope, key)] = value
            if name not in seen:
                seen.add(name)
                merged["nodes"] += 1
            route = merged["routes"].setdefault(
                entry.get("route", "?"), {"counters": {}, "rates": {}}
            )
            for kind in ("counters", "rates", "gauges"):
                add(merged[kind], entry.get(kind, {}))
            add(route["counters"], entry.get("counters", {}))
            add(route["rates"], entry.get("rates", {}))
        for name, values in scoped.items():
            node_total: dict[str, float] = {}
            for (_, key), value in values.items():
                if key.endswith(AGE_SUFFIX):  # the oldest of the scopes, not their sum
                    node_total[key] = max(node_total.get(key, value), value)
                else:
                    node_total[key] = node_total.get(key, 0) + value
            cluster = plugins[name]["cluster_gauges"]
            for key, value in node_total.items():
                cluster[key] = max(cluster.get(key, value), value)
    return plugins


POOL_COUNTERS = ("retries", "budget_exhausted", "rerouted", "rejected")
MEMBER_COUNTERS = ("trips", "rejections", "probes")


def merge_upstreams(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per pool and member: summed rates and counters, error %, breaker state as "k of N
    nodes", and the ring's balance as the worst deviation any node reports."""
    pools: dict[str, Any] = {}
    for record in records:
        for pool, snap in (record.get("upstreams") or {}).items():
            merged = pools.setdefault(
                pool,
                {
                    "balance": snap.get("balance", ""),
                    "nodes": 0,
                    "counters": dict.fromkeys(POOL_COUNTERS, 0),
                    "rates": dict.fromkeys(POOL_COUNTERS, 0.0),
                    "ring_max_deviation": None,
                    "members": {},
                },
            )
            merged["nodes"] += 1
            for key in POOL_COUNTERS:
                merged["counters"][key] += snap.get(key) or 0
                merged["rates"][key] += (snap.get("rates") or {}).get(key, 0.0)
            deviation = snap.get("ring_max_deviation")
            if deviation is not None:
                worst = merged["ring_max_deviation"]
                merged["ring_max_deviation"] = deviation if worst is None else max(worst, deviation)
            for member in snap.get("members", []):
                m = merged["members"].setdefault(
                    member["url"],
                    {
                        "url": member["url"],
                        "nodes": 0,
                        "open": 0,
                        "half_open": 0,
                        "unhealthy": 0,
                        "rps": 0.0,
                        "errors_rps": 0.0,
                        "in_flight": 0,
                        **dict.fromkeys(MEMBER_COUNTERS, 0),
                    },
                )
                state = member.get("state", "closed")  # before breakers: always closed
                m["nodes"] += 1
                m["open"] += state == "open"
                m["half_open"] += state == "half_open"
                m["unhealthy"] += not member.get("healthy", True)
                rates = member.get("rates", {})
                m["rps"] += rates.get("requests", 0.0)
                m["errors_rps"] += rates.get("errors", 0.0)
                m["in_flight"] += member.get("in_flight", 0)
                for key in MEMBER_COUNTERS:
                    m[key] += member.get(key) or 0
    for merged in pools.values():
        members = list(merged["members"].values())
        for m in members:
            m["error_pct"] = 100.0 * m["errors_rps"] / m["rps"] if m["rps"] else 0.0
        merged["members"] = members
        merged["rps"] = sum(m["rps"] for m in members)
        errors = sum(m["errors_rps"] for m in members)
        merged["error_pct"] = 100.0 * errors / merged["rps"] if merged["rps"] else 0.0
    return pools


def merge_routes(metrics: Sequence[Mapping[str, Any]], cluster_rps: float) -> list[dict]:
    """Per route over the reporting nodes: req/s and status classes summed, latency buckets
    merged before p50/p99, share of the cluster's req/s, 4xx and 5xx percentages."""
    size = len(LATENCY_BOUNDS) + 1
    routes: dict[str, dict[str, Any]] = {}
    for m in metrics:
        for label, part in (m.get("routes") or {}).items():
            merged = routes.setdefault(
                label,
                {"route": label, "nodes": 0, "rps": 0.0, "status": {}, "buckets": [0] * size},
            )
            merged["nodes"] += 1
            merged["rps"] += part.get("rps_10s", 0.0)
            add(merged["status"], part.get("status_10s", {}))
            for index, count in (part.get("buckets_10s") or {}).items():
                if int(index) < size:
                    merged["buckets"][int(index)] += count
    out = []
    for merged in sorted(routes.values(), key=lambda r: -r["rps"])[:MAX_ROUTES]:
        buckets, status = merged.pop("buckets"), merged["status"]
        total = sum(status.values())
        merged["status_rps"] = {
            kind: merged["rps"] * status.get(kind, 0) / total if total else 0.0
            for kind in STATUS_CLASSES
        }
        merged["share"] = merged["rps"] / cluster_rps if cluster_rps else None
        merged["p50"] = ms(quantile(0.50, buckets))
        merged["p99"] = ms(quantile(0.99, buckets))
        merged["client_error_pct"] = error_percent(status, "4xx")
        merged["error_pct"] = error_percent(status)
        out.append(merged)
    return out


def aggregate(records: Sequence[Mapping[str, Any]], now: float) -> tuple[list, dict[str, Any]]:
    """(node rows, cluster totals) from every member's heartbeat record at wall time `now`.
    Only nodes that are up count towards the totals; stale ones are named as left out."""
    pairs = sorted(((node_row(r, now), r) for r in records), key=lambda pair: pair[0]["name"])
    rows = [row for row, _ in pairs]
    fresh = [record for row, record in pairs if row["reporting"]]
    metrics = [r["metrics"] for r in fresh]
    size = len(LATENCY_BOUNDS) + 1
    # A node on other bucket bounds (another version mid-upgrade) would skew the merge.
    buckets = merge_buckets(
        m.get("buckets_10s", []) for m in metrics if len(m.get("buckets_10s", [])) == size
    )
    status: dict[str, float] = {}
    for m in metrics:
        add(status, m.get("status_10s", {}))
    rps = sum(m.get("rps_10s", 0.0) for m in metrics)
    reporting = [row for row in rows if row["reporting"]]
    fair = 1.0 / len(reporting) if reporting else 0.0
    for row in reporting:
        row["share"] = row["rps"] / rps if rps else None
        row["fair"] = fair
    states = {state: [r["name"] for r in rows if r["state"] == state] for state in NODE_STATES}
    cluster = {
        "nodes": len(rows) - len(states["left"]),
        "reporting": len(reporting),
        "healthy": len(states["up"]),
        "states": states,
        # Some member is late: the totals miss its share, so they are not a cluster total.
        "partial": bool(states["stale"]),
        "rps": rps,
        "rps_1s": sum(m.get("rps_1s", 0.0) for m in metrics),
        "requests": sum(m.get("requests", 0) for m in metrics),
        "p50": ms(quantile(0.50, buckets)),
        "p95": ms(quantile(0.95, buckets)),
        "p99": ms(quantile(0.99, buckets)),
        "status_10s": status,
        "error_pct": error_percent(status),
        "in_flight": sum(m.get("in_flight_avg", m.get("in_flight", 0)) for m in metrics),
        "cpu_percent": sum(m.get("cpu_percent", 0.0) for m in metrics) / len(metrics)
        if metrics
        else 0.0,
        "rss_bytes": sum(m.get("rss_bytes", 0) for m in metrics),
        "routes": merge_routes(metrics, rps),
        "plugins": merge_plugins(fresh),
        "upstreams": merge_upstreams(fresh),
    }
    return rows, cluster


class SkewTracker:
    """Flags a node whose traffic share stays off its fair share for SKEW_STREAK frames."""

    def __init__(self) -> None:
        self.streaks: dict[str, int] = {}

    def update(self, rows: list[dict[str, Any]], cluster_rps: float) -> None:
        streaks: dict[str, int] = {}
        for row in rows:
            fair = row["fair"] or 0.0
            off = (
                row["reporting"]
                and row["share"] is not None
                and fair < 1.0
                and cluster_rps >= SKEW_MIN_RPS
                and not SKEW_LOW * fair <= row["share"] <= SKEW_HIGH * fair
            )
            streaks[row["name"]] = self.streaks.get(row["name"], 0) + 1 if off else 0
            row["skewed"] = streaks[row["name"]] >= SKEW_STREAK
        self.streaks = streaks  # departed nodes drop out: bounded by the live node count
