"""One upstream member's circuit: closed → open → half-open → closed, as a pure state machine.

Time comes in as `now` (seconds, any monotonic origin), so tests drive it with a fake
clock. The hot path is `admit` + `record`: a few attribute reads and integer increments
into fixed buckets, no allocation; the window is summed only after a bad outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from plugins.breaker.settings import MAX_BUCKETS, BreakerSettings

if TYPE_CHECKING:
    from plugins.breaker.cap import EjectionCap

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = ("closed", "open", "half_open")
# What `admit` answers: the member may not be called, may be, or may be as a trial call.
REJECT, PASS, PROBE = 0, 1, 2


class Circuit:
    """The breaker of one member. `on_trip(circuit, seconds)` runs when it opens by its own
    outcomes (not when told to by another node), `on_close(circuit)` when a trial closes it.

    With `auto_half_open` off (shared breakers), an open circuit stays open after its
    period until `half_open()` is called: the cluster-wide coordinator decides who tries.
    `cap`, the pool's, may refuse to open a closed circuit: it then stays in service.
    """

    def __init__(
        self,
        settings: BreakerSettings,
        name: str = "",
        on_trip: Callable[[Circuit, float], None] | None = None,
        on_close: Callable[[Circuit], None] | None = None,
        auto_half_open: bool = True,
        cap: EjectionCap | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.on_trip = on_trip
        self.on_close = on_close
        self.auto_half_open = auto_half_open
        self.cap = cap
        self.state = CLOSED
        self.open_until = 0.0
        self.level = 0  # re-trips since the last close: the open period is doubled this often
        self.probing = 0  # trial calls in flight
        self.doubt_until = 0.0  # before then, another node's trip hangs over it (0: none)
        self.passed = 0  # trial calls that succeeded in this half-open period
        self.trips = 0
        self.rejections = 0
        self.probes = 0
        self.doubts = 0  # other nodes' trips that only made it doubt
        self.capped = 0  # trips the pool's cap refused: the member stayed in service
        self.size = min(math.ceil(settings.window), MAX_BUCKETS)
        self.rate = self.size / settings.window  # buckets per second
        self.stamps = [-1] * self.size  # which bucket number each slot holds
        self.calls = [0] * self.size
        self.fails = [0] * self.size
        self.slows = [0] * self.size

    def admit(self, now: float) -> int:
        """REJECT, PASS or PROBE for a call at `now`; a PROBE must be recorded as one."""
        state = self.state
        if state == CLOSED:
            return PASS
        if state == OPEN:
            if now < self.open_until or not self.auto_half_open:
                self.rejections += 1
                return REJECT
            self.half_open()
        if self.probing < self.settings.half_open_probes:
            self.probing += 1
            self.probes += 1
            return PROBE
        self.rejections += 1
        return REJECT

    def record(self, now: float, bad: bool, slow: bool, admitted: int) -> None:
        """The outcome of a call admitted at `now` (`bad`: a failure; `slow`: over slow_call_ms)."""
        if admitted == PROBE:
            self._trial_done(now, bad or slow)
            return
        if self.state != CLOSED:
            return  # a call sent before the trip: the circuit has already judged
        if self.doubt_until and self._settle_doubt(now, bad or slow):
            return
        number = int(now * self.rate)
        slot = number % self.size
        if self.stamps[slot] != number:
            self.stamps[slot] = number
            self.calls[slot] = self.fails[slot] = self.slows[slot] = 0
        self.calls[slot] += 1
        if bad:
            self.fails[slot] += 1
        if slow:
            self.slows[slot] += 1
        if bad or slow:
            self._evaluate(now, number)

    def abandon(self, admitted: int) -> None:
        """A call admitted but never judged (cancelled): a trial slot is given back."""
        if admitted == PROBE and self.probing:
            self.probing -= 1

    def _trial_done(self, now: float, failed: bool) -> None:
        if self.probing:
            self.probing -= 1
        if self.state != HALF_OPEN:
            return  # another node closed or re-opened it meanwhile
        if failed:
            self.trip(now)
            return
        self.passed += 1
        if self.passed >= self.settings.half_open_probes:
            self.close()
            if self.on_close is not None:
                self.on_close(self)

    def doubt(self, until: float) -> None:
        """Another node tripped this member, but too few nodes did to open it here: until
        `until`, its next outcome decides (a failure trips it at once, a success dispels
        the doubt), as HAProxy's `on-error sudden-death` does. Closed circuits only."""
        if self.state == CLOSED:
            self.doubt_until = until
            self.doubts += 1

    def _settle_doubt(self, now: float, failed: bool) -> bool:
        """The first outcome since a doubt: True when it tripped the circuit."""
        until, self.doubt_until = self.doubt_until, 0.0
        if failed and now < until:
            self.trip(now)
        return self.state != CLOSED

    def _evaluate(self, now: float, number: int) -> None:
        calls = fails = slows = 0
        oldest = number - self.size
        for slot in range(self.size):
            if self.stamps[slot] > oldest:
                calls += self.calls[slot]
                fails += self.fails[slot]
                slows += self.slows[slot]
        settings = self.settings
        if calls < settings.min_requests:
            return
        if fails >= settings.failure_ratio * calls or slows >= settings.slow_ratio * calls:
            self.trip(now)

    def trip(self, now: float) -> None:
        """Open by this node's own judgement; a re-trip from half-open doubles the period."""
        if self.state == CLOSED and not self._may_eject(now):
            return
        self.level = self.level + 1 if self.state == HALF_OPEN else 0
        seconds = self.period(self.level)
        self.open_for(now, seconds, self.level)
        if self.on_trip is not None:
            self.on_trip(self, seconds)

    def period(self, level: int) -> float:
        settings = self.settings
        return min(settings.open_seconds * 2**level, settings.max_open_seconds)

    def follow(self, now: float, seconds: float, level: int) -> bool:
        """Open as other nodes decided (a corroborated trip), unless the pool's cap keeps
        this member in service (False then)."""
        if self.state == CLOSED and not self._may_eject(now):
            return False
        self.open_for(now, seconds, level)
        return True

    def _may_eject(self, now: float) -> bool:
        """Whether the cap lets this closed circuit open. If not, it stays in service with a
        clean window, so the cap is asked again only after min_requests more calls."""
        if self.cap is None or self.cap.allows(now):
            return True
        self.capped += 1
        self._clear_window()
        return False

    def open_for(self, now: float, seconds: float, level: int) -> None:
        """Open for `seconds` from `now` (a trip here, or one another node published)."""
        if self.state != OPEN:
            self.trips += 1
        self.state = OPEN
        self.level = level
        self.open_until = now + seconds
        self.passed = 0
        self.doubt_until = 0.0

    def half_open(self) -> None:
        self.state = HALF_OPEN
        self.passed = 0

    def withdraw(self) -> None:
        """Half-open back to open without a verdict (a shared trial this node never sent)."""
        if self.state == HALF_OPEN:
            self.state = OPEN

    def close(self) -> None:
        """Closed with a clean window: the failures that tripped it are history."""
        self.state = CLOSED
        self.level = 0
        self.passed = 0
        self.doubt_until = 0.0
        self._clear_window()

    def _clear_window(self) -> None:
        for slot in range(self.size):
            self.stamps[slot] = -1

    def retry_after(self, now: float) -> float:
        """Seconds until this circuit lets a trial call through (0 when it would now)."""
        if self.state == OPEN:
            return max(self.open_until - now, 0.0)
        return 0.0

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]
