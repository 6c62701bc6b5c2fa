"""Balancing over a pool's members: round_robin spreads, least_conn avoids the busy one."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from .conftest import NodeFactory, UpstreamFactory, proxy_settings


async def test_round_robin_spreads_evenly(
    node_factory: NodeFactory, upstream_factory: UpstreamFactory
) -> None:
    """round_robin sends consecutive calls to the two members in turn, half each."""
    first, second = await upstream_factory("one"), await upstream_factory("two")
    settings = proxy_settings([first.url, second.url], pool={"balance": "round_robin"})
    client = await node_factory(settings)
    served = []
    for _ in range(10):
        async with client.get("/api/x") as resp:
            assert resp.status == 200
            served.append(resp.headers["X-Upstream"])
    assert Counter(served) == {"one": 5, "two": 5}
    assert all(a != b for a, b in itertools.pairwise(served))
    assert len(first.seen) == len(second.seen) == 5


async def test_least_conn_prefers_the_idle_member(
    node_factory: NodeFactory, upstream_factory: UpstreamFactory
) -> None:
    """least_conn sends new calls to the idle member while the other is busy with a slow call."""
    members = {u.name: u for u in [await upstream_factory("one"), await upstream_factory("two")]}
    settings = proxy_settings([u.url for u in members.values()], pool={"balance": "least_conn"})
    client = await node_factory(settings)
    held = asyncio.Event()
    for u in members.values():
        u.held = held

    async def slow_call() -> dict:
        async with client.get("/api/hold") as resp:
            assert resp.status == 200
            return await resp.json()

    slow = asyncio.create_task(slow_call())
    try:
        await asyncio.wait_for(held.wait(), 5)
        busy = next(name for name, u in members.items() if u.holding)
        served = []
        for _ in range(6):
            async with client.get("/api/x") as resp:
                assert resp.status == 200
                served.append(resp.headers["X-Upstream"])
        assert busy not in served
        assert len(served) == 6
    finally:
        for u in members.values():
            u.release.set()
        assert (await slow)["held"] is True
