"""RFC 9111 section 4.1: a stored reply is reused only when the request's fields named by
the reply's own Vary match (normalised) those of the request that stored it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, SHARED, Cached, cached_for


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


@pytest.fixture(params=SHARED)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    """Nodes over one origin that share their L2."""
    async with cached_for(request.param) as made:
        yield made


async def test_same_selecting_value_is_a_hit(cached: Cached) -> None:
    """The same Accept-Language again: the stored reply matches."""
    cached.origin.script(cached.path(), headers=[("Vary", "Accept-Language")])
    node = await cached.node()
    await cached.get(node, cached.path(), headers={"Accept-Language": "en"})
    _, headers, _ = await cached.get(node, cached.path(), headers={"Accept-Language": "en"})
    assert headers["X-Cache"] == "HIT-L1"


async def test_another_selecting_value_is_not_served(cached: Cached) -> None:
    """A request whose Accept-Language differs is not answered with the stored variant."""
    cached.origin.script(cached.path(), headers=[("Vary", "Accept-Language")], body=b"en")
    cached.origin.script(cached.path(), headers=[("Vary", "Accept-Language")], body=b"fr")
    node = await cached.node()
    await cached.get(node, cached.path(), headers={"Accept-Language": "en"})
    _, headers, body = await cached.get(node, cached.path(), headers={"Accept-Language": "fr"})
    assert (headers["X-Cache"], body) == ("MISS", b"fr")


async def test_selecting_values_are_normalised(cached: Cached) -> None:
    """Whitespace around list commas and line splits carry no meaning (section 4.1)."""
    cached.origin.script(cached.path(), headers=[("Vary", "accept-language")])
    node = await cached.node()
    await cached.get(node, cached.path(), headers={"Accept-Language": "en,  fr"})
    _, headers, _ = await cached.get(node, cached.path(), headers={"Accept-Language": "en,fr"})
    assert headers["X-Cache"] == "HIT-L1"


async def test_absent_in_both_matches(cached: Cached) -> None:
    """A field absent from both requests matches; present in only one does not."""
    cached.origin.script(cached.path(), headers=[("Vary", "X-Flavour")])
    node = await cached.node()
    await cached.get(node, cached.path())
    _, first, _ = await cached.get(node, cached.path())
    _, second, _ = await cached.get(node, cached.path(), headers={"X-Flavour": ""})
    assert (first["X-Cache"], second["X-Cache"]) == ("HIT-L1", "MISS")


async def test_vary_star_never_matches(cached: Cached) -> None:
    """`Vary: *` always fails to match."""
    cached.origin.script(cached.path(), headers=[("Vary", "*")])
    node = await cached.node()
    await cached.get(node, cached.path())
    await cached.get(node, cached.path())
    assert cached.origin.count(cached.path()) == 2


async def test_another_nodes_variant_is_checked_too(shared: Cached) -> None:
    """An L2 entry of another variant is not served by the second node either."""
    shared.origin.script(shared.path(), headers=[("Vary", "Accept-Language")])
    a, b = await shared.node(), await shared.node()
    await shared.get(a, shared.path(), headers={"Accept-Language": "en"})
    _, same, _ = await shared.get(b, shared.path(), headers={"Accept-Language": "en"})
    _, other, _ = await shared.get(b, shared.path(), headers={"Accept-Language": "de"})
    assert (same["X-Cache"], other["X-Cache"]) == ("HIT-L2", "MISS")


async def test_several_variants_stay_stored_side_by_side(cached: Cached) -> None:
    """Clients alternating between two languages hit both stored variants: each reply is
    fetched once, and each request gets its own variant's body (section 4.1)."""
    for body in (b"en", b"fr"):
        cached.origin.script(cached.path(), headers=[("Vary", "Accept-Language")], body=body)
    node = await cached.node()
    seen = []
    for language in ("en", "fr", "en", "fr", "en"):
        _, headers, body = await cached.get(
            node, cached.path(), headers={"Accept-Language": language}
        )
        seen.append((language, body, headers["X-Cache"]))
    assert [(lang, body) for lang, body, _ in seen] == [
        ("en", b"en"),
        ("fr", b"fr"),
        ("en", b"en"),
        ("fr", b"fr"),
        ("en", b"en"),
    ]
    assert [label for _, _, label in seen] == ["MISS", "MISS", "HIT-L1", "HIT-L1", "HIT-L1"]
    assert cached.origin.count(cached.path()) == 2


async def test_another_nodes_variants_are_found_in_l2(shared: Cached) -> None:
    """A node that has seen neither variant finds each in L2 under its own key."""
    for body in (b"en", b"fr"):
        shared.origin.script(shared.path(), headers=[("Vary", "Accept-Language")], body=body)
    a, b = await shared.node(), await shared.node()
    await shared.get(a, shared.path(), headers={"Accept-Language": "en"})
    await shared.get(a, shared.path(), headers={"Accept-Language": "fr"})
    _, en, en_body = await shared.get(b, shared.path(), headers={"Accept-Language": "en"})
    _, fr, fr_body = await shared.get(b, shared.path(), headers={"Accept-Language": "fr"})
    assert (en["X-Cache"], en_body, fr["X-Cache"], fr_body) == ("HIT-L2", b"en", "HIT-L2", b"fr")
    assert shared.origin.count(shared.path()) == 2
