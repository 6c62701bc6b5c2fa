"""Rebalancing a shard set onto an added member (plugins/shard/rebalance.py) while a node
serves it: the dry run, the online move and its proof, stale maps fenced, an interrupted
move resumed or rolled back. One suite on embedded (SQLite) members and on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from testkit.shard_sets import members_of, node_for, set_of, settings_for

from plugins.shard import members as members_module
from plugins.shard.buckets import BucketMap, bucket_of
from plugins.shard.rebalance import Rebalancer
from plugins.shard.rebalance_command import rebalance_set, standalone_set
from plugins.shard.rebalance_plan import plan

KEYS = 300


@pytest.fixture(params=["embedded", "postgres"])
async def grown(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """KEYS documents written on members s0, s1; then s2 added to the config, and a node
    serving that config (s2 owns nothing yet)."""
    async with members_of(request.param, 3) as members:
        first = await node_for(settings_for(members[:2], tmp_path))
        for i in range(KEYS):
            assert (await first.put(f"/users/k{i}", json={"i": i})).status == 201
        await first.close()
        settings = settings_for(members, tmp_path)
        node = await node_for(settings)
        try:
            yield {"settings": settings, "node": node, "lines": []}
        finally:
            await node.close()


async def rebalance(grown: dict[str, Any], mode: str) -> bool:
    return await rebalance_set("users", grown["settings"], mode, grown["lines"].append)


async def shards_of(node: TestClient) -> dict[str, str]:
    owners = {}
    for i in range(KEYS):
        reply = await node.get(f"/users/k{i}")
        assert reply.status == 200, await reply.text()
        owners[f"k{i}"] = reply.headers["X-Shard"]
    return owners


async def test_a_dry_run_prints_the_plan_against_the_ideal_and_moves_nothing(grown):
    """The plan names each batch's buckets, rows and bytes, the total against 1/(N+1)."""
    assert await rebalance(grown, "plan")
    text = "\n".join(grown["lines"])
    assert "move 341/1024 buckets (33.30%; ideal 33.33% = 1/3)" in text, text
    assert f"/{KEYS} rows" in text and "dry run: nothing moved" in text
    assert "after: s0 342 buckets, s1 341 buckets, s2 341 buckets" in text
    assert set((await shards_of(grown["node"])).values()) == {"s0", "s1"}


async def test_an_online_move_keeps_serving_and_proves_nothing_was_lost(grown):
    """Writes go on during the move and all land; a third of the keys end on s2; the
    node learns the new map within a second; counts and checksums were compared."""
    node = grown["node"]
    written: dict[str, dict[str, int]] = {}
    stop = asyncio.Event()

    async def writer(n: int) -> None:  # writer n alone writes the keys k{4j+n}
        i = 0
        while not stop.is_set():
            key = f"k{(4 * i + n) % KEYS}"
            reply = await node.put(f"/users/{key}", json={"w": n, "i": i})
            assert reply.status == 200, await reply.text()
            written[key] = {"w": n, "i": i}
            i += 1

    writers = [asyncio.create_task(writer(n)) for n in range(4)]
    await asyncio.sleep(0.1)
    assert await rebalance(grown, "apply")
    applied = time.monotonic()
    target = set_of(node)
    while target.map is None or target.map.version < 2 or "s2" not in target.map.members:
        assert time.monotonic() - applied < 1.0, "the node did not pick up the new map"
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*writers)
    text = "\n".join(grown["lines"])
    assert "verified: 341 buckets, row counts and checksums equal" in text, text
    owners = await shards_of(node)
    moved = sum(1 for shard in owners.values() if shard == "s2")
    assert abs(moved - KEYS / 3) < 40, moved  # 1/3 of the keys, give or take their spread
    assert len(written) > 50
    for key, last in written.items():
        assert await (await node.get(f"/users/{key}")).json() == last


async def test_a_node_with_a_stale_map_is_fenced_and_finds_the_new_owner(grown):
    """A node that has not read the new map writes to the old owner: refused there, it
    reads the map and writes to the new one; the old owner keeps no copy."""
    node = grown["node"]
    watched = set_of(node)
    await watched.stop()  # no polling: the node's map stays stale until a fence says so
    assert await rebalance(grown, "apply")
    moved = [
        f"k{i}" for i in range(KEYS) if watched.map.owner_name(bucket_of(f"k{i}", 1024)) != "s2"
    ]
    mover = standalone_set("users", grown["settings"])
    for member in mover.members:
        await member.primary.start()
    try:
        await mover.confirm(mover.members[0])
        now_on_s2 = [k for k in moved if mover.map.owner_name(bucket_of(k, 1024)) == "s2"]
        assert now_on_s2
        key = now_on_s2[0]
        reply = await node.put(f"/users/{key}", json={"after": True})
        assert (reply.status, reply.headers["X-Shard"]) == (200, "s2")
        bucket = bucket_of(key, 1024)
        for name in ("s0", "s1"):
            assert await mover.by_name[name].primary.export([bucket]) == []
    finally:
        for member in mover.members:
            await member.primary.close()


async def cut_short(monkeypatch: pytest.MonkeyPatch, grown: dict[str, Any], after: int) -> None:
    """Apply, with the run stopped (as by a crash) at batch `after`, mid-copy."""
    real = Rebalancer.move
    calls = 0

    async def failing(self: Rebalancer, batch: Any, outcome: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == after:
            source = self.primary(batch.source)
            await source.set_states(batch.buckets, "moving")  # fenced, never switched
            raise ConnectionResetError("cut")
        await real(self, batch, outcome)

    monkeypatch.setattr(Rebalancer, "move", failing)
    with pytest.raises(ConnectionResetError):
        await rebalance(grown, "apply")
    monkeypatch.setattr(Rebalancer, "move", real)


async def test_an_interrupted_move_resumes_where_it_stopped(grown, monkeypatch):
    """A move cut short mid-batch is journaled; --resume finishes it with every key."""
    await cut_short(monkeypatch, grown, after=5)
    assert await rebalance(grown, "plan")
    assert "is unfinished (4/22 batches)" in "\n".join(grown["lines"])
    assert await rebalance(grown, "resume")
    owners = await shards_of(grown["node"])
    assert abs(sum(s == "s2" for s in owners.values()) - KEYS / 3) < 40
    grown["lines"].clear()
    assert await rebalance(grown, "plan")
    assert "balanced: nothing to move" in "\n".join(grown["lines"])


async def test_an_interrupted_move_rolls_back_with_the_writes_made_since(grown, monkeypatch):
    """--rollback moves the switched batches back (with writes made after the switch) and
    unfences the one cut short: s2 owns nothing, every key reads its last write."""
    await cut_short(monkeypatch, grown, after=5)
    node = grown["node"]
    before = BucketMap.even(2, 1024, ["s0", "s1"])
    fenced = set(plan(before, ["s0", "s1", "s2"])[4].buckets)
    for i in range(KEYS):
        if bucket_of(f"k{i}", 1024) not in fenced:  # those wait for the move's end
            assert (await node.put(f"/users/k{i}", json={"i": i, "v": 2})).status == 200
    assert await rebalance(grown, "rollback")
    await asyncio.sleep(0.6)
    owners = await shards_of(node)
    assert set(owners.values()) == {"s0", "s1"}
    for i in range(KEYS):
        got = await (await node.get(f"/users/k{i}")).json()
        expected = {"i": i} if bucket_of(f"k{i}", 1024) in fenced else {"i": i, "v": 2}
        assert got == expected


async def test_with_redis_nodes_read_a_new_map_on_its_announcement(
    tmp_path, redis_server, monkeypatch
):
    """With Redis configured the command announces each map version on the cluster bus:
    a node reads it at once, not on its next poll (made a minute long here)."""
    monkeypatch.setattr(members_module, "MAP_POLL", 60.0)
    async with members_of("embedded", 3) as members:
        first = await node_for(settings_for(members[:2], tmp_path))
        for i in range(30):
            assert (await first.put(f"/users/k{i}", json={"i": i})).status == 201
        await first.close()
        settings = settings_for(members, tmp_path, redis=redis_server.url)
        node = await node_for(settings)
        try:
            await asyncio.sleep(0.3)  # the bus subscribes once the node has started
            lines: list[str] = []
            assert await rebalance_set("users", settings, "apply", lines.append), lines
            applied = time.monotonic()
            watched = set_of(node)
            while "s2" not in watched.map.members:
                assert time.monotonic() - applied < 1.0, "the announcement was not heard"
                await asyncio.sleep(0.02)
            assert not [line for line in lines if "could not announce" in line]
        finally:
            await node.close()
