"""A pool's careful way to send: skip open and ejected members, retry elsewhere, within a budget.

A pool without breakers, health checks, retries or a hash ring never comes here (it keeps
its plain send); one with any of them sends through `Failover.send`. The breaker's
state machine stays behind the small `MemberCircuit` interface, so the node imports no plugin.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn, Protocol

from node.call import Reply
from node.errors import (
    BadGateway,
    CircuitOpen,
    GatewayTimeout,
    ServiceUnavailable,
    UpstreamUnreachable,
)

if TYPE_CHECKING:
    from node.upstream.pool import Member, RequestHeaders, UpstreamPool

REJECT, PASS = 0, 1  # what MemberCircuit.admit answers (PROBE = 2 is passed back as is)
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))  # RFC 9110 9.2.2
RETRY_STATUSES = frozenset((502, 503, 504))  # an upstream answering these may be retried
MIN_RETRIES_PER_SECOND = 3  # a quiet pool may still retry this often, whatever the ratio


class MemberCircuit(Protocol):
    def admit(self, now: float) -> int: ...

    def record(self, now: float, bad: bool, slow: bool, admitted: int) -> None: ...

    def abandon(self, admitted: int) -> None: ...

    def retry_after(self, now: float) -> float: ...

    # for snapshots
    trips: int
    rejections: int
    probes: int

    @property
    def state_name(self) -> str: ...


def admit(member: Member, now: float) -> int:
    """Whether `member` may take a call now: healthy, and its circuit (if any) agrees."""
    if not member.healthy:
        return REJECT
    circuit = member.circuit
    return PASS if circuit is None else circuit.admit(now)


class RetryBudget:
    """Retries may be `ratio` of the requests of this second or the last one (the larger),
    and at least MIN_RETRIES_PER_SECOND: a failing pool is not hit with a retry storm."""

    __slots__ = ("exhausted", "previous", "ratio", "requests", "retries", "second")

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.second = 0
        self.requests = 0
        self.previous = 0
        self.retries = 0
        self.exhausted = 0

    def request(self, now: float) -> None:
        second = int(now)
        if second != self.second:
            self.previous = self.requests if second == self.second + 1 else 0
            self.second, self.requests, self.retries = second, 0, 0
        self.requests += 1

    def allow(self) -> bool:
        """Spend one retry of this second's budget, or count that there was none left."""
        limit = max(MIN_RETRIES_PER_SECOND, self.ratio * max(self.requests, self.previous))
        if self.retries < limit:
            self.retries += 1
            return True
        self.exhausted += 1
        return False


class Failover:
    """Sends one call for `pool`: picks an admissible member, retries idempotent calls on
    another one after a connect error, timeout or 502/503/504, within the retry budget."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.budget = RetryBudget(pool.settings.retry_budget)
        self.retries = pool.settings.retries
        self.rotates = pool.settings.balance != "least_conn"  # round robin picks (hash: keyless)
        self.rejected = 0  # calls answered 503 because no member could take them
        self.rerouted = 0  # keyed calls (or their retries) sent past their key's ring owner
        self.failure_statuses: frozenset[int] = frozenset()
        self.slow_seconds: float | None = None

    async def send(
        self,
        method: str,
        path: str,
        headers: RequestHeaders,
        body: bytes,
        key: str | None = None,
    ) -> Reply:
        now = time.monotonic()  # the one clock read of a call (two with slow-call detection)
        retries = self.retries if method in IDEMPOTENT else 0
        if retries:
            self.budget.request(now)
        tried: list[Member] = []
        member, admitted = self.find(now, key, tried) or self.unavailable(now)
        client = self.pool.client
        while True:
            tried.append(member)
            # The bookkeeping around the await is plain calls: no coroutine frame per try.
            member.in_flight += 1
            member.requests += 1
            try:
                reply = await client.send(member, method, path, headers, body)
            except (BadGateway, GatewayTimeout) as exc:
                self.failed(member, admitted, now, exc)
                chosen = self.another(key, tried, retries, isinstance(exc, UpstreamUnreachable))
                if chosen is None:
                    raise
                member, admitted, now = chosen
                continue
            except BaseException:
                self.abandoned(member, admitted)
                raise
            self.answered(member, admitted, now, reply)
            if reply.status in RETRY_STATUSES and reply.stream is None:
                chosen = self.another(key, tried, retries)
                if chosen is not None:
                    member, admitted, now = chosen
                    continue
            if key is not None:
                reply.headers["X-Shard"] = member.name  # type: ignore[index]
            return reply

    def another(
        self, key: str | None, tried: list[Member], retries: int, unsent: bool = False
    ) -> tuple[Member, int, float] | None:
        """The member for a retry, if retries, the budget and the pool allow one, and the
        retry's own start time (its circuit judges its speed, not the failed try's).

        A request that never reached its member (`unsent`: refused, unreachable) goes to
        every other member in turn, whatever its method, outside `retries` and the budget:
        it adds no load to any upstream, and a dead member must cost clients nothing."""
        if not unsent and len(tried) > retries:
            return None
        now = time.monotonic()
        chosen = self.find(now, key, tried)
        if chosen is None:
            return None
        member, admitted = chosen
        if not unsent and not self.budget.allow():
            if member.circuit is not None:
                member.circuit.abandon(admitted)
            return None
        member.retries += 1
        return member, admitted, now

    def find(self, now: float, key: str | None, tried: list[Member]) -> tuple[Member, int] | None:
        """The first admissible member in the balancer's order that was not tried yet."""
        pool = self.pool
        refused = None
        if (key is None or pool.ring is None) and (self.rotates or not tried):
            member = pool.pick()
            if member not in tried:
                admitted = admit(member, now)
                if admitted != REJECT:
                    return member, admitted  # the common case: the balancer's pick is fine
                refused = member
        owner = True  # for a key: still at the first member of its ring order
        for member in self.fallbacks(key):
            if member in tried or member is refused:
                owner = False
                continue
            admitted = admit(member, now)
            if admitted != REJECT:
                if key is not None and not (owner and self.owns(member, key)):
                    self.rerouted += 1
                return member, admitted
            owner = False
        return None

    def owns(self, member: Member, key: str) -> bool:
        """Whether the first member of a key's order is its owner: always, but with bounded
        load, which may put a lighter member first."""
        pool = self.pool
        if not pool.settings.load_factor or pool.ring is None:
            return True
        return member is pool.members[pool.ring.lookup(key)]

    def fallbacks(self, key: str | None) -> Iterable[Member]:
        """Whom to try when the balancer's pick cannot take the call (or, for a key, the
        ring's order from the key's owner on)."""
        pool = self.pool
        members = pool.members
        ring = pool.ring
        if key is not None and ring is not None:
            factor = pool.settings.load_factor
            if factor:
                order = ring.bounded(key, [m.in_flight for m in members], factor)
            else:
                order = ring.walk(key)
            return (members[i] for i in order)
        if self.rotates:
            # Round robin: a refused member's turn passes to the next pick, so its share
            # spreads evenly over the others instead of landing on its neighbour.
            return pool.turns(len(members) - 1)
        # least_conn: the least busy of the rest (list order on ties), for the same reason.
        return sorted(members, key=lambda m: m.in_flight)

    def unavailable(self, now: float) -> NoReturn:
        """503 without touching any upstream: CircuitOpen (with Retry-After, the time to the
        first half-open) when circuits refused, else no healthy member."""
        self.rejected += 1
        waits = [m.circuit.retry_after(now) for m in self.pool.members if m.circuit and m.healthy]
        if not waits:
            raise ServiceUnavailable(f"no healthy member in upstream {self.pool.name}")
        seconds = max(1, math.ceil(min(waits)))
        raise CircuitOpen(
            f"every member of upstream {self.pool.name} has an open circuit",
            headers={"Retry-After": str(seconds)},
        )

    def answered(self, member: Member, admitted: int, now: float, reply: Reply) -> None:
        """A try that got a reply: counted as the plain send counts, judged by the circuit."""
        if reply.stream is not None:
            reply.stream.on_close = member.done  # type: ignore[attr-defined]  # busy until sent
        else:
            member.in_flight -= 1
        circuit = member.circuit
        if circuit is not None:
            slow_seconds = self.slow_seconds
            slow = slow_seconds is not None and time.monotonic() - now >= slow_seconds
            circuit.record(now, reply.status in self.failure_statuses, slow, admitted)

    def failed(self, member: Member, admitted: int, now: float, exc: Exception) -> None:
        """A try that got no reply (502: refused, reset, broken; 504: timed out)."""
        member.in_flight -= 1
        if isinstance(exc, GatewayTimeout):
            member.timeouts += 1
        else:
            member.failures += 1
        if member.circuit is not None:
            member.circuit.record(now, True, False, admitted)

    def abandoned(self, member: Member, admitted: int) -> None:
        """A try cancelled (the client left): not judged; a trial slot is given back."""
        member.in_flight -= 1
        if member.circuit is not None:
            member.circuit.abandon(admitted)


def member_snapshot(member: Member, share: float | None) -> dict[str, object]:
    """A member's stats; `state` and the breaker counters read its circuit, if it has one."""
    circuit = member.circuit
    return {
        "url": member.url,
        "name": member.name,
        "in_flight": member.in_flight,
        "requests": member.requests,
        "failures": member.failures,
        "timeouts": member.timeouts,
        "retries": member.retries,
        "healthy": member.healthy,
        "state": circuit.state_name if circuit is not None else "closed",
        "trips": circuit.trips if circuit is not None else 0,
        "rejections": circuit.rejections if circuit is not None else 0,
        "probes": circuit.probes if circuit is not None else 0,
        "ring_share": share,
    }
