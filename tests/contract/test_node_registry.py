"""One contract for the node registry: each node lists itself with its metrics on every
backend (embedded, private Redis, Redis Cluster: backends.py); on the shared ones, nodes
see each other join, leave, and drop out when their heartbeat stops."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from node.cluster.registry import NodeRegistry

from .backends import REGISTRY_INTERVAL, REGISTRY_TTL, Nodes


async def joined(registries: Nodes[NodeRegistry], role: str) -> NodeRegistry:
    """A started node called `role` plus a unique suffix, reporting a metrics snapshot."""
    registry = await registries.node(f"{role}-{uuid.uuid4().hex[:8]}")
    registry.snapshot = lambda: {"metrics": {"rps_10s": 1.5}}
    await registry.start()
    return registry


async def wait_for(predicate: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def names(registry: NodeRegistry) -> set[str]:
    return {record["name"] for record in await registry.nodes()}


async def test_a_lone_node_lists_itself_with_its_snapshot(
    registries: Nodes[NodeRegistry],
) -> None:
    """Alone, a node lists exactly itself, with its metrics snapshot, and counts one node."""
    a = await joined(registries, "a")

    async def listed() -> bool:
        return await names(a) == {a.name}

    await wait_for(listed)
    (record,) = await a.nodes()
    assert record["metrics"] == {"rps_10s": 1.5}
    assert {"role", "address", "pid", "version", "started", "heartbeat"} <= set(record)
    assert a.live_count() == 1


async def test_the_record_is_rewritten_as_time_goes_on(registries: Nodes[NodeRegistry]) -> None:
    """A later look at the node's record shows a later heartbeat and the current snapshot."""
    a = await joined(registries, "a")
    await wait_for(lambda: names(a))
    first = (await a.nodes())[0]
    a.snapshot = lambda: {"metrics": {"rps_10s": 7.0}}

    async def newer() -> bool:
        record = (await a.nodes())[0]
        return record["heartbeat"] > first["heartbeat"] and record["metrics"]["rps_10s"] == 7.0

    await wait_for(newer)


async def test_a_node_lists_the_nodes_sharing_its_backend(
    registries: Nodes[NodeRegistry],
) -> None:
    """Two nodes: on a shared backend each lists both; embedded, each only itself."""
    a, b = await joined(registries, "a"), await joined(registries, "b")
    shared = not registries.backend.embedded

    async def settled() -> bool:
        return (await names(a), await names(b)) == (
            ({a.name, b.name},) * 2 if shared else ({a.name}, {b.name})
        )

    await wait_for(settled)


async def test_nodes_join_and_see_each_other(shared_registries: Nodes[NodeRegistry]) -> None:
    """Two started nodes list both nodes, and each counts two live nodes."""
    a, b = await joined(shared_registries, "a"), await joined(shared_registries, "b")

    async def both() -> bool:
        counts = (a.live_count(), b.live_count())
        return await names(a) == await names(b) == {a.name, b.name} and counts == (2, 2)

    await wait_for(both)


async def test_graceful_leave_deregisters_at_once(shared_registries: Nodes[NodeRegistry]) -> None:
    """A stopped node is gone from the others' view immediately, not after its TTL."""
    a, b = await joined(shared_registries, "a"), await joined(shared_registries, "b")

    async def both() -> bool:
        return await names(a) == {a.name, b.name}

    await wait_for(both)
    await b.stop()
    assert await names(a) == {a.name}


async def test_a_node_whose_heartbeat_stops_drops_out_after_its_ttl(
    shared_registries: Nodes[NodeRegistry],
) -> None:
    """A node that stops beating without leaving (killed) drops out of the others' view and
    count once its TTL has run out, and not before."""
    a, b = await joined(shared_registries, "a"), await joined(shared_registries, "b")

    async def counted() -> bool:
        return await names(a) == {a.name, b.name} and a.live_count() == 2

    await wait_for(counted)
    while b._task is not None and not b._task.done():  # a cancel can be lost: see stop()
        b._task.cancel()
        await asyncio.wait({b._task}, timeout=0.05)
    stopped = time.monotonic()
    assert await names(a) == {a.name, b.name}

    async def dropped() -> bool:
        return await names(a) == {a.name} and a.live_count() == 1

    await wait_for(dropped)
    # Its record was written at most one interval before it stopped, with a TTL.
    assert time.monotonic() - stopped > REGISTRY_TTL - 2 * REGISTRY_INTERVAL
