"""Breakers, retries and health checks against real upstreams, and trips shared by two
nodes over the real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer
from testkit.servers import RedisServer

from node.app import POOLS, RESOURCES, build_app
from node.cluster import bus as cluster_bus
from node.config import Settings
from node.schema import build
from node.upstream.pool import UpstreamPool
from plugins.breaker.keys import BREAKER_PROBES, BREAKER_TRIPS
from plugins.breaker.shared import TripExchange

from .conftest import Upstream, UpstreamFactory

REDIS_URL = "redis://127.0.0.1:6379/0"
FAIL = {"X-Want-Status": "500"}
Start = Callable[..., Awaitable[TestClient]]


def settings(
    targets: list[str],
    *,
    breaker: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    redis: str = "",
    name: str = "node-a",
    cache: dict[str, Any] | None = None,
) -> Settings:
    route: dict[str, Any] = {"path": "/api/{tail:.*}", "target": "upstream:app"}
    route["strip_prefix"] = "/api"
    if breaker is not None:
        route["breaker"] = breaker
    if cache is not None:
        route["cache"] = cache
    data = {
        "node": {"name": name},
        "backends": {"redis": redis},
        "upstreams": {"app": {"targets": targets, **(pool or {})}},
        "routes": [route],
    }
    return build(Settings, data, "")


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Starts nodes with every plugin factory; closes them afterwards."""
    clients: list[TestClient] = []

    async def make(node_settings: Settings) -> TestClient:
        client = TestClient(NodeServer(build_app(node_settings, "all"), host="127.0.0.1"))
        clients.append(client)
        await client.start_server()
        return client

    yield make
    for client in clients:
        await client.close()


def pool_of(client: TestClient) -> UpstreamPool:
    return client.app[POOLS]["app"]  # type: ignore[index]


async def statuses(client: TestClient, count: int, **headers: str) -> list[int]:
    replies = []
    for _ in range(count):
        async with client.get("/api/x", headers=headers) as response:
            await response.read()
            replies.append(response.status)
    return replies


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.005)


async def test_failing_upstream_trips_then_recovers(start: Start, upstream: Upstream) -> None:
    """5 failures open the circuit: fast 503 + Retry-After, the upstream sees nothing more;
    after open_seconds one trial call closes it again."""
    table = {"open_seconds": 0.3, "min_requests": 5}
    node = await start(settings([upstream.url], breaker=table))
    assert await statuses(node, 5, **FAIL) == [500] * 5
    seen = len(upstream.seen)
    async with node.get("/api/x") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert (await response.json())["error"] == "circuit_open"
    assert len(upstream.seen) == seen
    await asyncio.sleep(0.35)
    assert await statuses(node, 3) == [200] * 3
    member = pool_of(node).snapshot()["members"][0]  # type: ignore[index]
    assert (member["state"], member["trips"], member["probes"]) == ("closed", 1, 1)


async def test_an_upstream_that_only_times_out_trips_the_breaker(
    start: Start, upstream: Upstream
) -> None:
    """Every call outlives the pool's timeout (504, no failure status ever): after
    min_requests the circuit opens and the next call is a 503 without an upstream call."""
    table = {"open_seconds": 30, "min_requests": 3}
    node = await start(settings([upstream.url], breaker=table, pool={"timeout": 0.1}))
    try:
        for _ in range(3):
            async with node.get("/api/slow/5") as response:
                assert response.status == 504
        seen = len(upstream.seen)
        async with node.get("/api/slow/5") as response:
            assert response.status == 503
            assert (await response.json())["error"] == "circuit_open"
            assert "Retry-After" in response.headers
        assert len(upstream.seen) == seen == 3
        member = pool_of(node).snapshot()["members"][0]  # type: ignore[index]
        assert (member["state"], member["timeouts"], member["failures"]) == ("open", 3, 0)
    finally:
        upstream.release.set()  # the held handlers finish


@pytest.mark.parametrize("breaker", [None, {}], ids=["plain pool", "breaker defaults"])
async def test_pool_with_a_dead_member_answers_every_request(
    start: Start,
    upstream_factory: UpstreamFactory,
    closed_port: int,
    breaker: dict[str, Any] | None,
) -> None:
    """One of three members refuses connections: with default settings, 120 concurrent
    requests (GET and POST alike) all get their answer from a live member; nothing that
    was never sent counts against the retry budget."""
    ups = [await upstream_factory("a"), await upstream_factory("b")]
    targets = [ups[0].url, f"http://127.0.0.1:{closed_port}", ups[1].url]
    node = await start(settings(targets, breaker=breaker))

    async def one(method: str) -> int:
        async with node.request(method, "/api/x", data=b"order" if method == "POST" else None) as r:
            await r.read()
            return r.status

    replies = await asyncio.gather(*(one("GET" if i % 2 else "POST") for i in range(120)))
    assert replies == [200] * 120
    assert sum(len(up.seen) for up in ups) == 120  # each request reached one live member once
    dead = pool_of(node).snapshot()["members"][1]  # type: ignore[index]
    assert dead["failures"] >= 1


async def health_upstream(health: dict[str, int]) -> tuple[web.AppRunner, str]:
    """A server whose /health answers health["status"]; everything else 200."""

    async def check(request: web.Request) -> web.Response:
        return web.Response(status=health["status"])

    async def other(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", check)
    app.router.add_route("*", "/{tail:.*}", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_health_checks_eject_and_readmit(start: Start, upstream: Upstream) -> None:
    """A member failing /health twice gets no calls; passing twice brings it back."""
    health = {"status": 200}
    runner, sick_url = await health_upstream(health)
    try:
        check = {"path": "/health", "interval": 0.05, "timeout": 0.5, "healthy": 2}
        check["unhealthy"] = 2
        node = await start(settings([upstream.url, sick_url], pool={"health": check}))
        members = pool_of(node).members
        health["status"] = 503
        await eventually(lambda: not members[1].healthy)
        before = len(upstream.seen)
        assert await statuses(node, 6) == [200] * 6
        assert len(upstream.seen) - before == 6
        health["status"] = 200
        await eventually(lambda: members[1].healthy)
        assert pool_of(node).snapshot()["members"][1]["healthy"] is True  # type: ignore[index]
    finally:
        await runner.cleanup()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_a_trip_on_one_node_stops_the_other_within_100_ms(
    start: Start, upstream: Upstream, redis_client: aioredis.Redis
) -> None:
    """With corroborate = 1, node A's trip reaches node B over Redis: B opens the member
    within 100 ms and answers 503 without calling the upstream; B's trial is the cluster's
    only one."""
    table = {"open_seconds": 0.5, "min_requests": 5, "shared": True, "corroborate": 1}
    suffix = uuid.uuid4().hex[:8]
    a = await start(settings([upstream.url], breaker=table, redis=REDIS_URL, name=f"a-{suffix}"))
    b = await start(settings([upstream.url], breaker=table, redis=REDIS_URL, name=f"b-{suffix}"))
    circuit_b = pool_of(b).members[0].circuit
    assert circuit_b is not None
    circuit_name = circuit_b.name
    try:
        await eventually(lambda: b.app is not None)
        await asyncio.sleep(0.2)  # both subscribers are listening
        assert await statuses(a, 5, **FAIL) == [500] * 5
        tripped = time.monotonic()
        await eventually(lambda: circuit_b.state_name == "open", within=1.0)
        assert time.monotonic() - tripped < 0.1
        seen = len(upstream.seen)
        assert await statuses(b, 3) == [503] * 3
        assert len(upstream.seen) == seen
        assert await redis_client.pttl(BREAKER_TRIPS + circuit_name) > 0
        # After the open period exactly one node wins the trial token and half-opens.
        await asyncio.sleep(0.6)
        circuits = [pool_of(n).members[0].circuit for n in (a, b)]
        assert sorted(c.state_name for c in circuits) == ["half_open", "open"]  # type: ignore[union-attr]
    finally:
        await redis_client.delete(BREAKER_TRIPS + circuit_name, BREAKER_PROBES + circuit_name)


def exchange_of(client: TestClient) -> TripExchange:
    return client.app[RESOURCES].shared("breaker.exchange", dict)  # type: ignore[index,return-value]


async def test_a_node_that_starts_after_a_trip_opens_the_member_at_once(
    start: Start, upstream: Upstream, redis_server: RedisServer
) -> None:
    """Node A trips a member (corroborate = 1); node B, started afterwards (the trip's
    pub/sub message long gone), reads the trip's report on start: its very first request
    is a 503 circuit_open with Retry-After, and the upstream never hears from B."""
    table = {"open_seconds": 30, "min_requests": 5, "shared": True, "corroborate": 1}
    a = await start(settings([upstream.url], breaker=table, redis=redis_server.url, name="a"))
    assert await statuses(a, 5, **FAIL) == [500] * 5
    name = pool_of(a).members[0].circuit.name  # type: ignore[union-attr]
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        deadline = time.monotonic() + 2.0
        while await client.pttl(BREAKER_TRIPS + name) <= 0:  # written just after the trip
            assert time.monotonic() < deadline, "no trip key"
            await asyncio.sleep(0.005)
    finally:
        await client.aclose()
    seen = len(upstream.seen)
    b = await start(settings([upstream.url], breaker=table, redis=redis_server.url, name="b"))
    async with b.get("/api/x") as response:
        assert response.status == 503
        assert (await response.json())["error"] == "circuit_open"
        assert 25 <= int(response.headers["Retry-After"]) <= 30
    assert len(upstream.seen) == seen
    member = pool_of(b).snapshot()["members"][0]  # type: ignore[index]
    assert (member["state"], member["trips"], member["rejections"]) == ("open", 1, 1)
    assert exchange_of(b).heard == 0  # learned from the key, not from a message


async def test_a_trip_missed_while_the_bus_was_down_is_read_on_reconnect(
    start: Start, upstream: Upstream, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's subscriber connection is cut when A trips (corroborate = 1): B misses the
    message, and on resubscribing (resync) reads the trip's report and opens the member."""
    monkeypatch.setattr(cluster_bus, "RECONNECT_INTERVAL", 1.5)  # time for A's trip meanwhile
    table = {"open_seconds": 30, "min_requests": 5, "shared": True, "corroborate": 1}
    a = await start(settings([upstream.url], breaker=table, redis=redis_server.url, name="a"))
    b = await start(settings([upstream.url], breaker=table, redis=redis_server.url, name="b"))
    bus_b = b.app[RESOURCES].bus  # type: ignore[index]
    circuit_b = pool_of(b).members[0].circuit
    assert circuit_b is not None
    await eventually(lambda: bus_b.connected)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.client_kill_filter(_type="pubsub")  # every subscriber, A's and B's
    finally:
        await client.aclose()
    await eventually(lambda: not bus_b.connected, within=2.0)
    assert await statuses(a, 5, **FAIL) == [500] * 5  # published to nobody; the key stays
    assert circuit_b.state_name == "closed"
    await eventually(lambda: bus_b.connected and circuit_b.state_name == "open", within=3.0)
    assert exchange_of(b).heard == 0
    seen = len(upstream.seen)
    assert await statuses(b, 2) == [503, 503]
    assert len(upstream.seen) == seen


async def test_redis_down_keeps_the_breaker_working_locally(
    start: Start, upstream: Upstream, tmp_path: Path
) -> None:
    """With the shared breaker's Redis gone, trips still open locally and nothing errs."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        table = {"open_seconds": 0.3, "min_requests": 5}
        node = await start(settings([upstream.url], breaker=table, redis=server.url))
        server.kill()
        assert await statuses(node, 5, **FAIL) == [500] * 5
        assert await statuses(node, 2) == [503] * 2
        await asyncio.sleep(0.4)
        await eventually(lambda: pool_of(node).members[0].circuit.state_name != "open")  # type: ignore[union-attr]
        assert await statuses(node, 2) == [200] * 2
    finally:
        server.kill()


async def test_admin_lists_and_resets_circuits(start: Start, upstream: Upstream) -> None:
    """GET /admin/breaker shows an open member; POST /admin/breaker/reset closes it."""
    table = {"open_seconds": 60, "min_requests": 5}
    node = await start(settings([upstream.url], breaker=table))
    await statuses(node, 5, **FAIL)
    async with node.get("/admin/breaker") as response:
        listed = (await response.json())["upstreams"]["app"]
    assert [(m["state"], m["trips"]) for m in listed] == [("open", 1)]
    async with node.post("/admin/breaker/reset", json={"upstream": "nope"}) as response:
        assert response.status == 400
    async with node.post("/admin/breaker/reset", json={"upstream": "app"}) as response:
        assert (await response.json())["reset"] == [listed[0]["member"]]
    assert await statuses(node, 2) == [200, 200]


async def test_cache_serves_stale_while_the_circuit_is_open(
    start: Start, upstream: Upstream
) -> None:
    """cache before breaker: with every member open, a stale copy answers (X-Cache: STALE)
    and the upstream is not called; without one, the 503 circuit_open comes through."""
    breaker = {"open_seconds": 60, "min_requests": 5}
    cache = {"ttl": 0.1, "stale_if_error": 60}
    node = await start(settings([upstream.url], breaker=breaker, cache=cache))
    async with node.get("/api/cached") as response:
        assert response.status == 200
    await asyncio.sleep(0.15)  # the copy is stale now
    pool_of(node).members[0].circuit.open_for(time.monotonic(), 60, 0)  # type: ignore[union-attr]
    seen = len(upstream.seen)
    async with node.get("/api/cached") as response:
        assert (response.status, response.headers["X-Cache"]) == (200, "STALE")
    async with node.get("/api/never-cached") as response:
        assert response.status == 503
    assert len(upstream.seen) == seen
