"""plugins/breaker/shared.py with a scripted Redis and bus: who opens, who tries, who closes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from node.errors import BackendUnavailable
from plugins.breaker.circuit import CLOSED, HALF_OPEN, OPEN, PROBE, Circuit
from plugins.breaker.keys import BREAKER_EVENTS, BREAKER_PROBES, BREAKER_TRIPS
from plugins.breaker.settings import BreakerSettings
from plugins.breaker.shared import TripExchange

TTL = 0.05  # seconds a trial token lives in these tests


class FakeClient:
    def __init__(self) -> None:
        self.keys: dict[str, bytes | str] = {}
        self.taken_by_other = False

    async def set(self, key: str, value: Any, px: int, nx: bool = False) -> bool:
        if nx and (self.taken_by_other or key in self.keys):
            return False
        self.keys[key] = value
        return True

    async def delete(self, *keys: str) -> int:
        return sum(self.keys.pop(k, None) is not None for k in keys)


class FakeRedis:
    """RedisConnection's `run`, over a dict; `down` makes every call BackendUnavailable."""

    def __init__(self) -> None:
        self.client = FakeClient()
        self.down = False

    async def run(self, operation: Any) -> Any:
        if self.down:
            raise BackendUnavailable("down")
        return await operation(self.client)


class FakeBus:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.listener: Any = None

    def subscribe(self, channel: str, listener: Any, on_resync: Any = None) -> None:
        assert channel == BREAKER_EVENTS
        self.listener = listener

    async def publish(self, channel: str, payload: bytes) -> None:
        self.published.append(orjson.loads(payload))


@pytest.fixture
async def exchange() -> Any:
    made = TripExchange("me", FakeRedis(), FakeBus())  # type: ignore[arg-type]
    yield made
    await made.stop()


def circuit(exchange: TripExchange, open_seconds: float = 0.02) -> Circuit:
    made = Circuit(BreakerSettings(min_requests=1, open_seconds=open_seconds), "app|a:1")
    exchange.register(made, TTL)
    return made


def trip(made: Circuit) -> None:
    made.record(0.0, True, False, made.admit(0.0))


async def settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_trip_is_published_and_recorded_with_its_period(exchange: TripExchange) -> None:
    """This node's trip goes on the bus and into the trip key."""
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
    assert BREAKER_TRIPS + "app|a:1" in exchange.redis.client.keys  # type: ignore[attr-defined]


async def test_another_nodes_trip_opens_and_its_close_closes(exchange: TripExchange) -> None:
    """A trip heard from another node opens the member here; its close closes it."""
    made = circuit(exchange)
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
    assert BREAKER_PROBES + "app|a:1" not in exchange.redis.client.keys  # type: ignore[attr-defined]


async def test_a_lost_token_keeps_the_member_open(exchange: TripExchange) -> None:
    """Another node holds the trial token: this one stays open and sends no trial."""
    made = circuit(exchange)
    exchange.redis.client.taken_by_other = True  # type: ignore[attr-defined]
    trip(made)
    await settle(0.03)
    assert made.state == OPEN
    assert made.admit(1e9) != PROBE


async def test_redis_down_half_opens_alone(exchange: TripExchange) -> None:
    """Without Redis this node decides by itself: it half-opens after the period."""
    made = circuit(exchange)
    exchange.redis.down = True  # type: ignore[attr-defined]
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
    exchange.redis.client.taken_by_other = True  # type: ignore[attr-defined]
    await settle(TTL + 0.02)
    assert made.state == OPEN
