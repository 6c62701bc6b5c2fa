"""One contract for the breaker's shared trips (TripExchange over Redis and the cluster bus),
on Redis and on a 3-master Redis Cluster (backends.py): each exchange is one node, and
what one node's circuit does, the other nodes' circuits of that member follow (at once
with corroborate = 1, the propagation tests; once two nodes tripped it, by default)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from plugins.breaker.circuit import CLOSED, HALF_OPEN, OPEN, PASS, PROBE, REJECT, Circuit
from plugins.breaker.settings import BreakerSettings
from plugins.breaker.shared import TripExchange

from .backends import Nodes

TRIAL_TTL = 2.0  # seconds a trial token is held: longer than any test here waits for a trial


class Cluster:
    """Nodes sharing one upstream member: each has an exchange and its circuit of it."""

    def __init__(
        self, exchanges: Nodes[TripExchange], open_seconds: float, corroborate: int = 1
    ) -> None:
        self.exchanges = exchanges
        self.settings = BreakerSettings(
            min_requests=1, open_seconds=open_seconds, corroborate=corroborate
        )
        marker = uuid.uuid4().hex[:12]
        exchanges.backend.forget_after(marker)
        self.member = f"app|{marker}:8080"

    async def start_node(self) -> Circuit:
        """A node starting as the node does: circuits registered, bus up, then trips loaded."""
        exchange = await self.exchanges.node(f"node-{uuid.uuid4().hex[:6]}")
        circuit = Circuit(self.settings, self.member)
        exchange.register(circuit, TRIAL_TTL)
        await exchange.bus.start()
        await eventually(lambda: exchange.bus.connected)
        await exchange.load()
        return circuit


def now() -> float:
    return time.monotonic()  # the exchanges' clock


def fail_a_call(circuit: Circuit) -> None:
    """One failed call through `circuit`: with min_requests=1, a trip if it was closed."""
    circuit.record(now(), True, False, circuit.admit(now()))


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = now() + within
    while not check():
        assert now() < deadline, "not within the deadline"
        await asyncio.sleep(0.005)


async def eventually_async(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> None:
    deadline = now() + within
    while not await check():
        assert now() < deadline, "not within the deadline"
        await asyncio.sleep(0.005)


@pytest.fixture
def make_cluster(trip_exchanges: Nodes[TripExchange]) -> Callable[..., Cluster]:
    return lambda open_seconds, corroborate=1: Cluster(trip_exchanges, open_seconds, corroborate)


async def test_a_trip_on_one_node_opens_the_member_on_the_other(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Node A's trip: within 0.5 s node B rejects calls to the member for A's open period."""
    cluster = make_cluster(5.0)
    a, b = await cluster.start_node(), await cluster.start_node()
    fail_a_call(a)
    tripped = now()
    assert a.state == OPEN
    await eventually(lambda: b.state == OPEN)
    assert now() - tripped < 0.5
    assert b.admit(now()) == REJECT
    assert 4.0 < b.retry_after(now()) <= 5.0


async def test_only_one_node_takes_the_trial_and_its_close_closes_every_node(
    make_cluster: Callable[..., Cluster],
) -> None:
    """After the open period exactly one node half-opens, the other keeps rejecting; the
    winner's successful trial closes the member on both."""
    cluster = make_cluster(0.3)
    a, b = await cluster.start_node(), await cluster.start_node()
    fail_a_call(a)
    await eventually(lambda: b.state == OPEN)
    await eventually(lambda: HALF_OPEN in (a.state, b.state))
    await asyncio.sleep(0.2)  # time for the loser's claim to come back refused
    assert sorted((a.state, b.state)) == [OPEN, HALF_OPEN]
    winner, loser = (a, b) if a.state == HALF_OPEN else (b, a)
    assert loser.admit(now()) == REJECT
    trial = winner.admit(now())
    assert trial == PROBE
    winner.record(now(), False, False, trial)
    assert winner.state == CLOSED
    await eventually(lambda: loser.state == CLOSED)
    assert loser.admit(now()) == PASS


async def test_after_a_close_the_next_trip_gets_its_trial_on_time(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A trip after a close half-opens a node when its open period ends, not when the
    closed trial's token would have run out (TRIAL_TTL)."""
    cluster = make_cluster(0.3)
    a, b = await cluster.start_node(), await cluster.start_node()
    fail_a_call(a)
    await eventually(lambda: HALF_OPEN in (a.state, b.state))
    winner = a if a.state == HALF_OPEN else b
    winner.record(now(), False, False, winner.admit(now()))
    await eventually(lambda: a.state == b.state == CLOSED)
    fail_a_call(b)
    tripped = now()
    await eventually(lambda: HALF_OPEN in (a.state, b.state), within=TRIAL_TTL)
    assert now() - tripped < 0.3 + 0.5


async def test_a_failed_trial_reopens_every_node_for_twice_as_long(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The trial fails: both nodes open again, for double the first open period."""
    cluster = make_cluster(0.3)
    a, b = await cluster.start_node(), await cluster.start_node()
    fail_a_call(a)
    await eventually(lambda: HALF_OPEN in (a.state, b.state))
    winner, other = (a, b) if a.state == HALF_OPEN else (b, a)
    fail_a_call(winner)
    assert (winner.state, winner.level) == (OPEN, 1)
    await eventually(lambda: other.state == OPEN and other.level == 1)
    assert 0.5 < other.retry_after(now()) <= 0.6


async def test_a_node_that_starts_later_loads_the_current_trip(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A node starting during another node's open period opens the member for the rest of it."""
    cluster = make_cluster(5.0)
    a = await cluster.start_node()
    fail_a_call(a)
    await asyncio.sleep(0.2)
    late = await cluster.start_node()
    assert late.state == OPEN
    assert late.admit(now()) == REJECT
    assert 4.0 < late.retry_after(now()) <= 4.85


async def test_a_trip_is_forgotten_when_its_open_period_ends(
    make_cluster: Callable[..., Cluster],
) -> None:
    """A node starting within the open period loads the trip; one starting after it does not."""
    cluster = make_cluster(0.4)
    a = await cluster.start_node()
    fail_a_call(a)
    tripped = now()
    await asyncio.sleep(0.05)
    during = await cluster.start_node()
    assert during.state == OPEN
    await asyncio.sleep(max(0.0, tripped + 0.5 - now()))
    after = await cluster.start_node()
    assert after.state == CLOSED
    assert after.admit(now()) == PASS


async def test_one_nodes_trip_is_doubted_and_a_second_opens_the_third(
    make_cluster: Callable[..., Cluster],
) -> None:
    """corroborate = 2: A's trip leaves the member closed on B and C, doubted; B's next
    failure trips it there at once, and with two reports C opens it for B's period."""
    cluster = make_cluster(5.0, corroborate=2)
    a, b, c = [await cluster.start_node() for _ in range(3)]
    fail_a_call(a)
    await eventually(lambda: b.doubts == c.doubts == 1)
    assert (b.state, c.state) == (CLOSED, CLOSED)
    assert c.admit(now()) == PASS
    fail_a_call(b)
    assert b.state == OPEN
    await eventually(lambda: c.state == OPEN)
    assert 4.0 < c.retry_after(now()) <= 5.0


async def test_a_late_node_opens_only_on_two_stored_reports(
    make_cluster: Callable[..., Cluster],
) -> None:
    """corroborate = 2: a node starting after one node's trip only doubts the member; one
    starting after two nodes' trips opens it."""
    cluster = make_cluster(5.0, corroborate=2)
    a, b = await cluster.start_node(), await cluster.start_node()
    fail_a_call(a)
    await eventually(lambda: b.doubts == 1)
    await asyncio.sleep(0.1)  # A's report is written just after its message
    early = await cluster.start_node()
    assert (early.state, early.doubts) == (CLOSED, 1)
    fail_a_call(b)
    await eventually(lambda: early.state == OPEN)
    await asyncio.sleep(0.1)
    late = await cluster.start_node()
    assert late.state == OPEN
    assert 4.0 < late.retry_after(now()) <= 5.0
