"""How many of a pool's members may be open at once on a node (Envoy's `max_ejection_percent`).

A trip past the cap leaves the member in service: a blip on every member, or a node whose
own path is bad, cannot empty the pool. Pure: time comes in as `now`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from plugins.breaker.circuit import CLOSED, Circuit

log = logging.getLogger("scalenode.breaker")

WARN_EVERY = 10.0  # seconds: while the cap holds back trips, one warning per pool this often


class EjectionCap:
    """The cap of one pool, shared by its members' circuits (set `circuits` once built)."""

    def __init__(self, pool: str, percent: float) -> None:
        self.pool = pool
        self.percent = percent
        self.circuits: Sequence[Circuit] = ()
        self.refused = 0
        self._warned_at = -math.inf
        self._unwarned = 0

    @property
    def limit(self) -> int:
        """`percent` of the members, rounded down, and never below one: a pool of one still
        fails fast, and one bad member is always ejected ("if no hosts have been ejected,
        Envoy will eject the host immediately")."""
        return max(1, math.floor(len(self.circuits) * self.percent / 100))

    def allows(self, now: float) -> bool:
        """Whether one more member may open now; counts and (now and then) logs a refusal."""
        ejected = sum(circuit.state != CLOSED for circuit in self.circuits)
        if ejected < self.limit:
            return True
        self.refused += 1
        self._unwarned += 1
        if now - self._warned_at >= WARN_EVERY:
            log.warning(
                "upstream %s: %d trip(s) left members in service: %d of %d are open, the most "
                "max_ejection_percent=%g allows",
                self.pool,
                self._unwarned,
                ejected,
                len(self.circuits),
                self.percent,
            )
            self._warned_at, self._unwarned = now, 0
        return False
