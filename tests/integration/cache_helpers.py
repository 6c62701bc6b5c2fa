"""Nodes with a cached route in front of a CountingOrigin, for the cache integration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from node.app import RESOURCES, build_app
from node.config import Settings
from node.schema import build
from plugins.cache.keys import CACHE
from plugins.cache.plugin import ResponseCache

REDIS_URL = "redis://127.0.0.1:6379/0"
TOKEN = "cache-admin-token"


def node_settings(origin: str, redis: str = "", cache: dict[str, Any] | None = None) -> Settings:
    """A node whose `/c/...` route proxies to `origin` (prefix stripped) through the cache."""
    route = {
        "path": "/c/{tail:.*}",
        "target": "upstream:origin",
        "strip_prefix": "/c",
        "methods": ["GET", "HEAD", "PUT", "POST", "DELETE"],
        "cache": cache or {"ttl": 30},
    }
    data = {
        "node": {"name": f"cache-{uuid.uuid4().hex[:8]}", "admin_token": TOKEN},
        "backends": {"redis": redis},
        "upstreams": {"origin": {"targets": [origin], "timeout": 2.0}},
        "routes": [route],
    }
    return build(Settings, data, "")


class Nodes:
    def __init__(self) -> None:
        self.clients: list[TestClient] = []

    async def start(self, settings: Settings) -> TestClient:
        client = TestClient(TestServer(build_app(settings, "all"), host="127.0.0.1"))
        self.clients.append(client)
        await client.start_server()
        if settings.backends.redis:
            await wait_for(lambda: client.app[RESOURCES].bus.connected, 5, "bus connected")
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def route_cache(client: TestClient) -> ResponseCache:
    """The node's cache plugin of its one cached route."""
    invalidator = client.app[RESOURCES].shared("cache.invalidator", dict)
    return invalidator.caches[0][1]


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def delete_keys(marker: str, url: str = REDIS_URL) -> None:
    """Deletes this test's cache keys (every key of ours holds its unique path marker)."""
    client = aioredis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{CACHE}*{marker}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def fetch(client: TestClient, path: str, method: str = "GET", **kw: Any) -> tuple:
    """(status, X-Cache, JSON body or raw bytes) of one request."""
    response = await client.request(method, path, **kw)
    body = await response.read()
    try:
        parsed: Any = await response.json()
    except Exception:
        parsed = body
    return response.status, response.headers.get("X-Cache"), parsed
