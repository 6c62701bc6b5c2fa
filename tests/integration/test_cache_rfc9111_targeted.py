"""RFC 9213: CDN-Cache-Control (and this cache's own Scalenode-Cache-Control, first)
replaces Cache-Control and Expires for this cache, and is not forwarded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def calls(cached: Cached, headers: list[tuple[str, str]]) -> tuple[int, object]:
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node({"ttl": 0})
    _, first, _ = await cached.get(node, cached.path())
    await cached.get(node, cached.path())
    return cached.origin.count(cached.path()), first


async def test_cdn_cache_control_overrides_cache_control(cached: Cached) -> None:
    """Section 2.2: the targeted field is used and Cache-Control ignored."""
    count, _ = await calls(
        cached, [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")]
    )
    assert count == 1


async def test_cdn_no_store_overrides_a_cacheable_cache_control(cached: Cached) -> None:
    """And the other way round."""
    count, _ = await calls(
        cached, [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")]
    )
    assert count == 2


async def test_scalenode_cache_control_comes_first(cached: Cached) -> None:
    """This cache's own field beats CDN-Cache-Control."""
    count, _ = await calls(
        cached,
        [("CDN-Cache-Control", "no-store"), ("Scalenode-Cache-Control", "max-age=60")],
    )
    assert count == 1


async def test_targeted_fields_ignore_expires(cached: Cached) -> None:
    """Expires is ignored too when a targeted field applies."""
    count, _ = await calls(cached, [("CDN-Cache-Control", "public"), ("Expires", "0")])
    assert count == 2  # no freshness from the targeted field; ttl 0; Expires not read


async def test_targeted_fields_are_not_forwarded(cached: Cached) -> None:
    """Neither field reaches the client, on the miss nor on the hit."""
    headers = [("CDN-Cache-Control", "max-age=60"), ("Scalenode-Cache-Control", "max-age=60")]
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node({"ttl": 0})
    for _ in range(2):
        _, got, _ = await cached.get(node, cached.path())
        assert "CDN-Cache-Control" not in got and "Scalenode-Cache-Control" not in got
