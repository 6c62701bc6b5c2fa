"""GET /ready against the real backends: 200 when each answers, 503 naming the one that does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer
from testkit.servers import closed_port

from node.app import build_app
from node.config import Settings
from node.schema import build

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def settings_with(backends: dict[str, str], shard_dsn: str = "") -> Settings:
    data: dict = {"node": {"name": "ready-test"}, "backends": backends}
    if shard_dsn:
        data["shards"] = {"main": {"members": [{"name": "s0", "dsn": shard_dsn}]}}
    return build(Settings, data, "")


@pytest.fixture
async def client_for() -> AsyncIterator:
    clients: list[TestClient] = []

    async def start(settings: Settings) -> TestClient:
        client = TestClient(NodeServer(build_app(settings, "gateway")))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_ready_when_every_backend_answers(client_for) -> None:
    """Redis, RabbitMQ and a PostgreSQL shard all answering: 200 listing each as ok."""
    client = await client_for(settings_with({"redis": REDIS, "amqp": AMQP}, POSTGRES))
    response = await client.get("/ready")
    body = await response.json()
    assert response.status == 200, body["backends"]
    assert body["backends"] == {
        "redis": {"ok": True},
        "amqp": {"ok": True},
        "postgres:main/s0": {"ok": True},
    }
    assert response.headers["X-Node"] == "ready-test"


@pytest.mark.parametrize(
    ("backends", "shard", "failing"),
    [
        ({"redis": "redis://127.0.0.1:{port}/0", "amqp": AMQP}, "", "redis"),
        ({"redis": REDIS, "amqp": "amqp://guest:guest@127.0.0.1:{port}/"}, "", "amqp"),
        ({"redis": REDIS}, "postgresql://postgres@127.0.0.1:{port}/postgres", "postgres:main/s0"),
    ],
)
async def test_not_ready_names_the_failing_backend(client_for, backends, shard, failing) -> None:
    """One backend down: 503 JSON whose detail names it, the others still reported ok."""
    port = closed_port()
    backends = {k: v.format(port=port) for k, v in backends.items()}
    client = await client_for(settings_with(backends, shard.format(port=port)))
    response = await client.get("/ready")
    body = await response.json()
    assert response.status == 503
    assert body["error"] == "backend_unavailable"
    assert failing in body["detail"]
    assert body["backends"][failing]["ok"] is False
    assert all(state["ok"] for name, state in body["backends"].items() if name != failing)


async def test_embedded_node_is_ready_without_services(client_for) -> None:
    """With every backend embedded there is nothing to wait for: 200."""
    client = await client_for(settings_with({}))
    response = await client.get("/ready")
    assert response.status == 200
    assert (await response.json())["backends"] == {}


def limited_routes(*modes: str) -> list[dict]:
    return [
        {
            "path": f"/r{i}",
            "target": "handler:node.demo:hello",
            "ratelimit": {"limit": 5, "window": 1, "on_backend_error": mode},
        }
        for i, mode in enumerate(modes)
    ]


@pytest.mark.parametrize(
    ("modes", "status", "state"),
    [
        (("open",), 200, "degraded"),
        (("local", "open"), 200, "degraded"),
        (("open", "closed"), 503, "unavailable"),
    ],
)
async def test_redis_outage_readiness_follows_the_strictest_user(
    client_for, modes, status, state
) -> None:
    """Redis down: 200 "degraded" while every route degrades through it, 503 if one fails closed."""
    data = {
        "node": {"name": "ready-test"},
        "backends": {"redis": f"redis://127.0.0.1:{closed_port()}/0"},
        "routes": limited_routes(*modes),
    }
    client = await client_for(build(Settings, data, ""))
    response = await client.get("/ready")
    assert response.status == status
    assert (await response.json())["status"] == state


async def test_ready_on_a_redis_cluster(client_for, cluster) -> None:
    """backends.redis = redis+cluster://...: the probe pings through the cluster client
    the stores use (a plain client refused the URL and left the node "degraded")."""
    client = await client_for(settings_with({"redis": cluster}))
    response = await client.get("/ready")
    body = await response.json()
    assert response.status == 200, body
    assert (body["status"], body["backends"]) == ("ready", {"redis": {"ok": True}})


async def test_memory_url_is_the_embedded_backend(client_for) -> None:
    """memory:// names the embedded default explicitly: nothing to probe, ready."""
    client = await client_for(settings_with({"redis": "memory://", "amqp": "memory://"}))
    response = await client.get("/ready")
    assert response.status == 200
    assert (await response.json())["backends"] == {}


async def test_a_node_on_a_redis_cluster_stops_every_time(cluster) -> None:
    """Stopping cancels the node's background loops. redis-py's cluster client can swallow
    a cancel and return its reply (seen on 3.11), which left the dashboard's loop running
    and shutdown waiting on it forever, about one stop in twenty; now the cancel is
    repeated (node/tasks.py). Forty starts and stops, each bounded."""
    settings = settings_with({"redis": cluster})
    for attempt in range(40):
        client = TestClient(NodeServer(build_app(settings, "gateway")))
        await client.start_server()
        assert (await client.get("/ready")).status == 200
        try:
            await asyncio.wait_for(client.close(), 10)
        except TimeoutError:
            pytest.fail(f"stop {attempt + 1} of 40 still waiting after 10 s")
