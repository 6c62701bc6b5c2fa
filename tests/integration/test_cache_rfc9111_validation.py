"""RFC 9111 sections 4.2.4, 4.3.1, 4.3.3 and 4.3.4: a stale entry with a validator is
revalidated with a conditional request; a 304 freshens it and updates its fields;
no-cache and must-revalidate are honoured; one revalidation per key cluster-wide."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, SHARED, Cached, cached_for, http_date

MODIFIED = http_date(-3600)


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


@pytest.fixture(params=SHARED)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    """Nodes over one origin that share their L2."""
    async with cached_for(request.param) as made:
        yield made


async def test_stale_entry_is_revalidated_with_if_none_match(cached: Cached) -> None:
    """Section 4.3.1: the stored ETag goes out as If-None-Match; a 304 serves the stored
    body with the 304's fields (section 4.3.4)."""
    path = cached.path()
    cached.origin.script(
        path,
        headers=[("Cache-Control", "max-age=0"), ("ETag", '"a"'), ("X-Version", "1")],
        body=b"stored body",
    )
    cached.origin.script(
        path, 304, [("Cache-Control", "max-age=600"), ("ETag", '"a"'), ("X-Version", "2")], b""
    )
    node = await cached.node({"ttl": 0})
    await cached.get(node, path)
    status, headers, body = await cached.get(node, path)
    assert cached.origin.last(path)["If-None-Match"] == '"a"'
    assert (status, body, headers["X-Version"], headers["X-Cache"]) == (
        200,
        b"stored body",
        "2",
        "REVALIDATED",
    )
    _, again, _ = await cached.get(node, path)  # freshened by the 304's max-age
    assert again["X-Cache"] == "HIT-L1" and again["X-Version"] == "2"
    assert cached.origin.count(path) == 2


async def test_last_modified_is_sent_as_if_modified_since(cached: Cached) -> None:
    """Section 4.3.1: Last-Modified is used as If-Modified-Since."""
    path = cached.path()
    cached.origin.script(
        path, headers=[("Cache-Control", "max-age=0"), ("Last-Modified", MODIFIED)]
    )
    node = await cached.node({"ttl": 0})
    await cached.get(node, path)
    await cached.get(node, path)
    assert cached.origin.last(path)["If-Modified-Since"] == MODIFIED


async def test_a_200_to_the_validation_replaces_the_entry(cached: Cached) -> None:
    """A full reply to the conditional request is stored instead."""
    path = cached.path()
    cached.origin.script(path, headers=[("Cache-Control", "max-age=0"), ("ETag", '"a"')], body=b"a")
    cached.origin.script(
        path, headers=[("Cache-Control", "max-age=60"), ("ETag", '"b"')], body=b"b"
    )
    node = await cached.node({"ttl": 0})
    await cached.get(node, path)
    _, _, body = await cached.get(node, path)
    _, headers, again = await cached.get(node, path)
    assert (body, again, headers["ETag"], headers["X-Cache"]) == (b"b", b"b", '"b"', "HIT-L1")


@pytest.mark.parametrize("directive", ["no-cache", 'no-cache="X-A"'])
async def test_no_cache_revalidates_every_use(cached: Cached, directive: str) -> None:
    """Section 5.2.2.4: never reused without successful validation, even when fresh."""
    path = cached.path()
    cached.origin.script(
        path, headers=[("Cache-Control", f"{directive}, max-age=600"), ("ETag", '"a"')]
    )
    cached.origin.script(path, 304, [("ETag", '"a"')], b"")
    node = await cached.node({"ttl": 30})
    await cached.get(node, path)
    for _ in range(2):
        status, headers, _ = await cached.get(node, path)
        assert (status, headers["X-Cache"]) == (200, "REVALIDATED")
    assert cached.origin.count(path) == 3


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=0"])
async def test_strict_entries_are_never_served_stale(cached: Cached, directive: str) -> None:
    """Section 4.2.4 / 5.2.2.2: not served stale even when the target fails and the route
    allows stale_if_error."""
    path = cached.path()
    cached.origin.script(
        path, headers=[("Cache-Control", f"max-age=0, {directive}"), ("ETag", '"a"')]
    )
    cached.origin.script(path, 500, [], b"down")
    node = await cached.node({"ttl": 30, "stale_if_error": 60})
    await cached.get(node, path)
    status, headers, _ = await cached.get(node, path)
    assert (status, headers["X-Cache"]) == (500, "MISS")


async def origin_gone(cached: Cached) -> None:
    """The origin stops: its port refuses connections from now on."""
    await cached.origin.stop()
    cached.origin.runner = None


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate", "s-maxage=0"])
async def test_an_unreachable_origin_is_a_504_for_strict_entries(
    cached: Cached, directive: str
) -> None:
    """Section 5.2.2.2: a stale must-revalidate entry that cannot be revalidated (origin
    unreachable) is not reused; the cache answers 504, not the target's 502."""
    path = cached.path()
    cached.origin.script(
        path, headers=[("Cache-Control", f"max-age=0, {directive}"), ("ETag", '"a"')]
    )
    node = await cached.node({"ttl": 30, "stale_if_error": 60})
    await cached.get(node, path)
    await origin_gone(cached)
    status, headers, body = await cached.get(node, path)
    assert (status, headers["X-Cache"]) == (504, "MISS")
    assert b"gateway_timeout" in body and "X-Request-Id" in headers


async def test_an_unreachable_origin_stays_a_502_for_lenient_entries(cached: Cached) -> None:
    """The counterpart: an entry without those directives that the route may not serve
    stale leaves the target's 502 as it is."""
    path = cached.path()
    cached.origin.script(path, headers=[("Cache-Control", "max-age=0"), ("ETag", '"a"')])
    node = await cached.node({"ttl": 30, "stale_if_error": 0})
    await cached.get(node, path)
    await origin_gone(cached)
    status, headers, _ = await cached.get(node, path)
    assert (status, headers["X-Cache"]) == (502, "MISS")


async def test_lenient_entries_may_cover_a_failure(cached: Cached) -> None:
    """The counterpart: without those directives stale_if_error serves it STALE."""
    path = cached.path()
    cached.origin.script(path, headers=[("Cache-Control", "max-age=0"), ("ETag", '"a"')])
    cached.origin.script(path, 500, [], b"down")
    node = await cached.node({"ttl": 30, "stale_if_error": 60})
    await cached.get(node, path)
    status, headers, _ = await cached.get(node, path)
    assert (status, headers["X-Cache"]) == (200, "STALE")


async def test_revalidation_is_one_request_cluster_wide(shared: Cached) -> None:
    """20 concurrent requests over two nodes for a stale key: one conditional request."""
    path = shared.path()
    shared.origin.script(path, headers=[("Cache-Control", "max-age=1"), ("ETag", '"a"')])
    shared.origin.script(path, 304, [("Cache-Control", "max-age=60"), ("ETag", '"a"')], b"")
    a, b = await shared.node({"ttl": 0, "l1_ttl": 0}), await shared.node({"ttl": 0, "l1_ttl": 0})
    await shared.get(a, path)
    await asyncio.sleep(1.1)
    shared.origin.delay = 0.3
    replies = await asyncio.gather(*(shared.get((a, b)[i % 2], path) for i in range(20)))
    assert {status for status, _, _ in replies} == {200}
    assert shared.origin.count(path) == 2
