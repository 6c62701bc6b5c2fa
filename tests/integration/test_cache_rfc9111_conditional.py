"""RFC 9111 section 4.3.2 with RFC 9110 section 13: a cache answers a client's
If-None-Match (weak comparison, taking precedence) and If-Modified-Since from a fresh
stored reply with 304."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for, http_date

MODIFIED = http_date(-3600)


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def stored(cached: Cached, etag: str = 'W/"v1"') -> object:
    headers = [("Cache-Control", "max-age=600"), ("ETag", etag), ("Last-Modified", MODIFIED)]
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node()
    await cached.get(node, cached.path())
    return node


@pytest.mark.parametrize("given", ['"v1"', 'W/"v1"', '"x", W/"v1"', "*"])
async def test_if_none_match_weak_comparison_gives_304(cached: Cached, given: str) -> None:
    """Section 13.1.2: weak comparison; a listed or `*` match is 304 with the ETag."""
    node = await stored(cached)
    status, headers, body = await cached.get(node, cached.path(), headers={"If-None-Match": given})
    assert (status, headers["ETag"], body) == (304, 'W/"v1"', b"")
    assert cached.origin.count(cached.path()) == 1


async def test_if_none_match_mismatch_is_200(cached: Cached) -> None:
    """Another tag: the full stored reply."""
    node = await stored(cached)
    status, _, body = await cached.get(node, cached.path(), headers={"If-None-Match": '"v2"'})
    assert (status, body) == (200, b"payload")


async def test_if_none_match_takes_precedence(cached: Cached) -> None:
    """Section 13.2.2: If-Modified-Since is ignored when If-None-Match is present."""
    node = await stored(cached)
    conditions = {"If-None-Match": '"v2"', "If-Modified-Since": http_date()}
    status, _, _ = await cached.get(node, cached.path(), headers=conditions)
    assert status == 200


async def test_if_modified_since_gives_304(cached: Cached) -> None:
    """Last-Modified not after If-Modified-Since: 304; earlier date: 200."""
    node = await stored(cached)
    late, _, _ = await cached.get(node, cached.path(), headers={"If-Modified-Since": http_date()})
    early, _, _ = await cached.get(
        node, cached.path(), headers={"If-Modified-Since": http_date(-7200)}
    )
    assert (late, early) == (304, 200)


async def test_a_conditional_miss_stores_the_whole_reply(cached: Cached) -> None:
    """A cold conditional request: the origin is asked for the whole reply (the client's
    validators are the cache's to answer), the client still gets its 304."""
    cached.origin.script(cached.path(), headers=[("Cache-Control", "max-age=600"), ("ETag", '"a"')])
    node = await cached.node()
    status, _, _ = await cached.get(node, cached.path(), headers={"If-None-Match": '"a"'})
    assert status == 304 and "If-None-Match" not in cached.origin.last(cached.path())
    full, headers, body = await cached.get(node, cached.path())
    assert (full, headers["X-Cache"], body) == (200, "HIT-L1", b"payload")
