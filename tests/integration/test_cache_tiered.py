"""The node's two-tier cache as an aiocache cache for handler code, embedded and on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from testkit import cache_handlers
from testkit.node_server import NodeServer

from node.app import build_app
from node.cluster.redis import RedisConnection
from node.config import Settings
from node.schema import build
from plugins.cache.tiered import TieredCache

from .cache_helpers import REDIS_URL, delete_keys


@pytest.fixture(params=["embedded", "redis"])
async def tiered(request: pytest.FixtureRequest) -> AsyncIterator[TieredCache]:
    connection = RedisConnection(REDIS_URL) if request.param == "redis" else None
    yield TieredCache(connection)
    if connection is not None:
        await connection.close()


@pytest.fixture
async def marker() -> AsyncIterator[str]:
    mark = uuid.uuid4().hex[:12]
    yield mark
    await delete_keys(mark)


async def test_aiocache_api(tiered: TieredCache, marker: str) -> None:
    """set/get/exists/delete/add behave as aiocache documents them."""
    await tiered.set(f"{marker}:a", {"x": 1}, ttl=10)
    assert await tiered.get(f"{marker}:a") == {"x": 1}
    assert await tiered.exists(f"{marker}:a")
    with pytest.raises(ValueError):
        await tiered.add(f"{marker}:a", 2)
    assert await tiered.delete(f"{marker}:a") == 1
    assert await tiered.get(f"{marker}:a", default="gone") == "gone"


async def test_values_are_shared_through_l2(marker: str) -> None:
    """A value set through one node's cache is read by another node's (L1 empty there)."""
    one, two = RedisConnection(REDIS_URL), RedisConnection(REDIS_URL)
    try:
        await TieredCache(one).set(f"{marker}:k", [1, 2], ttl=10)
        assert await TieredCache(two).get(f"{marker}:k") == [1, 2]
    finally:
        await one.close()
        await two.close()


async def test_clear_touches_only_its_namespace(tiered: TieredCache, marker: str) -> None:
    """clear(namespace) drops that namespace's keys and nothing else (never FLUSHDB)."""
    await tiered.set("v", 1, namespace=f"{marker}:a:")
    await tiered.set("v", 2, namespace=f"{marker}:b:")
    await tiered.clear(namespace=f"{marker}:a:")
    assert await tiered.get("v", namespace=f"{marker}:a:") is None
    assert await tiered.get("v", namespace=f"{marker}:b:") == 2


@pytest.mark.parametrize("redis", ["", REDIS_URL])
async def test_handlers_use_the_node_cache(redis: str) -> None:
    """@node_cached computes once per path; node_cache(call) is the node's cache."""
    mark = uuid.uuid4().hex[:12]
    data = {
        "node": {"name": "tiered"},
        "backends": {"redis": redis},
        "routes": [
            {"path": "/report/{any}", "target": "handler:testkit.cache_handlers:report"},
            {"path": "/counter/{name}", "target": "handler:testkit.cache_handlers:counter"},
        ],
    }
    client = TestClient(NodeServer(build_app(build(Settings, data, ""), "all")))
    await client.start_server()
    try:
        bodies = [await (await client.get(f"/report/{mark}")).json() for _ in range(3)]
        assert bodies == [{"path": f"/report/{mark}", "computed": bodies[0]["computed"]}] * 3
        assert cache_handlers.computed.count(f"/report/{mark}") == 1
        values = [(await (await client.get(f"/counter/{mark}")).json())["value"] for _ in range(2)]
        assert values == [1, 2]
    finally:
        await client.close()
        await delete_keys(mark)
