"""A store route's snapshot for /metrics and the dashboard: its own counts per member, and
what the set's members report (pools, replica lag, buckets owned, the map's version).

Plugin snapshot conventions (plugins/queue/plugin.py): `counters` are this route's (summed
over routes and nodes, with rates), `cluster_gauges` read the same on every route of the
set (`scope`: counted once per node, the largest node's shown), `card`: one dashboard card
per set. Per member values are flattened as `<member>_<name>` for the dashboard's card (so
the dashboard's rates and merge apply to them) and named in `dashboard_only`: /metrics has
them once, from `by_member`, with a `member` label."""

from __future__ import annotations

import re
from typing import Any

from plugins.shard.members import MemberStats, ShardSet

COUNTERS = ("reads", "writes", "unavailable", "replica_reads", "fallbacks", "fenced")
UNSAFE = re.compile(r"[^A-Za-z0-9_]")  # a member name in a metric name


def member_gauges(shard_set: ShardSet, name: str, owned: int) -> dict[str, float]:
    member = shard_set.by_name[name]
    gauges: dict[str, float] = {"p99_ms": shard_set.timings[name].p99_ms(), "buckets": owned}
    pool_stats = getattr(member.primary, "pool_stats", None)
    if pool_stats is not None:
        pool = pool_stats()
        gauges["pool_in_use"] = pool.get("in_use", 0)
        gauges["pool_max"] = pool.get("max", 0)
    if member.lag is not None:
        lag = member.lag.snapshot()
        lags = [r["lag_bytes"] for r in lag["replicas"] if r["lag_bytes"] is not None]
        gauges["replica_lag_bytes"] = max(lags, default=0)
        gauges["replicas_healthy"] = sum(r["healthy"] for r in lag["replicas"])
        gauges["replica_fallbacks"] = lag["counters"]["fallbacks"]
    return gauges


def store_snapshot(
    set_name: str, shard_set: ShardSet, stats: dict[str, MemberStats], partial_lists: int
) -> dict[str, Any]:
    by_member: dict[str, Any] = {}
    flattened: list[str] = []
    counters: dict[str, float] = {}
    shared: dict[str, float] = {}
    owned = shard_set.owned()
    for member in shard_set.members:
        own = stats[member.name]
        gauges = member_gauges(shard_set, member.name, len(owned[member.name]))
        counts = {key: getattr(own, key) for key in COUNTERS}
        by_member[member.name] = {"counters": counts, "gauges": gauges}
        flat = UNSAFE.sub("_", member.name)
        counters.update({f"{flat}_{key}": value for key, value in counts.items()})
        shared.update({f"{flat}_{key}": value for key, value in gauges.items()})
        flattened += [f"{flat}_{key}" for key in (*counts, *gauges)]
    totals = {key: sum(m["counters"][key] for m in by_member.values()) for key in COUNTERS}
    totals["partial_lists"] = partial_lists
    shared["map_version"] = 0 if shard_set.map is None else shard_set.map.version
    return {
        "set": set_name,
        "scope": set_name,  # the routes of one set share its members and their pools
        "card": set_name,  # the dashboard: a card per shard set
        "labels": {"set": set_name},
        "counters": {**totals, **counters},
        "cluster_gauges": shared,
        "by_member": by_member,
        "dashboard_only": flattened,
    }
