"""RFC 9111 section 3.5: a reply to a request with Authorization is stored by a shared
cache only when marked public, s-maxage or must-revalidate."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


@pytest.mark.parametrize(
    ("cache_control", "stored"),
    [
        ("max-age=60", False),
        ("", False),
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        ("must-revalidate, max-age=60", True),
    ],
)
async def test_authorized_replies(cached: Cached, cache_control: str, stored: bool) -> None:
    """Only the three directives make an authorized reply shareable."""
    headers = [("Cache-Control", cache_control)] if cache_control else []
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node({"ttl": 30})
    for _ in range(2):
        await cached.get(node, cached.path(), headers={"Authorization": "Bearer t"})
    assert cached.origin.count(cached.path()) == (1 if stored else 2)
