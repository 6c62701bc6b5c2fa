"""Cluster membership on a private Redis: the heartbeat's own connection and timeout, and
silent and departed nodes kept listed for the retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as redis

from node.cluster.redis import RedisConnection
from node.cluster.registry import NodeRegistry

INTERVAL = 0.1  # seconds between heartbeats here; a node's default is 1 s
TTL = 0.5
# Keeps Redis (single-threaded) busy for ARGV[1] ms: every other client waits meanwhile.
BUSY_LUA = """
local function ms() local t = redis.call("TIME") return t[1] * 1000 + t[2] / 1000 end
local stop = ms() + tonumber(ARGV[1])
while ms() < stop do end
return 1
"""


@pytest.fixture
async def make(redis_server) -> AsyncIterator[Callable[..., Awaitable[NodeRegistry]]]:
    """Started registries on the private Redis, each with a hot-path connection of its own."""
    made: list[tuple[NodeRegistry, RedisConnection]] = []

    async def start(name: str, **options: float) -> NodeRegistry:
        connection = RedisConnection(redis_server.url)
        registry = NodeRegistry(
            name, "all", f"{name}:1", connection, interval=INTERVAL, ttl=TTL, **options
        )
        registry.snapshot = lambda: {"metrics": {"rps_10s": 1.0}}
        await registry.start()
        made.append((registry, connection))
        return registry

    yield start
    for registry, connection in made:
        await registry.stop()
        await connection.close()


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < seconds, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def members(registry: NodeRegistry) -> dict[str, dict]:
    return {m["name"]: m for m in await registry.members()}


def silence(registry: NodeRegistry) -> None:
    """Stop the heartbeat as a SIGKILL would: no goodbye."""
    assert registry._task is not None
    registry._task.cancel()


async def test_the_heartbeat_goes_on_while_the_hot_path_fails_fast(make):
    """The hot path's connection latched down (an outage seen by requests) does not stop the
    heartbeat: it has a client of its own."""
    a = await make("a")
    await until(lambda: _has(a, "a"))
    assert a.redis is not None
    a.redis.available = False  # what a burst of 1 s timeouts on the hot path leaves behind
    await asyncio.sleep(5 * INTERVAL)
    assert (await members(a))["a"]["age"] < 3 * INTERVAL


async def test_a_slow_redis_answer_is_late_not_an_outage(make, redis_server):
    """Redis stalled for 1.5 s (longer than the hot path's 1 s command timeout): the beat
    waits it out and the node stays a member, its age back under an interval after."""
    a = await make("a")
    await until(lambda: _has(a, "a"))
    stall = redis.Redis.from_url(redis_server.url)
    try:
        await stall.eval(BUSY_LUA, 0, 1500)
    finally:
        await stall.aclose()
    assert not a._failing
    await until(lambda: _age_below(a, "a", 2 * INTERVAL))


async def test_a_silent_node_stays_listed_and_a_stopped_one_left(make):
    """Killed: listed with a growing age, out of the live list and count; stopped: left."""
    a, b, c = await make("a"), await make("b"), await make("c")
    await until(lambda: _live(a, {"a", "b", "c"}))
    silence(b)
    await until(lambda: _live(a, {"a", "c"}), TTL + 1)
    listed = await members(a)
    assert listed["b"]["age"] > TTL and not listed["b"]["left"]
    assert a.live_count() == 2 or await _count_settles(a, 2)
    await c.stop()
    listed = await members(a)
    assert listed["c"]["left"] and listed["c"]["age"] < 0.5


async def test_a_member_is_forgotten_after_the_retention(make):
    """Past the retention a silent node is no longer listed (and its record expires)."""
    a = await make("a", retention=1.0)
    b = await make("b", retention=1.0)
    await until(lambda: _has(a, "b"))
    silence(b)
    await until(lambda: _gone(a, "b"), 3.0)


async def test_a_node_back_after_leaving_is_a_member_again(make):
    """A node that left and starts again under its name is live, not left."""
    a = await make("a")
    b = await make("b")
    await until(lambda: _has(a, "b"))
    await b.stop()
    assert (await members(a))["b"]["left"]
    await make("b")
    await until(lambda: _live(a, {"a", "b"}))
    assert not (await members(a))["b"]["left"]


async def _has(registry: NodeRegistry, name: str) -> bool:
    return name in await members(registry)


async def _gone(registry: NodeRegistry, name: str) -> bool:
    return name not in await members(registry)


async def _age_below(registry: NodeRegistry, name: str, seconds: float) -> bool:
    return (await members(registry))[name]["age"] < seconds


async def _live(registry: NodeRegistry, names: set[str]) -> bool:
    return {n["name"] for n in await registry.nodes()} == names


async def _count_settles(registry: NodeRegistry, count: int) -> bool:
    await until(lambda: _equals(registry.live_count(), count), 1.0)
    return True


async def _equals(a: int, b: int) -> bool:
    return a == b
