"""The shard plugin over a hash pool of real upstreams: one key, one member, X-Shard."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer

from node.app import build_app
from node.config import Settings
from node.schema import build

from .conftest import UpstreamFactory


@pytest.fixture
async def sharded(upstream_factory: UpstreamFactory) -> AsyncIterator[TestClient]:
    ups = [await upstream_factory(f"u{i}") for i in range(3)]
    data = {
        "node": {"name": "node-a"},
        "upstreams": {"carts": {"targets": [u.url for u in ups], "balance": "hash"}},
        "routes": [
            {"path": "/carts/{key}", "target": "upstream:carts", "shard": {"key": "path:key"}}
        ],
    }
    client = TestClient(NodeServer(build_app(build(Settings, data, ""), "all"), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


async def test_a_key_always_reaches_the_same_member(sharded: TestClient) -> None:
    """Every call for one key lands on one upstream, which X-Shard names."""
    for key in ("alice", "bob", "carol", "dave"):
        upstreams, shards = set(), set()
        for _ in range(4):
            async with sharded.get(f"/carts/{key}") as response:
                assert response.status == 200
                upstreams.add((await response.json())["upstream"])
                shards.add(response.headers["X-Shard"])
        assert len(upstreams) == len(shards) == 1
        assert shards.pop().startswith("127.0.0.1:")


async def test_keys_spread_over_the_members(sharded: TestClient) -> None:
    """Forty keys use all three members; /metrics shows each member's ring share."""
    seen = set()
    for i in range(40):
        async with sharded.get(f"/carts/user-{i}") as response:
            seen.add(response.headers["X-Shard"])
    assert len(seen) == 3
    async with sharded.get("/metrics") as response:
        text = await response.text()
    assert text.count("scalenode_upstream_ring_share{") == 3
    assert "scalenode_upstream_pool_ring_max_deviation{" in text
    assert "scalenode_shard_routed_total" in text
