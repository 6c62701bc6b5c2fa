"""RFC 9111 sections 3 and 4.2.2: heuristic freshness only for heuristically cacheable
statuses; the route's positive `ttl` is that heuristic, `ttl = 0` leaves only the origin's
headers and the Last-Modified heuristic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for, http_date


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def origin_calls(
    cached: Cached, cache: dict, status: int = 200, headers: tuple | list = ()
) -> int:
    cached.origin.script(cached.path(), status=status, headers=headers)
    node = await cached.node(cache)
    await cached.get(node, cached.path())
    await cached.get(node, cached.path())
    return cached.origin.count(cached.path())


async def test_positive_ttl_keeps_its_meaning(cached: Cached) -> None:
    """A 200 declaring no freshness is fresh for the route's ttl."""
    assert await origin_calls(cached, {"ttl": 30}) == 1


async def test_ttl_zero_stores_nothing_undeclared(cached: Cached) -> None:
    """ttl 0: no explicit freshness, no Last-Modified: not reused."""
    assert await origin_calls(cached, {"ttl": 0}) == 2


async def test_last_modified_heuristic(cached: Cached) -> None:
    """ttl 0: a tenth of the time since Last-Modified (10 days: a day, capped) is fresh."""
    headers = [("Date", http_date()), ("Last-Modified", http_date(-10 * 86400))]
    assert await origin_calls(cached, {"ttl": 0}, headers=headers) == 1


async def test_recent_last_modified_gives_little_freshness(cached: Cached) -> None:
    """Modified 5 s ago: 0.5 s of freshness, gone after a second."""
    headers = [("Date", http_date()), ("Last-Modified", http_date(-5))]
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node({"ttl": 0})
    await cached.get(node, cached.path())
    await asyncio.sleep(1.1)
    _, got, _ = await cached.get(node, cached.path())
    assert got["X-Cache"] != "HIT-L1"


@pytest.mark.parametrize("status", [502, 503, 504, 500, 302])
async def test_non_heuristic_statuses_need_explicit_freshness(cached: Cached, status: int) -> None:
    """Not heuristically cacheable (RFC 9110 15.1): never stored on the route ttl, even if
    `statuses` lists them."""
    assert await origin_calls(cached, {"ttl": 30, "statuses": [status]}, status) == 2


async def test_explicit_freshness_stores_a_listed_status(cached: Cached) -> None:
    """With max-age (section 3: explicit expiration), a listed 503 may be stored."""
    headers = [("Cache-Control", "max-age=60")]
    assert await origin_calls(cached, {"ttl": 30, "statuses": [503]}, 503, headers) == 1


@pytest.mark.parametrize("status", [404, 410, 301])
async def test_heuristic_statuses_use_the_ttl(cached: Cached, status: int) -> None:
    """404, 410 and 301 are heuristically cacheable: the route ttl applies."""
    assert await origin_calls(cached, {"ttl": 30, "statuses": [status]}, status) == 1
