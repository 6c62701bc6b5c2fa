"""Nodes with a cached route in front of a CountingOrigin, for the cache integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from testkit.node_server import NodeServer

from node.app import RESOURCES, build_app
from node.config import Settings
from node.schema import build
from plugins.cache.keys import CACHE
from plugins.cache.plugin import ResponseCache

REDIS_URL = "redis://127.0.0.1:6379/0"
TOKEN = "cache-admin-token"


def node_settings(
    origin: str,
    redis: str = "",
    cache: dict[str, Any] | None = None,
    methods: tuple[str, ...] = ("GET", "HEAD", "PUT", "POST", "DELETE"),
) -> Settings:
    """A node whose `/c/...` route proxies to `origin` (prefix stripped) through the cache."""
    route = {
        "path": "/c/{tail:.*}",
        "target": "upstream:origin",
        "strip_prefix": "/c",
        "methods": list(methods),
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
        client = TestClient(NodeServer(build_app(settings, "all"), host="127.0.0.1"))
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


Script = tuple[int, list[tuple[str, str]], bytes]


class ScriptedOrigin:
    """An origin answering what a test scripts per path: `script(path, ...)` queues replies
    (the last one repeats); every request is recorded in `seen` (method, path, headers)."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Script]] = {}
        self.seen: list[tuple[str, str, Any]] = []
        self.delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def script(
        self, path: str, status: int = 200, headers: Any = (), body: bytes = b"payload"
    ) -> None:
        self.scripts.setdefault(path, []).append((status, list(headers), body))

    def count(self, path: str, method: str = "GET") -> int:
        return sum(1 for m, p, _ in self.seen if p == path and m == method)

    def last(self, path: str) -> Any:
        return [h for _, p, h in self.seen if p == path][-1]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        queue = self.scripts.get(request.path) or [(200, [], b"payload")]
        status, headers, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return web.Response(status=status, body=body, headers=CIMultiDict(headers))


def http_date(offset: float = 0.0) -> str:
    """An IMF-fixdate `offset` seconds from now."""
    return formatdate(time.time() + offset, usegmt=True)


class Cached:
    """Test fixture: nodes over one ScriptedOrigin, embedded or sharing Redis (`backend`),
    each test on its own path prefix; `get` answers (status, headers, body)."""

    def __init__(self, origin: ScriptedOrigin, backend: str, marker: str) -> None:
        self.origin = origin
        self.backend = backend
        self.marker = marker
        self.nodes = Nodes()

    def path(self, name: str = "r") -> str:
        """The origin's path for `name` (the node's is "/c" + it)."""
        return f"/{self.marker}/{name}"

    async def node(self, cache: dict[str, Any] | None = None, **kw: Any) -> TestClient:
        redis = REDIS_URL if self.backend == "redis" else ""
        return await self.nodes.start(node_settings(self.origin.url, redis, cache, **kw))

    @staticmethod
    async def get(
        node: TestClient, path: str, method: str = "GET", **kw: Any
    ) -> tuple[int, Any, bytes]:
        response = await node.request(method, "/c" + path, **kw)
        return response.status, response.headers, await response.read()


BACKENDS = ("embedded", "redis")
# The backends several nodes share: tests of one node reading another's entries run on
# these alone (an embedded node has no L2 of another's to read).
SHARED = ("redis",)


@contextlib.asynccontextmanager
async def cached_for(backend: str) -> AsyncIterator[Cached]:
    """A Cached over a fresh ScriptedOrigin; its nodes, origin and Redis keys go after."""
    origin = ScriptedOrigin()
    await origin.start()
    made = Cached(origin, backend, uuid.uuid4().hex[:12])
    try:
        yield made
    finally:
        await made.nodes.close()
        await origin.stop()
        await delete_keys(made.marker)
