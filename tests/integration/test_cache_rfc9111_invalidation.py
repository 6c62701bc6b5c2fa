"""RFC 9111 section 4.4: a non-error reply to a method not known to be safe invalidates
the target URI and the same-origin URIs in its Location and Content-Location."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for

METHODS: tuple[str, ...] = ()  # every method, unknown ones included


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def warm(cached: Cached, node: object, *names: str) -> None:
    for name in names:
        cached.origin.script(cached.path(name), headers=[("Cache-Control", "max-age=600")])
        await cached.get(node, cached.path(name))


def refetched(cached: Cached, name: str) -> bool:
    return cached.origin.count(cached.path(name)) == 2


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "POST"])
async def test_unsafe_methods_invalidate(cached: Cached, method: str) -> None:
    """Unsafe methods invalidate the target URI (unknown methods: the node refuses them
    before the cache; tests/unit/plugins/test_cache_plugin.py covers the plugin)."""
    node = await cached.node(methods=METHODS)
    await warm(cached, node, "r")
    status, _, _ = await cached.get(node, cached.path("r"), method=method)
    await cached.get(node, cached.path("r"))
    assert status == 200 and refetched(cached, "r")


@pytest.mark.parametrize("field", ["Location", "Content-Location"])
async def test_same_origin_location_is_invalidated(cached: Cached, field: str) -> None:
    """Location / Content-Location naming this origin's URI: that entry goes too."""
    node = await cached.node(methods=METHODS)
    await warm(cached, node, "r", "other")
    cached.origin.scripts.pop(cached.path("r"))
    cached.origin.script(cached.path("r"), 201, [(field, "/c" + cached.path("other"))], b"")
    await cached.get(node, cached.path("r"), method="POST")
    await cached.get(node, cached.path("other"))
    assert refetched(cached, "other")


async def test_another_origins_location_is_left(cached: Cached) -> None:
    """A Location on another host is not this cache's to invalidate (section 4.4)."""
    node = await cached.node(methods=METHODS)
    await warm(cached, node, "r", "other")
    location = "http://elsewhere.example/c" + cached.path("other")
    cached.origin.scripts.pop(cached.path("r"))
    cached.origin.script(cached.path("r"), 201, [("Location", location)], b"")
    await cached.get(node, cached.path("r"), method="POST")
    await cached.get(node, cached.path("other"))
    assert not refetched(cached, "other")


async def test_an_error_reply_invalidates_nothing(cached: Cached) -> None:
    """Only a non-error status invalidates."""
    node = await cached.node(methods=METHODS)
    await warm(cached, node, "r")
    cached.origin.scripts.pop(cached.path("r"))
    cached.origin.script(cached.path("r"), 409, [], b"")
    await cached.get(node, cached.path("r"), method="PATCH")
    await cached.get(node, cached.path("r"))
    assert not refetched(cached, "r")
