"""RFC 9111 sections 4.2.1, 4.2.3, 5.1 and 5.3: Date kept, Age computed from the origin's
Date and Age (the corrected initial age), Expires read (an invalid one means expired)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, SHARED, Cached, cached_for, http_date


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


@pytest.fixture(params=SHARED)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    """Nodes over one origin that share their L2."""
    async with cached_for(request.param) as made:
        yield made


async def test_hit_keeps_the_origin_date(cached: Cached) -> None:
    """Section 4.2.3 needs the origin's Date: a hit repeats it, not the cache's own."""
    date = http_date(-100)
    cached.origin.script(cached.path(), headers=[("Date", date), ("Cache-Control", "max-age=3600")])
    node = await cached.node()
    await cached.get(node, cached.path())
    status, headers, _ = await cached.get(node, cached.path())
    assert (status, headers["X-Cache"], headers["Date"]) == (200, "HIT-L1", date)


async def test_apparent_age_from_the_date_counts(cached: Cached) -> None:
    """apparent_age = response_time - date_value: a reply dated 100 s ago has Age >= 100."""
    cached.origin.script(
        cached.path(), headers=[("Date", http_date(-100)), ("Cache-Control", "max-age=3600")]
    )
    node = await cached.node()
    await cached.get(node, cached.path())
    _, headers, _ = await cached.get(node, cached.path())
    assert 100 <= int(headers["Age"]) <= 102


async def test_the_origins_age_is_kept_not_reset(cached: Cached) -> None:
    """corrected_age_value = age_value + response_delay: an upstream Age of 50 shows on hits."""
    cached.origin.script(cached.path(), headers=[("Age", "50"), ("Cache-Control", "max-age=3600")])
    node = await cached.node()
    await cached.get(node, cached.path())
    _, headers, _ = await cached.get(node, cached.path())
    assert headers["X-Cache"] == "HIT-L1" and 50 <= int(headers["Age"]) <= 51


async def test_age_past_max_age_is_stale(cached: Cached) -> None:
    """Section 4.2: fresh only while current_age < freshness_lifetime; Age 70 > max-age 60."""
    cached.origin.script(cached.path(), headers=[("Age", "70"), ("Cache-Control", "max-age=60")])
    node = await cached.node()
    await cached.get(node, cached.path())
    _, headers, _ = await cached.get(node, cached.path())
    assert headers["X-Cache"] == "MISS" and cached.origin.count(cached.path()) == 2


async def test_expires_gives_freshness(cached: Cached) -> None:
    """Section 4.2.1: Expires - Date is the lifetime when no max-age is given (ttl 0)."""
    cached.origin.script(
        cached.path(), headers=[("Date", http_date()), ("Expires", http_date(600))]
    )
    node = await cached.node({"ttl": 0})
    await cached.get(node, cached.path())
    _, headers, _ = await cached.get(node, cached.path())
    assert headers["X-Cache"] == "HIT-L1" and cached.origin.count(cached.path()) == 1


@pytest.mark.parametrize("expires", ["0", "not a date", "PAST"])
async def test_invalid_or_past_expires_means_expired(cached: Cached, expires: str) -> None:
    """Section 5.3: an invalid Expires (e.g. "0") represents a time in the past; the route
    ttl (a heuristic) must not apply when Expires is present."""
    value = http_date(-60) if expires == "PAST" else expires
    cached.origin.script(cached.path(), headers=[("Expires", value)])
    node = await cached.node({"ttl": 30})
    await cached.get(node, cached.path())
    await cached.get(node, cached.path())
    assert cached.origin.count(cached.path()) == 2


async def test_max_age_wins_over_expires(cached: Cached) -> None:
    """Section 5.3: with max-age present, Expires is ignored."""
    cached.origin.script(
        cached.path(), headers=[("Expires", http_date(-60)), ("Cache-Control", "max-age=600")]
    )
    node = await cached.node({"ttl": 0})
    await cached.get(node, cached.path())
    _, headers, _ = await cached.get(node, cached.path())
    assert headers["X-Cache"] == "HIT-L1"


async def test_l1_and_l2_hits_answer_the_same_headers(shared: Cached) -> None:
    """A hit from another node's L2 carries the same fields as this node's L1 hit."""
    shared.origin.script(
        shared.path(),
        headers=[
            ("Date", http_date(-5)),
            ("Cache-Control", "max-age=600"),
            ("ETag", '"v1"'),
            ("Link", "</a>"),
            ("Link", "</b>"),
        ],
    )
    a, b = await shared.node(), await shared.node()
    await shared.get(a, shared.path())
    _, l1, _ = await shared.get(a, shared.path())
    _, l2, _ = await shared.get(b, shared.path())
    assert (l1["X-Cache"], l2["X-Cache"]) == ("HIT-L1", "HIT-L2")
    ignored = {"X-Cache", "X-Node", "Age"}
    assert [(k, v) for k, v in l1.items() if k not in ignored] == [
        (k, v) for k, v in l2.items() if k not in ignored
    ]
    assert abs(int(l1["Age"]) - int(l2["Age"])) <= 1
