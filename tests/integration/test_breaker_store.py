"""plugins/breaker/store.py against the real Redis: trip reports per node, the trial token."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from node.cluster.redis import RedisConnection
from plugins.breaker.keys import BREAKER_PROBES, BREAKER_TRIPS
from plugins.breaker.store import RedisTrips

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def trips() -> AsyncIterator[RedisTrips]:
    connection = RedisConnection(REDIS_URL)
    yield RedisTrips(connection)
    await connection.close()


@pytest.fixture
def name(trips: RedisTrips) -> str:
    return f"app|test-{uuid.uuid4().hex[:8]}:1"


@pytest.fixture(autouse=True)
async def cleanup(trips: RedisTrips, name: str) -> AsyncIterator[None]:
    yield
    await trips.redis.client.delete(BREAKER_TRIPS + name, BREAKER_PROBES + name)


async def test_each_node_has_its_own_report(trips: RedisTrips, name: str) -> None:
    """Two nodes' trips are two reports, each with its period left and its level; a node's
    re-trip replaces its report."""
    await trips.report(name, "a", 30, 0)
    await trips.report(name, "b", 10, 0)
    await trips.report(name, "a", 60, 1)
    found = {node: (seconds, level) for node, seconds, level in await trips.reports(name)}
    assert found.keys() == {"a", "b"}
    assert 59 < found["a"][0] <= 60 and found["a"][1] == 1
    assert 9 < found["b"][0] <= 10 and found["b"][1] == 0


async def test_a_report_ends_with_its_period_and_the_hash_with_the_longest(
    trips: RedisTrips, name: str
) -> None:
    """A short report is gone once its period ends, while a longer one keeps the key."""
    await trips.report(name, "a", 5, 0)
    await trips.report(name, "b", 0.05, 0)
    ttl = await trips.redis.client.pttl(BREAKER_TRIPS + name)
    assert 4900 < ttl <= 5000
    await asyncio.sleep(0.08)
    assert [node for node, *_ in await trips.reports(name)] == ["a"]


async def test_the_token_goes_to_one_node_and_clear_removes_everything(
    trips: RedisTrips, name: str
) -> None:
    """Only the first claim of the trial token wins; a close clears reports and token."""
    await trips.report(name, "a", 30, 0)
    assert await trips.claim(name, "a", 5) is True
    assert await trips.claim(name, "b", 5) is False
    await trips.clear(name)
    assert await trips.reports(name) == []
    assert await trips.claim(name, "b", 5) is True
