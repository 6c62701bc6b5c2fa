"""The CircuitBreaker plugin: gives each member of its route's pool a circuit.

The pool consults the circuits when it picks a member (so an open member is skipped and
a call nobody can take is a 503 `CircuitOpen` before any upstream is touched), through
its documented hook `UpstreamPool.guard_members`; the plugin only reports the circuits'
stats, so it stays out of the call chain (`bind` returns the rest of the chain as is).
"""

from __future__ import annotations

import time
from typing import Any

from node.call import Handler
from node.plugin import Plugin
from node.upstream.pool import UpstreamPool
from plugins.breaker.cap import EjectionCap
from plugins.breaker.circuit import HALF_OPEN, OPEN, Circuit
from plugins.breaker.settings import BreakerSettings


def guard_pool(pool: UpstreamPool, settings: BreakerSettings) -> list[Circuit]:
    """Give every member of `pool` a circuit, all under one ejection cap; the pool sends
    through its failover path."""
    slow = settings.slow_call_ms / 1000 if settings.slow_call_ms is not None else None
    cap = EjectionCap(pool.name, settings.max_ejection_percent)
    circuits: list[Circuit] = pool.guard_members(  # type: ignore[assignment]
        lambda member: Circuit(settings, f"{pool.name}|{member.name}", cap=cap),
        frozenset(settings.failure_statuses),
        slow,
    )
    cap.circuits = circuits
    return circuits


class CircuitBreaker(Plugin):
    name = "breaker"

    def __init__(self, pool: UpstreamPool, circuits: list[Circuit]) -> None:
        self.pool = pool
        self.circuits = circuits
        self.cap = circuits[0].cap  # the pool's, shared by all of its circuits

    def bind(self, next: Handler) -> Handler:
        return next  # the pool does the work: no step in the chain, no frame per call

    def snapshot(self) -> dict[str, Any]:
        circuits = self.circuits
        now = time.monotonic()
        return {
            "upstream": self.pool.name,
            "counters": {
                "trips": sum(c.trips for c in circuits),
                "rejections": sum(c.rejections for c in circuits),
                "probes": sum(c.probes for c in circuits),
                "unavailable": self.pool.failover.rejected,
                "capped": sum(c.capped for c in circuits),
                "doubts": sum(c.doubts for c in circuits),
            },
            "gauges": {
                "open_members": sum(c.state == OPEN for c in circuits),
                "half_open_members": sum(c.state == HALF_OPEN for c in circuits),
                "doubted_members": sum(c.doubt_until > now for c in circuits),
                "max_open_members": self.cap.limit if self.cap else len(circuits),
            },
        }
