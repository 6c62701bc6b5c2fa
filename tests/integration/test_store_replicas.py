"""The store target over a member with streaming replicas (testkit.pg_cluster): reads go to
a replica that is recent enough, a write's X-Consistency-Token makes the next read see it,
and with the primary down plain reads still come from a replica while writes get 503."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer
from testkit.pg_cluster import PgCluster

from node.app import STATS, build_app
from node.config import Settings
from node.schema import build


def store_counters(client: TestClient) -> dict[str, Any]:
    """The store target's snapshot, as the dashboard and /metrics read it."""
    for _, reporter in client.app[STATS].plugins:
        if reporter.name == "store":
            return reporter.snapshot()["by_member"]["s0"]
    raise AssertionError("no store target reports")


@pytest.fixture
async def database(pg_cluster: PgCluster) -> str:
    name = f"store_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)  # waits until both replicas have it
    return name


async def node_on(pg_cluster: PgCluster, database: str, **set_options: Any) -> TestClient:
    member = {
        "name": "s0",
        "dsn": pg_cluster.dsn(database),
        "replicas": [pg_cluster.replica_dsn(0, database)],
    }
    data = {
        "shards": {"users": {"members": [member], "timeout": 1.0, **set_options}},
        "routes": [{"path": "/users/{key}", "target": "store:users"}],
    }
    client = TestClient(NodeServer(build_app(build(Settings, data, ""), "gateway")))
    await client.start_server()
    return client


@pytest.fixture
async def delayed(pg_cluster: PgCluster) -> AsyncIterator[None]:
    """Replica 0 applies WAL two seconds late."""
    pg_cluster.set_apply_delay(0, 2.0)
    yield
    pg_cluster.set_apply_delay(0, 0)


async def test_reads_go_to_the_replica_and_a_token_sees_the_write(pg_cluster, database):
    client = await node_on(pg_cluster, database)
    try:
        written = await client.put("/users/ada", json={"v": 1})
        token = written.headers["X-Consistency-Token"]
        read = await client.get("/users/ada", headers={"X-Consistency-Token": token})
        assert (read.status, await read.json()) == (200, {"v": 1})
        # the replica had caught up
        assert store_counters(client)["counters"]["replica_reads"] == 1
    finally:
        await client.close()


async def test_a_lagging_replica_is_not_read_and_the_token_falls_back_to_the_primary(
    pg_cluster, database, delayed
):
    client = await node_on(pg_cluster, database, max_lag_bytes=1)
    try:
        await client.put("/users/k", json={"v": 1})
        for i in range(20):  # enough WAL that the delayed replica is measurably behind
            await client.put(f"/users/filler{i}", json={"pad": "x" * 200})
        written = await client.put("/users/k", json={"v": 2})
        token = written.headers["X-Consistency-Token"]
        read = await client.get("/users/k", headers={"X-Consistency-Token": token})
        assert await read.json() == {"v": 2}  # never the replica's older copy
        await asyncio.sleep(1.2)  # a probe round sees the lag
        assert (await (await client.get("/users/k")).json()) == {"v": 2}
        member = store_counters(client)
        assert member["counters"]["replica_reads"] == 0
        assert member["gauges"]["replica_fallbacks"] >= 2
    finally:
        await client.close()


async def test_with_the_primary_down_reads_come_from_the_replica_and_writes_get_503(
    pg_cluster, database
):
    client = await node_on(pg_cluster, database)
    try:
        written = await client.put("/users/ada", json={"v": 1})
        token = written.headers["X-Consistency-Token"]
        pg_cluster.wait_caught_up()
        pg_cluster.stop_primary()
        try:
            read = await client.get("/users/ada")
            assert (read.status, await read.json()) == (200, {"v": 1})
            refused = await client.put("/users/ada", json={"v": 2})
            assert (refused.status, refused.headers["X-Shard"]) == (503, "s0")
            assert refused.headers["Retry-After"]
        finally:
            pg_cluster.start_primary()
        assert (
            await client.get("/users/ada", headers={"X-Consistency-Token": token})
        ).status == 200
    finally:
        await client.close()
