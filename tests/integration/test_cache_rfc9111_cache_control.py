"""RFC 9111 section 5.2 and RFC 9110 section 5.3: every line of Cache-Control and Vary, the
whole directive grammar (quoted arguments, unknown directives, duplicates)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def reused(cached: Cached, headers: list[tuple[str, str]], ttl: float = 0) -> bool:
    """Whether a second GET is answered from the cache."""
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node({"ttl": ttl})
    await cached.get(node, cached.path())
    await cached.get(node, cached.path())
    return cached.origin.count(cached.path()) == 1


async def test_a_directive_on_a_second_line_counts(cached: Cached) -> None:
    """RFC 9110 5.3: lines of a list field combine; s-maxage on the second line applies."""
    assert await reused(cached, [("Cache-Control", "public"), ("Cache-Control", "s-maxage=60")])


async def test_no_store_on_a_second_line_counts(cached: Cached) -> None:
    """no-store (section 5.2.2.5) on a later line keeps the reply out."""
    lines = [("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")]
    assert not await reused(cached, lines, ttl=30)


async def test_quoted_arguments_are_read(cached: Cached) -> None:
    """Section 5.2: a recipient accepts the quoted-string form of max-age."""
    assert await reused(cached, [("Cache-Control", 'max-age="60"')])


async def test_unknown_directives_are_ignored(cached: Cached) -> None:
    """Section 5.2.3: unrecognised directives (with quoted commas) are ignored."""
    assert await reused(cached, [("Cache-Control", 'foo="a, no-store", bar, max-age=60')])


async def test_a_repeated_max_age_takes_the_first(cached: Cached) -> None:
    """Section 4.2.1: with duplicate directives, the first occurrence may be used."""
    assert await reused(cached, [("Cache-Control", "max-age=60, max-age=0")])


async def test_a_malformed_max_age_is_stale(cached: Cached) -> None:
    """Section 4.2.1: an invalid freshness value makes the reply stale."""
    assert not await reused(cached, [("Cache-Control", "max-age=soon")], ttl=30)


async def test_private_with_field_names_hides_those_fields(cached: Cached) -> None:
    """Section 5.2.2.7: `private="X-User"` lets a shared cache store the rest."""
    headers = [("Cache-Control", 'private="X-User", max-age=60'), ("X-User", "alice")]
    cached.origin.script(cached.path(), headers=headers)
    node = await cached.node({"ttl": 0})
    await cached.get(node, cached.path())
    _, hit, _ = await cached.get(node, cached.path())
    assert hit["X-Cache"] == "HIT-L1" and "X-User" not in hit


async def test_a_later_vary_star_line_is_seen(cached: Cached) -> None:
    """Section 4.1: `Vary: *` on any line means no later request matches."""
    assert not await reused(cached, [("Vary", "Accept"), ("Vary", "*")], ttl=30)
