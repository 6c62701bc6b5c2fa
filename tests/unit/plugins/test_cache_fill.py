"""The ResponseCache's fill across nodes sharing one L2: the fill lock, its timeout, and
stale refreshes that reach the origin once."""

from __future__ import annotations

import asyncio

import pytest
from testkit.cache_doubles import Clock, Origin, get, two_nodes

from node.call import Call
from node.schema import build
from plugins.cache.fill import Filler
from plugins.cache.plugin import ResponseCache
from plugins.cache.settings import CacheSettings
from plugins.cache.stores import MemoryL2


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_fill_lock_makes_one_fetch_across_nodes(clock: Clock) -> None:
    """Cold key, two nodes, 10 GETs each at once: one target call; the other node waited."""
    a, b = two_nodes(clock)
    origin = Origin()
    origin.delay = 0.05
    replies = await asyncio.gather(*(get(n, origin) for n in (a, b) * 10))
    assert origin.calls == 1 and {r.body for r in replies} == {b"v1"}
    assert {r.headers["X-Cache"] for r in replies} <= {"MISS", "HIT-L1", "HIT-L2"}


async def test_waiters_stop_waiting_when_the_fill_is_not_storable(clock: Clock) -> None:
    """no-store: the other node sees the lock go without a value and fetches at once."""
    a, b = two_nodes(clock)
    origin = Origin()
    origin.delay = 0.05
    origin.headers = {"Cache-Control": "no-store"}
    started = asyncio.get_running_loop().time()
    await asyncio.gather(get(a, origin), get(b, origin))
    assert origin.calls == 2
    assert asyncio.get_running_loop().time() - started < 1.0  # far from lock_timeout (5 s)


class FakeTime:
    """A monotonic clock that only `sleep` moves: a wait of seconds takes no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_lock_timeout_then_one_fetch(clock: Clock) -> None:
    """Another node holds the fill lock and never fills: after lock_timeout (waited on the
    fake clock) this node fetches once for its 5 concurrent requests; lock_timeouts == 1."""
    settings = build(CacheSettings, {"ttl": 10, "lock_timeout": 2}, "cache")
    l2, time = MemoryL2(), FakeTime()
    filler = Filler(l2, settings.lock_timeout, sleep=time.sleep, monotonic=time.monotonic)
    cache = ResponseCache(settings, "/r", filler, None, clock)  # type: ignore[arg-type]
    key = cache.key.of(Call("GET", "/x"))
    assert await l2.lock(key, "another-node", 60)
    origin = Origin()
    replies = await asyncio.gather(*(get(cache, origin) for _ in range(5)))
    assert origin.calls == 1 and {r.body for r in replies} == {b"v1"}
    assert time.now == pytest.approx(2.0) and max(time.slept) <= 0.1  # polled, not one nap
    counters = cache.snapshot()["counters"]
    assert counters["lock_timeouts"] == 1 and counters["misses"] == 1
    assert (await get(cache, origin)).headers["X-Cache"] == "HIT-L1"  # the fetch was stored


async def test_stale_refresh_is_one_origin_call_across_nodes(clock: Clock) -> None:
    """Both nodes serve STALE and start a refresh; one node's refresh finishes before the
    other's takes the lock, which then finds the fresh entry in L2: one origin call."""
    a, b = two_nodes(clock, stale_while_revalidate=30)
    origin = Origin()
    await get(a, origin)
    await get(b, origin)
    clock.now += 11
    replies = [await get(node, origin) for node in (a, b)]
    assert [r.headers["X-Cache"] for r in replies] == ["STALE", "STALE"]
    await asyncio.gather(*a.tasks)
    await asyncio.gather(*b.tasks)
    assert origin.calls == 2  # the fill, then one refresh
    assert [(await get(node, origin)).body for node in (a, b)] == [b"v2", b"v2"]
