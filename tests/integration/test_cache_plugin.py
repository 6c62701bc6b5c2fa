"""The cache plugin in real node apps in front of a real origin, embedded and on Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from testkit.origin import CountingOrigin
from testkit.servers import RedisServer

from node.call import Call
from plugins.cache.keys import CACHE_LOCKS

from .cache_helpers import (
    REDIS_URL,
    TOKEN,
    Nodes,
    delete_keys,
    fetch,
    node_settings,
    route_cache,
    wait_for,
)


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    made = Nodes()
    yield made
    await made.close()


@pytest.fixture
async def marker() -> AsyncIterator[str]:
    """A unique path segment; this test's Redis keys (all holding it) are deleted after."""
    mark = uuid.uuid4().hex[:12]
    yield mark
    await delete_keys(mark)


async def test_embedded_miss_then_hit(origin: CountingOrigin, nodes: Nodes, marker: str) -> None:
    """Embedded node: MISS, then HIT-L1 with the same body and an Age header."""
    node = await nodes.start(node_settings(origin.url))
    path = f"/c/{marker}"
    assert (await fetch(node, path))[:2] == (200, "MISS")
    response = await node.get(path)
    assert response.headers["X-Cache"] == "HIT-L1" and response.headers["Age"] == "0"
    assert origin.gets[f"/{marker}"] == 1


async def test_cold_key_fetched_once_across_two_nodes(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """40 concurrent cold GETs over two nodes sharing Redis: the origin sees one."""
    origin.delay = 0.3
    a = await nodes.start(node_settings(origin.url, REDIS_URL))
    b = await nodes.start(node_settings(origin.url, REDIS_URL))
    path = f"/c/{marker}"
    replies = await asyncio.gather(*(fetch((a, b)[i % 2], path) for i in range(40)))
    assert origin.gets[f"/{marker}"] == 1
    assert {status for status, _, _ in replies} == {200}
    assert len({body["count"] for _, _, body in replies}) == 1


async def test_lock_timeout_when_another_node_never_fills(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """Another node holds the key's fill lock (its own token) and never fills it: the node's
    5 concurrent GETs wait lock_timeout (0.3 s), then one of them fetches; lock_timeouts 1."""
    node = await nodes.start(node_settings(origin.url, REDIS_URL, {"ttl": 30, "lock_timeout": 0.3}))
    cache = route_cache(node)
    path = f"/c/{marker}"
    redis = aioredis.from_url(REDIS_URL)
    try:
        assert await redis.set(CACHE_LOCKS + cache.key.of(Call("GET", path)), "other", px=5000)
        started = time.monotonic()
        replies = await asyncio.gather(*(fetch(node, path) for _ in range(5)))
        waited = time.monotonic() - started
    finally:
        await redis.aclose()
    assert origin.gets[f"/{marker}"] == 1
    assert 0.3 <= waited < 0.6, waited
    assert {(status, body["count"]) for status, _, body in replies} == {(200, 1)}
    assert sorted(label for _, label, _ in replies) == ["HIT-L1"] * 4 + ["MISS"]
    counters = cache.snapshot()["counters"]
    assert counters["lock_timeouts"] == 1 and counters["misses"] == 1


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_write_on_one_node_is_seen_on_the_other(
    origin: CountingOrigin, nodes: Nodes, marker: str, method: str
) -> None:
    """A PUT or POST through node A: node B serves the new version within 100 ms."""
    a = await nodes.start(node_settings(origin.url, REDIS_URL))
    b = await nodes.start(node_settings(origin.url, REDIS_URL))
    path = f"/c/{marker}"
    await fetch(b, path)
    assert (await fetch(b, path))[1] == "HIT-L1"
    status, label, _ = await fetch(a, path, method, data=b"new")
    assert (status, label) == (200, "BYPASS")
    deadline = time.monotonic() + 0.1
    while (await fetch(b, path))[2]["version"] != 1:
        assert time.monotonic() < deadline, "node B still serves the old version"
        await asyncio.sleep(0.01)


async def test_stale_while_revalidate_refreshes_once_across_two_nodes(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """Past its ttl, 20 concurrent GETs split over two nodes sharing Redis are answered
    from the stale entry; the origin sees one refresh, and both nodes then serve it."""
    cache = {"ttl": 0.3, "stale_while_revalidate": 30}
    a = await nodes.start(node_settings(origin.url, REDIS_URL, cache))
    b = await nodes.start(node_settings(origin.url, REDIS_URL, cache))
    path = f"/c/{marker}"
    assert (await fetch(a, path))[1] == "MISS"
    assert (await fetch(b, path))[1] == "HIT-L2"  # both nodes hold it in L1
    await asyncio.sleep(0.35)
    replies = await asyncio.gather(*(fetch((a, b)[i % 2], path) for i in range(20)))
    assert {status for status, _, _ in replies} == {200}
    assert "STALE" in {label for _, label, _ in replies}
    caches = [route_cache(node) for node in (a, b)]
    await wait_for(lambda: not any(c.tasks for c in caches), 2, "the refreshes to end")
    assert origin.gets[f"/{marker}"] == 2  # the fill and one refresh
    for node in (a, b):
        assert (await fetch(node, path))[2]["count"] == 2


async def test_no_store_is_never_cached(origin: CountingOrigin, nodes: Nodes, marker: str) -> None:
    """Cache-Control: no-store from the origin: every GET reaches it."""
    node = await nodes.start(node_settings(origin.url, REDIS_URL))
    path = f"/c/{marker}?cc=no-store"
    labels = [(await fetch(node, path))[1] for _ in range(3)]
    assert labels == ["MISS"] * 3 and origin.gets[f"/{marker}"] == 3


async def test_stale_if_error_when_the_origin_dies(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """Past its ttl with the origin gone, the entry is served as STALE, not a 502."""
    cache = {"ttl": 0.2, "stale_if_error": 30}
    node = await nodes.start(node_settings(origin.url, REDIS_URL, cache))
    path = f"/c/{marker}"
    _, _, body = await fetch(node, path)
    await asyncio.sleep(0.3)
    await origin.stop()
    status, label, stale = await fetch(node, path)
    assert (status, label, stale) == (200, "STALE", body)


async def test_a_failing_target_answers_with_x_cache(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """The origin is gone and nothing is stored: the 502 (a Rejected raised inside the
    cache) carries X-Cache, MISS for a GET and BYPASS for a write."""
    node = await nodes.start(node_settings(origin.url, REDIS_URL))
    await origin.stop()
    path = f"/c/{marker}"
    assert (await fetch(node, path))[:2] == (502, "MISS")
    assert (await fetch(node, path, "PUT", data=b"x"))[:2] == (502, "BYPASS")


async def test_large_replies_pass_through(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """A body over max_body is not stored: both GETs reach the origin."""
    node = await nodes.start(node_settings(origin.url, cache={"ttl": 30, "max_body": 1000}))
    path = f"/c/{marker}?size=5000"
    for _ in range(2):
        status, label, body = await fetch(node, path)
        assert (status, label, len(body)) == (200, "MISS", 5000)
    assert origin.gets[f"/{marker}"] == 2


async def test_vary_headers_get_their_own_entries(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """vary = ["Accept"]: two Accept values are two entries, each then a hit."""
    node = await nodes.start(node_settings(origin.url, cache={"ttl": 30, "vary": ["Accept"]}))
    path = f"/c/{marker}"
    for accept in ("text/a", "text/b"):
        assert (await fetch(node, path, headers={"Accept": accept}))[1] == "MISS"
        assert (await fetch(node, path, headers={"Accept": accept}))[1] == "HIT-L1"


@pytest.mark.parametrize("redis", [REDIS_URL, ""])
async def test_admin_invalidates_by_tag_and_prefix(
    origin: CountingOrigin, nodes: Nodes, marker: str, redis: str
) -> None:
    """POST /admin/cache/invalidate drops tagged entries, then a path prefix's."""
    node = await nodes.start(node_settings(origin.url, redis))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    paths = [f"/c/{marker}/a?tag=t-{marker}", f"/c/{marker}/b?tag=t-{marker}", f"/c/{marker}/x/1"]
    for path in paths:
        await fetch(node, path)
    url = "/admin/cache/invalidate"
    assert (await node.post(url, json={"tag": f"t-{marker}"})).status == 401
    response = await node.post(url, json={"tag": f"t-{marker}"}, headers=auth)
    assert response.status == 200 and (await response.json())["l1_dropped"] == 2
    assert [(await fetch(node, p))[1] for p in paths] == ["MISS", "MISS", "HIT-L1"]
    response = await node.post(url, json={"prefix": f"/c/{marker}/x/"}, headers=auth)
    assert response.status == 200
    assert (await fetch(node, paths[2]))[1] == "MISS"
    assert (await node.post(url, json={"bogus": 1}, headers=auth)).status == 400


async def test_metrics_export_the_cache_stats(
    origin: CountingOrigin, nodes: Nodes, marker: str
) -> None:
    """/metrics carries the plugin's counters and gauges."""
    node = await nodes.start(node_settings(origin.url))
    await fetch(node, f"/c/{marker}")
    await fetch(node, f"/c/{marker}")
    text = await (await node.get("/metrics")).text()
    for name in ("hits_l1_total", "misses_total", "l1_entries", "hit_ratio", "lock_waits_total"):
        assert f"scalenode_cache_{name}{{" in text


async def test_redis_killed_and_restarted(
    origin: CountingOrigin, nodes: Nodes, tmp_path: Path
) -> None:
    """Redis dies: L1 hits go on, misses are BYPASS, writes work, never a 5xx; it comes back."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        node = await nodes.start(node_settings(origin.url, server.url))
        assert (await fetch(node, "/c/warm"))[1] == "MISS"
        server.kill()
        seen = [await fetch(node, p) for p in ("/c/warm", "/c/cold", "/c/cold")]
        seen.append(await fetch(node, "/c/other", "PUT"))
        assert {status for status, _, _ in seen} == {200}
        assert [label for _, label, _ in seen] == ["HIT-L1", "BYPASS", "HIT-L1", "BYPASS"]
        server.start()
        deadline = time.monotonic() + 10
        while (await fetch(node, f"/c/back-{time.monotonic()}"))[1] != "MISS":
            assert time.monotonic() < deadline, "the node never used Redis again"
            await asyncio.sleep(0.1)
    finally:
        server.kill()
