"""The node registry against a real (private) Redis: join, heartbeat with metrics, leave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from node.cluster.redis import RedisConnection
from node.cluster.registry import NodeRegistry

INTERVAL = 0.1  # heartbeat interval of these tests; the node's is 1 s


@pytest.fixture
async def make_registry(redis_server) -> AsyncIterator[Callable[[str], NodeRegistry]]:
    """Registries on the private Redis, each with its own connection; stopped afterwards."""
    made: list[NodeRegistry] = []

    def make(name: str) -> NodeRegistry:
        registry = NodeRegistry(
            name, "gateway", f"{name}:1", RedisConnection(redis_server.url), interval=INTERVAL
        )
        registry.snapshot = lambda: {"metrics": {"rps_10s": 1.5}}
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.stop()
        assert registry.redis is not None
        await registry.redis.close()


async def wait_for(predicate: Callable[[], object], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def names(registry: NodeRegistry) -> set[str]:
    return {record["name"] for record in await registry.nodes()}


async def test_nodes_join_and_see_each_other(make_registry):
    """Two started registries list both nodes, and each counts two live nodes."""
    a, b = make_registry("a"), make_registry("b")
    await a.start()
    await b.start()

    async def both() -> bool:
        return await names(a) == {"a", "b"} and a.live_count() == 2

    await wait_for(both)
    assert await names(b) == {"a", "b"}


async def test_heartbeat_carries_the_metrics_snapshot_and_moves_on(make_registry):
    """Each beat rewrites the record: the snapshot hook's metrics, a newer heartbeat time."""
    a = make_registry("a")
    await a.start()
    await wait_for(lambda: names(a))
    first = (await a.nodes())[0]
    assert first["metrics"] == {"rps_10s": 1.5}
    assert {"role", "address", "pid", "version", "started"} <= set(first)

    async def newer() -> bool:
        return (await a.nodes())[0]["heartbeat"] > first["heartbeat"]

    await wait_for(newer)


async def test_graceful_leave_deregisters_at_once(make_registry):
    """A stopped node is gone from the others' view immediately, not after its TTL."""
    a, b = make_registry("a"), make_registry("b")
    await a.start()
    await b.start()

    async def both() -> bool:
        return await names(a) == {"a", "b"}

    await wait_for(both)
    await b.stop()
    assert await names(a) == {"a"}


async def test_embedded_registry_knows_only_itself():
    """Without Redis a node lists itself, with its snapshot."""
    registry = NodeRegistry("solo", "all", "127.0.0.1:1", None)
    registry.snapshot = lambda: {"metrics": {"requests": 3}}
    (record,) = await registry.nodes()
    assert (record["name"], record["metrics"]) == ("solo", {"requests": 3})
