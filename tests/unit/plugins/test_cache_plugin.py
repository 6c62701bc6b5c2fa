"""The ResponseCache plugin on one node: a fake clock and a counting target, over the memory L2."""

from __future__ import annotations

import asyncio

import pytest
from testkit.cache_doubles import Clock, Origin, get, make

from node.errors import BackendUnavailable, BadGateway, CircuitOpen, Rejected
from node.schema import build
from plugins.cache.fill import Filler
from plugins.cache.plugin import ResponseCache
from plugins.cache.settings import CacheSettings
from plugins.cache.stores import MemoryL2


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_miss_then_l1_hit_with_age(clock: Clock) -> None:
    """The first GET is a MISS; the next, 3 s later, a HIT-L1 with Age 3."""
    cache, _ = make(clock)
    origin = Origin()
    first = await get(cache, origin)
    clock.now += 3
    second = await get(cache, origin)
    assert first.headers["X-Cache"] == "MISS" and second.headers["X-Cache"] == "HIT-L1"
    assert second.headers["Age"] == "3" and second.body == b"v1" and origin.calls == 1


async def test_l2_hit_after_l1_expires(clock: Clock) -> None:
    """Past l1_ttl the entry comes from L2 (HIT-L2), still without an origin call."""
    cache, _ = make(clock, l1_ttl=1)
    origin = Origin()
    await get(cache, origin)
    clock.now += 2
    assert (await get(cache, origin)).headers["X-Cache"] == "HIT-L2"
    assert origin.calls == 1


async def test_single_flight_on_one_node(clock: Clock) -> None:
    """20 concurrent cold GETs of one key: the target is called once, all get its body."""
    cache, _ = make(clock)
    origin = Origin()
    origin.delay = 0.05
    replies = await asyncio.gather(*(get(cache, origin) for _ in range(20)))
    assert origin.calls == 1
    assert {r.body for r in replies} == {b"v1"}
    assert cache.snapshot()["counters"]["lock_waits"] == 19


async def test_no_store_is_never_cached(clock: Clock) -> None:
    """Cache-Control: no-store → every GET reaches the target, X-Cache: MISS."""
    cache, _ = make(clock)
    origin = Origin()
    origin.headers = {"Cache-Control": "no-store"}
    replies = [await get(cache, origin) for _ in range(3)]
    assert origin.calls == 3 and {r.headers["X-Cache"] for r in replies} == {"MISS"}


async def test_max_age_sets_the_ttl(clock: Clock) -> None:
    """max-age=2 beats the route's ttl of 10: after 2 s the origin is asked again."""
    cache, _ = make(clock)
    origin = Origin()
    origin.headers = {"Cache-Control": "max-age=2"}
    await get(cache, origin)
    clock.now += 2.5
    await get(cache, origin)
    assert origin.calls == 2


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(clock: Clock) -> None:
    """Past ttl but within the window: STALE at once, one background refresh."""
    cache, _ = make(clock, stale_while_revalidate=30)
    origin = Origin()
    await get(cache, origin)
    clock.now += 11
    replies = [await get(cache, origin) for _ in range(3)]
    assert [r.headers["X-Cache"] for r in replies] == ["STALE"] * 3
    await asyncio.gather(*cache.tasks)
    assert origin.calls == 2
    fresh = await get(cache, origin)
    assert fresh.body == b"v2" and fresh.headers["X-Cache"] == "HIT-L1"


@pytest.mark.parametrize("failure", [BadGateway("down"), CircuitOpen("open")])
async def test_stale_if_error_covers_a_failing_target(clock: Clock, failure: Exception) -> None:
    """The target fails (502, breaker open): the stale entry is served as STALE."""
    cache, _ = make(clock, stale_if_error=60)
    origin = Origin()
    await get(cache, origin)
    clock.now += 20
    origin.failure = failure
    reply = await get(cache, origin)
    assert reply.headers["X-Cache"] == "STALE" and reply.body == b"v1"


async def test_stale_if_error_covers_a_5xx_reply(clock: Clock) -> None:
    """A 503 from the target is replaced by the stale entry."""
    cache, _ = make(clock, stale_if_error=60)
    origin = Origin()
    await get(cache, origin)
    clock.now += 20
    origin.status = 503
    assert (await get(cache, origin)).body == b"v1"


async def test_failure_without_stale_keeps_the_error(clock: Clock) -> None:
    """Past stale_if_error the target's error stands, labelled MISS."""
    cache, _ = make(clock, stale_if_error=5)
    origin = Origin()
    await get(cache, origin)
    clock.now += 20
    origin.failure = BadGateway("down")
    with pytest.raises(BadGateway) as caught:
        await get(cache, origin)
    assert caught.value.headers["X-Cache"] == "MISS"


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE", "FROB"])
async def test_write_invalidates_the_path(clock: Clock, method: str) -> None:
    """A write, or any method not known safe (RFC 9111 4.4), goes to the target, is
    labelled BYPASS, and drops the path everywhere."""
    cache, invalidated = make(clock)
    origin = Origin()
    await get(cache, origin)
    reply = await get(cache, origin, method=method)
    assert reply.headers["X-Cache"] == "BYPASS" and invalidated == [("path", "/x")]


@pytest.mark.parametrize("method", ["OPTIONS", "TRACE"])
async def test_safe_methods_invalidate_nothing(clock: Clock, method: str) -> None:
    """OPTIONS and TRACE are safe (RFC 9110 9.2.1): passed through, nothing dropped."""
    cache, invalidated = make(clock)
    reply = await get(cache, Origin(), method=method)
    assert reply.headers["X-Cache"] == "BYPASS" and invalidated == []


async def test_failed_write_does_not_invalidate(clock: Clock) -> None:
    """A 4xx answer to a PUT changes nothing, so nothing is dropped."""
    cache, invalidated = make(clock)
    origin = Origin()
    origin.status = 409
    await get(cache, origin, method="PUT")
    assert invalidated == []


async def test_head_is_served_from_the_get_entry(clock: Clock) -> None:
    """HEAD after GET is a hit; a cold HEAD stores nothing."""
    cache, _ = make(clock)
    origin = Origin()
    assert (await get(cache, origin, "/h", "HEAD")).headers["X-Cache"] == "MISS"
    await get(cache, origin, "/h")
    assert (await get(cache, origin, "/h", "HEAD")).headers["X-Cache"] == "HIT-L1"
    assert origin.calls == 2


async def test_statuses_outside_the_list_are_not_stored(clock: Clock) -> None:
    """A 500 is passed through and asked for again next time."""
    cache, _ = make(clock)
    origin = Origin()
    origin.status = 500
    await get(cache, origin)
    await get(cache, origin)
    assert origin.calls == 2


async def test_hit_ratio_gauge(clock: Clock) -> None:
    """One miss and three hits: hit_ratio 0.75."""
    cache, _ = make(clock)
    origin = Origin()
    for _ in range(4):
        await get(cache, origin)
    assert cache.snapshot()["gauges"]["hit_ratio"] == 0.75


async def test_coalesced_waiters_are_not_hits(clock: Clock) -> None:
    """20 concurrent cold GETs on one node: 1 miss and 19 coalesced, no hit; the ratio
    counts them as lookups only, and the next GET is the first real hit."""
    cache, _ = make(clock)
    origin = Origin()
    origin.delay = 0.05
    replies = await asyncio.gather(*(get(cache, origin) for _ in range(20)))
    assert sorted(r.headers["X-Cache"] for r in replies) == ["HIT-L1"] * 19 + ["MISS"]
    snapshot = cache.snapshot()
    counters = snapshot["counters"]
    assert (counters["misses"], counters["coalesced"], counters["hits_l1"]) == (1, 19, 0)
    assert counters["lookups"] == 20 and snapshot["gauges"]["hit_ratio"] == 0.0
    await get(cache, origin)
    snapshot = cache.snapshot()
    assert snapshot["counters"]["hits_l1"] == 1 and snapshot["counters"]["lookups"] == 21
    assert snapshot["gauges"]["hit_ratio"] == round(1 / 21, 4)


class SlowL2(MemoryL2):
    """An L2 whose reads take 20 ms, so concurrent readers of one key overlap."""

    async def get(self, key: str) -> bytes | None:
        await asyncio.sleep(0.02)
        return await super().get(key)


async def test_waiters_on_an_l2_read_count_as_l2_hits(clock: Clock) -> None:
    """A warm key in L2, cold in this node's L1: 5 concurrent GETs share one L2 read,
    and all 5 are L2 hits (served from the store, not from the target)."""
    settings = build(CacheSettings, {"ttl": 10}, "cache")
    l2 = SlowL2()
    first = ResponseCache(settings, "/r", Filler(l2, 5), None, clock)  # type: ignore[arg-type]
    origin = Origin()
    await get(first, origin)
    other = ResponseCache(settings, "/r", Filler(l2, 5), None, clock)  # type: ignore[arg-type]
    await asyncio.gather(*(get(other, origin) for _ in range(5)))
    counters = other.snapshot()["counters"]
    assert (counters["hits_l2"], counters["coalesced"], counters["misses"]) == (5, 0, 0)
    assert other.snapshot()["gauges"]["hit_ratio"] == 1.0 and origin.calls == 1


async def test_stale_and_bypass_are_lookups_not_hits(clock: Clock) -> None:
    """A miss, a hit, then a STALE: hit_ratio 1/3; a write (BYPASS) is no lookup."""
    cache, _ = make(clock, stale_while_revalidate=30)
    origin = Origin()
    await get(cache, origin)
    await get(cache, origin)
    clock.now += 11
    assert (await get(cache, origin)).headers["X-Cache"] == "STALE"
    await asyncio.gather(*cache.tasks)
    await get(cache, origin, method="PUT")
    snapshot = cache.snapshot()
    assert snapshot["counters"]["lookups"] == 3 and snapshot["counters"]["bypass"] == 1
    assert snapshot["gauges"]["hit_ratio"] == round(1 / 3, 4)


@pytest.mark.parametrize(
    ("method", "label"),
    [
        ("GET", "MISS"),
        ("HEAD", "MISS"),
        ("PUT", "BYPASS"),
        ("POST", "BYPASS"),
        ("OPTIONS", "BYPASS"),
    ],
)
async def test_a_rejected_target_passes_through_labelled(
    clock: Clock, method: str, label: str
) -> None:
    """The target raises Rejected (its reply is made outside the cache): it passes through
    unchanged but for X-Cache in its headers, and the dict its raiser passed is not touched."""
    cache, invalidated = make(clock)
    origin = Origin()
    shared = {"Retry-After": "1"}
    origin.failure = Rejected("no", status=418, code="teapot", headers=shared)
    with pytest.raises(Rejected) as caught:
        await get(cache, origin, method=method)
    assert caught.value is origin.failure and caught.value.status == 418
    assert caught.value.headers == {"Retry-After": "1", "X-Cache": label}
    assert shared == {"Retry-After": "1"} and invalidated == []


class DownL2(MemoryL2):
    """An L2 whose backend is unreachable: every call raises BackendUnavailable."""

    @property
    def available(self) -> bool:
        return False

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        raise BackendUnavailable("down")


async def test_l2_down_means_bypass_and_l1_hits(clock: Clock) -> None:
    """With L2 unreachable: a miss is BYPASS (kept in L1), the next GET a HIT-L1."""
    settings = build(CacheSettings, {"ttl": 10}, "cache")
    cache = ResponseCache(settings, "/r", Filler(DownL2(), 5), None, clock)  # type: ignore[arg-type]
    origin = Origin()
    assert (await get(cache, origin)).headers["X-Cache"] == "BYPASS"
    assert (await get(cache, origin)).headers["X-Cache"] == "HIT-L1"
    assert origin.calls == 1


async def test_stale_refresh_happens_with_l2_down(clock: Clock) -> None:
    """stale_while_revalidate still refreshes this node's copy while Redis is away."""
    settings = build(CacheSettings, {"ttl": 3, "stale_while_revalidate": 30}, "cache")
    cache = ResponseCache(settings, "/r", Filler(DownL2(), 5), None, clock)  # type: ignore[arg-type]
    origin = Origin()
    await get(cache, origin)
    clock.now += 4  # stale, and still within L1's 5 s
    assert (await get(cache, origin)).headers["X-Cache"] == "STALE"
    await asyncio.gather(*cache.tasks)
    assert (await get(cache, origin)).body == b"v2"


async def test_a_rejected_target_is_labelled_bypass_with_l2_down(clock: Clock) -> None:
    """Redis away: a GET whose target raises Rejected carries X-Cache: BYPASS."""
    settings = build(CacheSettings, {"ttl": 10}, "cache")
    cache = ResponseCache(settings, "/r", Filler(DownL2(), 5), None, clock)  # type: ignore[arg-type]
    origin = Origin()
    origin.failure = BadGateway("down")
    with pytest.raises(BadGateway) as caught:
        await get(cache, origin)
    assert caught.value.headers["X-Cache"] == "BYPASS"
