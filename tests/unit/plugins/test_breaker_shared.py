"""plugins/breaker/shared.py with a scripted store and bus: who opens, who doubts, who tries,
who closes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from node.errors import BackendUnavailable
from plugins.breaker.cap import EjectionCap
from plugins.breaker.circuit import CLOSED, HALF_OPEN, OPEN, PROBE, Circuit
from plugins.breaker.keys import BREAKER_EVENTS
from plugins.breaker.settings import BreakerSettings
from plugins.breaker.shared import TripExchange
from plugins.breaker.store import Report

TTL = 0.05  # seconds a trial token lives in these tests
NAME = "app|a:1"


class FakeTrips:
    """RedisTrips over dicts (reports never expire here); `down` makes every call
    BackendUnavailable; `taken_by_other` gives the trial token to another node."""

    def __init__(self) -> None:
        self.kept: dict[str, dict[str, tuple[float, int]]] = {}
        self.tokens: dict[str, str] = {}
        self.taken_by_other = False
        self.down = False

    def check(self) -> None:
        if self.down:
            raise BackendUnavailable("down")

    async def report(self, name: str, node: str, seconds: float, level: int) -> None:
        self.check()
        self.kept.setdefault(name, {})[node] = (seconds, level)

    async def reports(self, name: str) -> list[Report]:
        self.check()
        return [
            (node, seconds, level) for node, (seconds, level) in self.kept.get(name, {}).items()
        ]

    async def claim(self, name: str, node: str, seconds: float) -> bool:
        self.check()
        if self.taken_by_other or name in self.tokens:
            return False
        self.tokens[name] = node
        return True

    async def clear(self, name: str) -> None:
        self.check()
        self.kept.pop(name, None)
        self.tokens.pop(name, None)


class FakeBus:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.listener: Any = None

    def subscribe(self, channel: str, listener: Any, on_resync: Any = None) -> None:
        assert channel == BREAKER_EVENTS
        self.listener = listener

    async def publish(self, channel: str, payload: bytes) -> None:
        self.published.append(orjson.loads(payload))


def make_exchange(clock: Any = time.monotonic) -> TripExchange:
    made = TripExchange("me", None, FakeBus(), clock)  # type: ignore[arg-type]
    made.store = FakeTrips()  # type: ignore[assignment]
    return made


@pytest.fixture
async def exchange() -> Any:
    made = make_exchange()
    yield made
    await made.stop()


def circuit(exchange: TripExchange, open_seconds: float = 0.02, corroborate: int = 2) -> Circuit:
    settings = BreakerSettings(min_requests=1, open_seconds=open_seconds, corroborate=corroborate)
    made = Circuit(settings, NAME)
    exchange.register(made, TTL)
    return made


def store(exchange: TripExchange) -> FakeTrips:
    return exchange.store  # type: ignore[return-value]


def trip(made: Circuit) -> None:
    made.record(0.0, True, False, made.admit(0.0))


async def settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_trip_is_published_and_recorded_with_its_period(exchange: TripExchange) -> None:
    """This node's trip goes on the bus and into its report in the store."""
    made = circuit(exchange, open_seconds=5)
    trip(made)
    await settle()
    assert exchange.bus.published[0] == {  # type: ignore[attr-defined]
        "kind": "trip",
        "member": "app|a:1",
        "seconds": 5.0,
        "level": 0,
        "node": "me",
    }
    assert store(exchange).kept[NAME] == {"me": (5.0, 0)}


async def test_with_corroborate_1_another_nodes_trip_opens_and_its_close_closes(
    exchange: TripExchange,
) -> None:
    """corroborate = 1: a trip heard from one other node opens the member here; its close
    closes it."""
    made = circuit(exchange, corroborate=1)
    message = {"kind": "trip", "member": "app|a:1", "seconds": 30, "level": 2, "node": "other"}
    exchange.hear(orjson.dumps(message))
    assert (made.state, made.level, made.on_trip is not None) == (OPEN, 2, True)
    exchange.hear(orjson.dumps({**message, "kind": "close"}))
    assert made.state == CLOSED


async def test_own_and_unknown_messages_are_ignored(exchange: TripExchange) -> None:
    """This node's own echo and members it does not have change nothing."""
    made = circuit(exchange)
    base = {"kind": "trip", "seconds": 30, "level": 0}
    exchange.hear(orjson.dumps({**base, "member": "app|a:1", "node": "me"}))
    exchange.hear(orjson.dumps({**base, "member": "app|zz:9", "node": "other"}))
    assert made.state == CLOSED
    assert exchange.heard == 0


async def test_the_token_winner_half_opens_and_its_success_closes_everywhere(
    exchange: TripExchange,
) -> None:
    """After the period this node wins the token, tries, and publishes the close."""
    made = circuit(exchange)
    trip(made)
    await settle(0.03)
    assert made.state == HALF_OPEN
    admitted = made.admit(1.0)
    made.record(1.0, False, False, admitted)
    await settle()
    assert made.state == CLOSED
    assert exchange.bus.published[-1]["kind"] == "close"  # type: ignore[attr-defined]
    assert NAME not in store(exchange).tokens


async def test_a_lost_token_keeps_the_member_open(exchange: TripExchange) -> None:
    """Another node holds the trial token: this one stays open and sends no trial."""
    made = circuit(exchange)
    store(exchange).taken_by_other = True
    trip(made)
    await settle(0.03)
    assert made.state == OPEN
    assert made.admit(1e9) != PROBE


async def test_redis_down_half_opens_alone(exchange: TripExchange) -> None:
    """Without Redis this node decides by itself: it half-opens after the period."""
    made = circuit(exchange)
    store(exchange).down = True
    trip(made)
    await settle(0.03)
    assert made.state == HALF_OPEN
    assert exchange.backend_errors >= 1


async def test_an_idle_half_open_gives_the_trial_back(exchange: TripExchange) -> None:
    """A winner that sends no trial before its token expires goes back to open."""
    made = circuit(exchange)
    trip(made)
    await settle(0.03)
    assert made.state == HALF_OPEN
    store(exchange).taken_by_other = True
    await settle(TTL + 0.02)
    assert made.state == OPEN


def heard(exchange: TripExchange, node: str, kind: str = "trip", seconds: float = 30) -> None:
    message = {"kind": kind, "member": NAME, "seconds": seconds, "level": 0, "node": node}
    exchange.hear(orjson.dumps(message))


async def test_one_other_nodes_trip_only_doubts_the_member(exchange: TripExchange) -> None:
    """corroborate = 2: one node's trip leaves the member closed here, but doubted: this
    node's next failure there trips it at once (and is published as its own report)."""
    made = circuit(exchange)
    heard(exchange, "b")
    assert (made.state, made.doubts) == (CLOSED, 1)
    assert made.doubt_until == pytest.approx(exchange.clock() + 30, abs=1)
    made.record(exchange.clock(), True, False, made.admit(exchange.clock()))
    await settle()
    assert made.state == OPEN
    assert exchange.bus.published[-1]["node"] == "me"  # type: ignore[attr-defined]
    assert store(exchange).kept[NAME] == {"me": (0.02, 0)}


async def test_a_success_dispels_the_doubt(exchange: TripExchange) -> None:
    """A doubted member that answers well here stays in service, and a later lone failure
    (under min_requests) does not trip it."""
    made = Circuit(BreakerSettings(min_requests=3), NAME)
    exchange.register(made, TTL)
    heard(exchange, "b")
    now = exchange.clock()
    made.record(now, False, False, made.admit(now))
    made.record(now, True, False, made.admit(now))
    assert (made.state, made.doubt_until) == (CLOSED, 0.0)
    assert exchange.bus.published == []  # type: ignore[attr-defined]


async def test_two_distinct_nodes_trips_open_the_member(exchange: TripExchange) -> None:
    """The same node reporting twice is one report; a second node's makes the quorum."""
    made = circuit(exchange)
    heard(exchange, "b")
    heard(exchange, "b")
    assert made.state == CLOSED
    heard(exchange, "c")
    assert made.state == OPEN
    assert made.retry_after(exchange.clock()) == pytest.approx(30, abs=1)


async def test_an_expired_report_does_not_corroborate() -> None:
    """A report whose open period has ended no longer counts toward the quorum."""
    now = [100.0]
    exchange = make_exchange(clock=lambda: now[0])
    try:
        made = circuit(exchange)
        heard(exchange, "b", seconds=5)
        now[0] = 105.0
        heard(exchange, "c", seconds=5)
        assert made.state == CLOSED
        assert made.doubt_until == 110.0
    finally:
        await exchange.stop()


async def test_this_nodes_own_trip_counts_toward_the_quorum(exchange: TripExchange) -> None:
    """This node tripped the member; one other node's report makes two."""
    made = circuit(exchange, open_seconds=30)
    trip(made)
    heard(exchange, "b", seconds=40)
    assert exchange.reports[NAME].count(exchange.clock()) == 2
    assert made.retry_after(exchange.clock()) == pytest.approx(40, abs=1)  # b's period


async def test_a_close_clears_the_reports(exchange: TripExchange) -> None:
    """After a close, earlier reports are gone: a new lone trip only doubts the member."""
    made = circuit(exchange)
    heard(exchange, "b")
    heard(exchange, "b", kind="close")
    heard(exchange, "c")
    assert made.state == CLOSED
    assert exchange.reports[NAME].count(exchange.clock()) == 1


async def test_load_opens_only_with_enough_live_reports(exchange: TripExchange) -> None:
    """On start or resync: one node's stored report doubts the member, two open it until
    the later of their periods ends."""
    made = circuit(exchange)
    store(exchange).kept[NAME] = {"b": (20.0, 0)}
    await exchange.load()
    assert (made.state, made.doubts) == (CLOSED, 1)
    store(exchange).kept[NAME]["c"] = (25.0, 1)
    await exchange.load()
    assert (made.state, made.level) == (OPEN, 1)
    assert made.retry_after(exchange.clock()) == pytest.approx(25, abs=1)


async def test_a_corroborated_trip_past_the_cap_leaves_the_member_in_service(
    exchange: TripExchange,
) -> None:
    """Two members, max_ejection_percent 50: one is open here already, so a quorum's trip
    of the other is counted, logged and left in service."""
    settings = BreakerSettings(min_requests=1, max_ejection_percent=50)
    cap = EjectionCap("app", settings.max_ejection_percent)
    first, second = (Circuit(settings, f"app|{m}", cap=cap) for m in ("a:1", "b:2"))
    cap.circuits = [first, second]
    for made in (first, second):
        exchange.register(made, TTL)
    trip(first)
    for node in ("b", "c"):
        message = {"kind": "trip", "member": "app|b:2", "seconds": 30, "level": 0, "node": node}
        exchange.hear(orjson.dumps(message))
    assert (first.state, second.state) == (OPEN, CLOSED)
    assert (second.capped, cap.refused) == (1, 1)
