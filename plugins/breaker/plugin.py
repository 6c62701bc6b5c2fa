"""The CircuitBreaker plugin: gives each member of its route's pool a circuit.

The pool consults the circuits when it picks a member (so an open member is skipped and
a call nobody can take is a 503 `CircuitOpen` before any upstream is touched), through
its documented hook `UpstreamPool.guard_members`; the plugin only reports the circuits'
stats, so it stays out of the call chain (`bind` returns the rest of the chain as is).
"""

from __future__ import annotations

from typing import Any

from node.call import Handler
from node.plugin import Plugin
from node.upstream.pool import UpstreamPool
from plugins.breaker.circuit import HALF_OPEN, OPEN, Circuit
from plugins.breaker.settings import BreakerSettings


def guard_pool(pool: UpstreamPool, settings: BreakerSettings) -> list[Circuit]:
    """Give every member of `pool` a circuit; the pool sends through its failover path."""
    slow = settings.slow_call_ms / 1000 if settings.slow_call_ms is not None else None
    return pool.guard_members(  # type: ignore[return-value]
        lambda member: Circuit(settings, f"{pool.name}|{member.name}"),
        frozenset(settings.failure_statuses),
        slow,
    )


class CircuitBreaker(Plugin):
    name = "breaker"

    def __init__(self, pool: UpstreamPool, circuits: list[Circuit]) -> None:
        self.pool = pool
        self.circuits = circuits

    def bind(self, next: Handler) -> Handler:
        return next  # the pool does the work: no step in the chain, no frame per call

    def snapshot(self) -> dict[str, Any]:
        circuits = self.circuits
        return {
            "upstream": self.pool.name,
            "counters": {
                "trips": sum(c.trips for c in circuits),
                "rejections": sum(c.rejections for c in circuits),
                "probes": sum(c.probes for c in circuits),
                "unavailable": self.pool.failover.rejected,
            },
            "gauges": {
                "open_members": sum(c.state == OPEN for c in circuits),
                "half_open_members": sum(c.state == HALF_OPEN for c in circuits),
            },
        }
