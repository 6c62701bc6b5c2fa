"""A fixed ring of past cluster frames, so a new viewer sees minutes of charts at once.

One point per aggregation; memory is bounded by the ring's length and by MAX_SERIES
per-node (and per-upstream) series in each point, whatever the traffic.
"""

from __future__ import annotations

from collections import deque
from typing import Any

MAX_SERIES = 64  # per-node or per-upstream series kept in one point
SCALARS = ("rps", "p50", "p95", "p99", "error_pct", "cpu_percent", "nodes_live")
# Totals that miss a late member's share: a gap on the chart, not a dip that never happened.
PARTIAL_GAPS = ("rps", "error_pct", "cpu_percent")


class History:
    def __init__(self, capacity: int) -> None:
        self.points: deque[dict[str, Any]] = deque(maxlen=capacity)

    def append(self, t: float, rows: list[dict[str, Any]], cluster: dict[str, Any]) -> None:
        partial = cluster.get("partial", False)
        point = {
            "t": round(t, 3),
            **{
                key: None if partial and key in PARTIAL_GAPS else cluster.get(key)
                for key in SCALARS
                if key != "nodes_live"
            },
            "nodes_live": cluster.get("healthy", 0),
            "nodes": {r["name"]: r["rps"] for r in rows if r["reporting"]}
            if len(rows) <= MAX_SERIES
            else {},
            "upstreams": {
                pool: [snap["rps"], snap["error_pct"]]
                for pool, snap in list(cluster.get("upstreams", {}).items())[:MAX_SERIES]
            },
        }
        self.points.append(point)

    def columns(self, last: int | None = None) -> dict[str, Any]:
        """The points (all, or the `last` n) as columns, the shape charts take:
        `t`, one list per scalar, and `nodes`/`upstreams` as {name: list} (None = absent)."""
        points = list(self.points)[-last:] if last else list(self.points)
        out: dict[str, Any] = {"t": [p["t"] for p in points]}
        for key in SCALARS:
            out[key] = [p[key] for p in points]
        names = sorted({name for p in points for name in p["nodes"]})[:MAX_SERIES]
        out["nodes"] = {name: [p["nodes"].get(name) for p in points] for name in names}
        pools = sorted({name for p in points for name in p["upstreams"]})[:MAX_SERIES]
        out["upstreams"] = {
            pool: {
                "rps": [(p["upstreams"].get(pool) or [None, None])[0] for p in points],
                "error_pct": [(p["upstreams"].get(pool) or [None, None])[1] for p in points],
            }
            for pool in pools
        }
        return out

    def rps_ago(self, seconds: float) -> float:
        """The cluster request rate about `seconds` ago (the oldest point if younger)."""
        if not self.points:
            return 0.0
        newest = self.points[-1]["t"]
        for point in self.points:
            if point["t"] >= newest - seconds:
                return point["rps"] or 0.0
        return 0.0
