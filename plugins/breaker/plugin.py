"""The CircuitBreaker plugin: gives each member of its route's pool a circuit.

The pool consults the circuits when it picks a member (so an open member is skipped and
a call nobody can take is a 503 `CircuitOpen` before any upstream is touched); the plugin
only reports the circuits' stats, so it stays out of the call chain (`passes_through`).
"""

from __future__ import annotations

from typing import Any

from node.call import Call, Handler, Reply
from node.upstream.pool import UpstreamPool
from plugins.breaker.circuit import HALF_OPEN, OPEN, Circuit
from plugins.breaker.settings import BreakerSettings


def guard_pool(pool: UpstreamPool, settings: BreakerSettings) -> list[Circuit]:
    """Give every member of `pool` a circuit and switch the pool to its failover path."""
    circuits = []
    for member in pool.members:
        circuit = Circuit(settings, f"{pool.name}|{member.name}")
        member.circuit = circuit
        circuits.append(circuit)
    failover = pool.failover
    failover.failure_statuses = frozenset(settings.failure_statuses)
    if settings.slow_call_ms is not None:
        failover.slow_seconds = settings.slow_call_ms / 1000
    pool.guard()
    return circuits


class CircuitBreaker:
    name = "breaker"
    passes_through = True  # the pool does the work; compose() leaves this out of the chain

    def __init__(self, pool: UpstreamPool, circuits: list[Circuit]) -> None:
        self.pool = pool
        self.circuits = circuits

    async def __call__(self, call: Call, next: Handler) -> Reply:
        return await next(call)

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
