"""The store:NAME target through a node: documents by key with ETags and conditions, X-Shard,
lists across members with keyset pages, a dead member failing only its own keys. One suite
on embedded (SQLite) members and on real PostgreSQL databases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer
from testkit.servers import closed_port

from node.app import build_app
from node.config import Settings
from node.schema import build

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
StoreFor = Callable[..., Awaitable[TestClient]]


@pytest.fixture(params=["embedded", "postgres"])
async def members(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[dict]]:
    """Two members: SQLite files, or two fresh PostgreSQL databases dropped afterwards."""
    if request.param == "embedded":
        yield [{"name": "s0", "dsn": ""}, {"name": "s1", "dsn": ""}]
        return
    names = [f"sn_test_{uuid.uuid4().hex[:10]}_{i}" for i in range(2)]
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        yield [
            {"name": f"s{i}", "dsn": f"postgresql://postgres@127.0.0.1:5432/{name}"}
            for i, name in enumerate(names)
        ]
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def store_for(tmp_path: Path) -> AsyncIterator[StoreFor]:
    clients: list[TestClient] = []

    async def start(members: list[dict], **set_options: Any) -> TestClient:
        data = {
            "node": {"name": "store-node", "max_body": 4096},
            "shards": {"users": {"members": members, "data_dir": str(tmp_path), **set_options}},
            "routes": [
                {"path": "/users/{key}", "target": "store:users"},
                {"path": "/users", "target": "store:users", "methods": ["GET"]},
            ],
        }
        client = TestClient(NodeServer(build_app(build(Settings, data, ""), "gateway")))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_a_document_lives_by_its_key_with_etags_and_conditions(store_for, members):
    client = await store_for(members)
    created = await client.put("/users/ada", json={"name": "Ada", "langs": ["en"]})
    assert created.status == 201
    etag, shard = created.headers["ETag"], created.headers["X-Shard"]
    assert created.headers["Location"] == "/users/ada"
    got = await client.get("/users/ada")
    assert (got.status, await got.json()) == (200, {"name": "Ada", "langs": ["en"]})
    assert (got.headers["ETag"], got.headers["X-Shard"]) == (etag, shard)
    assert (await client.get("/users/ada", headers={"If-None-Match": etag})).status == 304
    stale = await client.put("/users/ada", json={"name": "A"}, headers={"If-Match": '"nope"'})
    assert (stale.status, (await stale.json())["error"]) == (412, "precondition_failed")
    create_only = await client.put("/users/ada", json={}, headers={"If-None-Match": "*"})
    assert create_only.status == 412
    replaced = await client.put("/users/ada", json={"name": "Ada L."}, headers={"If-Match": etag})
    assert replaced.status == 200 and replaced.headers["ETag"] != etag
    patched = await client.patch(
        "/users/ada",
        data=b'{"langs": ["en", "fr"], "name": null, "born": 1815}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert (patched.status, await patched.json()) == (200, {"langs": ["en", "fr"], "born": 1815})
    deleted = await client.delete("/users/ada")
    assert (deleted.status, deleted.headers["X-Shard"]) == (204, shard)
    gone = await client.get("/users/ada")
    assert (gone.status, (await gone.json())["error"], gone.headers["X-Shard"]) == (
        404,
        "not_found",
        shard,
    )
    assert (await client.delete("/users/ada")).status == 404
    assert (await client.patch("/users/ada", json={"a": 1})).status == 404


async def test_bad_bodies_and_keys_are_4xx_naming_the_problem(store_for, members):
    client = await store_for(members)
    not_json = await client.put("/users/x", data=b"{nope")
    assert (not_json.status, (await not_json.json())["error"]) == (400, "bad_json")
    assert "not JSON" in (await not_json.json())["detail"]
    assert (await client.put("/users/x", data=b"")).status == 400
    nul = await client.put("/users/x", data=b'{"a": "\\u0000"}')
    assert (nul.status, (await nul.json())["error"]) == (400, "bad_json")
    assert (await client.put("/users/" + "k" * 600, json={})).status == 400
    assert (await client.put("/users/x", data=b'{"a": "' + b"x" * 5000 + b'"}')).status == 413
    wrong_type = await client.patch("/users/x", data=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status == 415
    assert (await client.get("/users?limit=0")).status == 400


async def test_keys_spread_over_the_members_and_each_stays_on_its_own(store_for, members):
    client = await store_for(members)
    placed = {}
    for i in range(40):
        reply = await client.put(f"/users/k{i}", json={"i": i})
        placed[f"k{i}"] = reply.headers["X-Shard"]
    assert set(placed.values()) == {"s0", "s1"}
    for key, shard in placed.items():
        assert (await client.get(f"/users/{key}")).headers["X-Shard"] == shard


async def test_a_list_pages_through_every_member_in_key_order(store_for, members):
    client = await store_for(members)
    keys = sorted([f"user{i:02d}" for i in range(30)] + ["other", "Üna", "zed"])
    for key in keys:
        assert (await client.put(f"/users/{key}", json={"k": key})).status == 201
    seen, after, pages = [], None, 0
    while True:
        query = {"limit": "7", **({"after": after} if after else {})}
        page = await (await client.get("/users", params=query)).json()
        assert page["partial"] is False
        seen += [item["key"] for item in page["items"]]
        assert all(item["doc"] == {"k": item["key"]} for item in page["items"])
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(keys, key=lambda k: k.encode())  # every key once, byte order
    assert pages == len(keys) // 7 + 1
    prefixed = await (await client.get("/users", params={"prefix": "user1"})).json()
    assert [item["key"] for item in prefixed["items"]] == [f"user1{i}" for i in range(10)]


@pytest.mark.parametrize("members", ["postgres"], indirect=True)  # a file is never down
async def test_a_dead_member_fails_its_own_keys_only(store_for, members):
    dead = {"name": "s1", "dsn": f"postgresql://postgres@127.0.0.1:{closed_port()}/x"}
    client = await store_for([members[0], dead], timeout=0.5)
    outcomes: dict[str, set[int]] = {"s0": set(), "s1": set()}
    for i in range(30):
        reply = await client.put(f"/users/k{i}", json={"i": i})
        outcomes[reply.headers["X-Shard"]].add(reply.status)
        if reply.status == 503:
            body = await reply.json()
            assert body["error"] == "shard_unavailable" and "s1" in body["detail"]
            assert reply.headers["Retry-After"]
    assert outcomes == {"s0": {201}, "s1": {503}}
    strict = await client.get("/users")
    assert strict.status == 503 and "s1" in (await strict.json())["detail"]
    partial = await (await client.get("/users", params={"partial": "true", "limit": "5"})).json()
    assert (partial["partial"], partial["missing_shards"], partial["next"]) == (True, ["s1"], None)
    assert len(partial["items"]) == 5
    ready = await (await client.get("/ready")).json()
    assert ready["status"] == "degraded"
    assert not ready["backends"]["postgres:users/s1"]["ok"]


async def test_a_write_gives_no_token_without_replicas_to_read(store_for, members):
    """A consistency token is for reading a replica: a member without replicas (and an
    embedded one) answers writes without it, and saves the write a round trip."""
    client = await store_for(members)
    written = await client.put("/users/t", json={})
    assert "X-Consistency-Token" not in written.headers
    made_up = {"X-Consistency-Token": f"{written.headers['X-Shard']}=0/0"}
    assert (await client.get("/users/t", headers=made_up)).status == 200


async def test_members_holding_another_layouts_data_refuse_rather_than_misplace(store_for, members):
    """Data written with members [s0, s1]; the config then swaps their databases (or changes
    the bucket count): every call is a 503 naming the layout, never a read or write on the
    wrong member."""
    first = await store_for(members)
    assert (await first.put("/users/ada", json={"v": 1})).status == 201
    await first.close()
    swapped = [
        {"name": "s0", "dsn": members[1]["dsn"]},
        {"name": "s1", "dsn": members[0]["dsn"]},
    ]
    options = {}
    if not members[0]["dsn"]:  # files are named by member: other buckets change the layout
        swapped, options = members, {"buckets": 512}
    second = await store_for(swapped, **options)
    for reply in (await second.get("/users/ada"), await second.put("/users/bob", json={})):
        body = await reply.json()
        assert (reply.status, body["error"]) == (503, "shard_layout_changed"), body
        assert "layout" in body["detail"]


@pytest.mark.parametrize("members", ["embedded"], indirect=True)
async def test_a_member_added_to_the_config_owns_nothing_until_a_rebalance(store_for, members):
    """The bucket map lives on the members: a third member in the config takes no keys
    (the keys written before are all still found) until a rebalance gives it buckets."""
    first = await store_for(members)
    for i in range(40):
        assert (await first.put(f"/users/k{i}", json={"i": i})).status == 201
    await first.close()
    second = await store_for([*members, {"name": "s2", "dsn": ""}])
    replies = [await second.get(f"/users/k{i}") for i in range(40)]
    assert {r.status for r in replies} == {200}
    assert {r.headers["X-Shard"] for r in replies} == {"s0", "s1"}


@pytest.mark.parametrize("members", ["postgres"], indirect=True)
async def test_pools_that_cannot_fit_the_server_are_named_at_start(store_for, members, caplog):
    """Every node opens up to pool.max connections to each member: when that cannot fit
    the server's max_connections, the node says so at start, naming the numbers."""
    caplog.set_level("WARNING", logger="scalenode.shard")
    await store_for(members, pool={"min": 1, "max": 1000})
    warnings = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "2 pool(s) on 127.0.0.1:5432 x pool.max 1000 x 1 node(s) = 2000" in warnings[0]
    caplog.clear()
    await store_for(members, pool={"min": 1, "max": 10})
    assert not [r for r in caplog.records if "max_connections" in r.getMessage()]


async def test_each_route_counts_its_own_calls(store_for, members):
    """The document route and the collection route share the set's members, not their
    counts: /metrics shows each route's own reads, never the set's twice."""
    from node.app import STATS

    client = await store_for(members)
    await client.put("/users/ada", json={})
    for _ in range(3):
        await client.get("/users/ada")
    await client.get("/users")
    counts = {
        label: reporter.snapshot()["counters"]
        for label, reporter in client.app[STATS].plugins
        if reporter.name == "store"
    }
    assert (counts["/users/{key}"]["reads"], counts["/users/{key}"]["writes"]) == (3, 1)
    assert (counts["/users"]["reads"], counts["/users"]["writes"]) == (0, 0)
    metrics = await (await client.get("/metrics")).text()
    per_member = [
        line
        for line in metrics.splitlines()
        if line.startswith("scalenode_store_member_reads_total{") and 'route="/users/{key}"' in line
    ]
    assert sorted(float(line.rpartition(" ")[2]) for line in per_member) == [0.0, 3.0]


@pytest.mark.parametrize("members", ["postgres"], indirect=True)
async def test_a_member_down_at_start_has_its_layout_checked_on_first_use(store_for, members):
    """A member that was down when the node started is checked before its first call: one
    that holds another layout's data then refuses the set (503), never takes its keys."""
    late = f"sn_test_{uuid.uuid4().hex[:10]}_late"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{late}"
    client = await store_for([members[0], {"name": "s1", "dsn": dsn}], timeout=0.5)
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{late}"')
        other = await asyncpg.connect(dsn)
        try:
            await other.execute(
                "CREATE TABLE sn_docs_users_meta (id smallint PRIMARY KEY, layout text NOT NULL);"
                """INSERT INTO sn_docs_users_meta VALUES (1, '{"set":"users","members":["x"]}')"""
            )
        finally:
            await other.close()
        await asyncio.sleep(1.1)  # the member's next connection attempt is due
        replies = [await client.put(f"/users/k{i}", json={}) for i in range(12)]
        refused = [r for r in replies if r.status == 503]
        assert refused, [r.status for r in replies]
        body = await refused[-1].json()
        assert body["error"] == "shard_layout_changed" and "member s1" in body["detail"]
        after = await client.put("/users/k0", json={})  # the whole set refuses from now on
        assert (await after.json())["error"] == "shard_layout_changed"
    finally:
        await client.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{late}" WITH (FORCE)')
        await admin.close()


async def test_a_set_reports_per_member_values_for_its_dashboard_card(store_for, members):
    """The store's snapshot follows the plugin conventions: a card per set, per member
    request counts (so rates), and what each member reads (p99, buckets, the map's
    version, pools on PostgreSQL) counted once per set; /metrics names each member."""
    from dashboard.aggregate import merge_plugins
    from node.app import STATS

    client = await store_for(members)
    for i in range(20):
        await client.put(f"/users/k{i}", json={})
        await client.get(f"/users/k{i}")
    entries = [
        {"name": reporter.name, "route": label, **reporter.snapshot()}
        for label, reporter in client.app[STATS].plugins
        if reporter.name == "store"
    ]
    merged = merge_plugins([{"plugins": entries}])["store:users"]
    counters, shared = merged["counters"], merged["cluster_gauges"]
    assert counters["s0_reads"] + counters["s1_reads"] == 20
    assert counters["s0_writes"] + counters["s1_writes"] == 20
    assert (shared["s0_buckets"], shared["s1_buckets"], shared["map_version"]) == (512, 512, 1)
    assert shared["s0_p99_ms"] > 0
    if members[0]["dsn"]:
        assert shared["s0_pool_max"] == 10
    metrics = await (await client.get("/metrics")).text()
    assert 'scalenode_store_member_buckets{member="s1",node="store-node",route="/users"}' in metrics
    # The card's flattened copies stay out of /metrics: each value is there once, labelled.
    assert "scalenode_store_s1_buckets" not in metrics
    assert "scalenode_store_s0_reads_total" not in metrics
