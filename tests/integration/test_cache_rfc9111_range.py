"""RFC 9110 section 14 (with RFC 9111 section 3.4): a Range request is answered 206 from a
stored whole reply; a 206 from the origin passes through unstored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for

BODY = b"0123456789abcdefghij"


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def stored(cached: Cached) -> object:
    headers = [("Cache-Control", "max-age=600"), ("ETag", '"s"'), ("Content-Type", "text/plain")]
    cached.origin.script(cached.path(), headers=headers, body=BODY)
    node = await cached.node()
    await cached.get(node, cached.path())
    return node


@pytest.mark.parametrize(
    ("given", "part", "content_range"),
    [
        ("bytes=0-3", b"0123", "bytes 0-3/20"),
        ("bytes=-5", b"fghij", "bytes 15-19/20"),
        ("bytes=18-", b"ij", "bytes 18-19/20"),
        ("bytes=15-99", b"fghij", "bytes 15-19/20"),
    ],
)
async def test_single_range_from_the_cache(
    cached: Cached, given: str, part: bytes, content_range: str
) -> None:
    """Section 14.1.2 forms: first-last, suffix, open-ended, last past the end."""
    node = await stored(cached)
    status, headers, body = await cached.get(node, cached.path(), headers={"Range": given})
    assert (status, body, headers["Content-Range"]) == (206, part, content_range)
    assert cached.origin.count(cached.path()) == 1


async def test_multiple_ranges_are_multipart(cached: Cached) -> None:
    """Section 14.6: several ranges come as multipart/byteranges, each with Content-Range."""
    node = await stored(cached)
    status, headers, body = await cached.get(
        node, cached.path(), headers={"Range": "bytes=0-1,5-6"}
    )
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    assert b"Content-Range: bytes 0-1/20\r\n\r\n01" in body
    assert b"Content-Range: bytes 5-6/20\r\n\r\n56" in body


async def test_unsatisfiable_range_is_416(cached: Cached) -> None:
    """Section 15.5.17: no satisfiable range: 416 with `bytes */length`."""
    node = await stored(cached)
    status, headers, _ = await cached.get(node, cached.path(), headers={"Range": "bytes=50-60"})
    assert (status, headers["Content-Range"]) == (416, "bytes */20")


@pytest.mark.parametrize(("if_range", "status"), [('"s"', 206), ('"other"', 200), ('W/"s"', 200)])
async def test_if_range(cached: Cached, if_range: str, status: int) -> None:
    """Section 13.1.5: the range only if the strong validator matches; else the whole."""
    node = await stored(cached)
    got, _, _ = await cached.get(
        node, cached.path(), headers={"Range": "bytes=0-3", "If-Range": if_range}
    )
    assert got == status


async def test_a_cold_range_request_stores_the_whole(cached: Cached) -> None:
    """A miss asks the origin for the whole reply (no Range), stores it, answers 206."""
    cached.origin.script(cached.path(), headers=[("Cache-Control", "max-age=600")], body=BODY)
    node = await cached.node()
    status, _, body = await cached.get(node, cached.path(), headers={"Range": "bytes=0-1"})
    assert (status, body) == (206, b"01") and "Range" not in cached.origin.last(cached.path())
    _, headers, whole = await cached.get(node, cached.path())
    assert (headers["X-Cache"], whole) == ("HIT-L1", BODY)


async def test_an_origin_206_is_not_stored(cached: Cached) -> None:
    """A partial reply passes through and is never stored as the whole."""
    headers = [("Cache-Control", "max-age=600"), ("Content-Range", "bytes 0-1/20")]
    cached.origin.script(cached.path(), 206, headers, b"01")
    node = await cached.node({"ttl": 30, "statuses": [200, 206]})
    status, _, _ = await cached.get(node, cached.path())
    await cached.get(node, cached.path())
    assert status == 206 and cached.origin.count(cached.path()) == 2
