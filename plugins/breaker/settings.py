"""The `breaker` route table, validated into frozen settings (errors name the key path)."""

from __future__ import annotations

from dataclasses import dataclass

from node.schema import join, require

MAX_BUCKETS = 60  # the rolling window is at most this many fixed buckets, whatever its length


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_ratio: float = 0.5  # failed calls / calls in the window that trip the breaker
    min_requests: int = 20  # fewer calls in the window never trip it
    window: float = 10.0  # seconds of the rolling window
    slow_call_ms: float | None = None  # a call slower than this counts as slow; None = off
    slow_ratio: float = 0.5  # slow calls / calls in the window that trip the breaker
    open_seconds: float = 5.0  # the first open period; doubles on each re-trip
    max_open_seconds: float = 60.0
    half_open_probes: int = 1  # concurrent trial calls when half-open
    failure_statuses: tuple[int, ...] = (500, 502, 503, 504)
    shared: bool | None = None  # None: shared when Redis is configured
    # Distinct nodes whose live trips open a member on a node that did not trip it; with
    # fewer, that node doubts it (its next failure trips it). 1: any one node's trip.
    corroborate: int = 2
    # Of a pool's members, at most this share open at once on a node (rounded down, but
    # always one): Envoy's outlier detection caps at 10 %, its panic threshold keeps 50 %.
    max_ejection_percent: float = 50.0

    def check(self, path: str) -> None:
        for key in ("failure_ratio", "slow_ratio"):
            value = getattr(self, key)
            require(0 < value <= 1, join(path, key), "must be > 0 and <= 1")
        require(self.min_requests >= 1, join(path, "min_requests"), "must be >= 1")
        require(self.window >= 1, join(path, "window"), "must be >= 1 second")
        if self.slow_call_ms is not None:
            require(self.slow_call_ms > 0, join(path, "slow_call_ms"), "must be > 0")
        require(self.open_seconds > 0, join(path, "open_seconds"), "must be > 0")
        require(
            self.max_open_seconds >= self.open_seconds,
            join(path, "max_open_seconds"),
            f"must be >= open_seconds ({self.open_seconds:g})",
        )
        require(self.half_open_probes >= 1, join(path, "half_open_probes"), "must be >= 1")
        require(self.corroborate >= 1, join(path, "corroborate"), "must be >= 1")
        require(
            0 < self.max_ejection_percent <= 100,
            join(path, "max_ejection_percent"),
            "must be > 0 and <= 100",
        )
        for i, status in enumerate(self.failure_statuses):
            require(
                100 <= status <= 599,
                join(join(path, "failure_statuses"), i),
                f"must be an HTTP status, got {status}",
            )
