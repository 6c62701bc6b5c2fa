"""Real upstream servers and a real node for the proxy integration tests.

`upstream_factory` starts aiohttp servers on free 127.0.0.1 ports that record every
request they receive; `node_factory` builds the node app from a settings table and
serves it through aiohttp's TestServer/TestClient. Nothing in the proxy is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy
from testkit import servers
from testkit.node_server import NodeServer

from node.app import build_app
from node.config import Settings
from node.schema import build

NODE_NAME = "node-a"
UPSTREAM_MAX_BODY = 16 * 1024 * 1024
MiB = 1024 * 1024
GZIP_TEXT = b"hello, compressed world\n" * 200


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes of `size` length."""
    block = hashlib.sha256(f"seed-{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    path: str
    raw_path: str
    query: list[tuple[str, str]]
    headers: CIMultiDictProxy[str]
    body: bytes


class Upstream:
    """An aiohttp server on a free port; its behaviour is chosen by the request path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[Seen] = []
        self.release = asyncio.Event()  # set to let /hold and /slow requests finish
        self.holding = 0
        self.held = asyncio.Event()  # set when a /hold request arrives
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=UPSTREAM_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                method=request.method,
                path=request.path,
                raw_path=request.raw_path,
                query=list(request.query.items()),
                headers=request.headers,
                body=body,
            )
        )
        parts = request.path.strip("/").split("/")
        special = getattr(self, f"reply_{parts[0]}", None)
        if special is not None:
            return await special(request, parts[1:])
        status = int(request.headers.get("X-Want-Status", "200"))
        return web.json_response(
            {
                "upstream": self.name,
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query": [list(kv) for kv in request.query.items()],
                "body": body.decode("utf-8", "replace") if len(body) < 4096 else "",
                "body_len": len(body),
                "body_sha256": sha256(body),
            },
            status=status,
            headers={"X-Upstream": self.name},
        )

    async def reply_cookies(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        headers = CIMultiDict(
            [
                ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; HttpOnly"),
                ("X-Custom", "yes"),
                ("Cache-Control", "no-store"),
            ]
        )
        return web.Response(text="cookies", headers=headers)

    async def reply_gzip(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        data = gzip.compress(GZIP_TEXT)
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        return web.Response(body=data, headers=headers)

    async def reply_hop(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        headers = CIMultiDict(
            [
                ("Connection", "X-Up-Hop, keep-alive"),
                ("X-Up-Hop", "secret"),
                ("Keep-Alive", "timeout=30"),
                ("Proxy-Authenticate", 'Basic realm="up"'),
                ("Upgrade", "h2c"),
                ("Trailer", "X-Checksum"),
                ("X-End-To-End", "kept"),
            ]
        )
        return web.Response(text="hop", headers=headers)

    async def reply_bytes(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        data = payload(int(args[0]), seed=1)
        return web.Response(body=data, content_type="application/octet-stream")

    async def reply_chunked(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        data = payload(int(args[0]), seed=2)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(data), 100_000):
            await response.write(data[start : start + 100_000])
        await response.write_eof()
        return response

    async def reply_slow(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        delay = float(args[0]) if args else 5.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), delay)
        return web.json_response({"upstream": self.name, "slow": True})

    async def reply_hold(self, request: web.Request, args: list[str]) -> web.StreamResponse:
        self.holding += 1
        self.held.set()
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        finally:
            self.holding -= 1
        return web.json_response({"upstream": self.name, "held": True})


UpstreamFactory = Callable[[str], Awaitable[Upstream]]
NodeFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def upstream_factory() -> AsyncIterator[UpstreamFactory]:
    started: list[Upstream] = []

    async def start(name: str = "up") -> Upstream:
        upstream = Upstream(name)
        started.append(upstream)
        await upstream.start()
        return upstream

    yield start
    await asyncio.gather(*(u.close() for u in started))


@pytest.fixture
async def upstream(upstream_factory: UpstreamFactory) -> Upstream:
    return await upstream_factory("up")


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, read, closed)."""
    return servers.closed_port()


def proxy_settings(
    targets: list[str],
    *,
    node: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    upstreams: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Settings with pool `app` over `targets` behind `/api/...` (prefix stripped)."""
    data: dict[str, Any] = {
        "node": {"name": NODE_NAME, **(node or {})},
        "upstreams": {"app": {"targets": targets, **(pool or {})}, **(upstreams or {})},
        "routes": routes
        or [{"path": "/api/{tail:.*}", "target": "upstream:app", "strip_prefix": "/api"}],
    }
    return build(Settings, data, "")


@pytest.fixture
async def node_factory() -> AsyncIterator[NodeFactory]:
    clients: list[TestClient] = []

    async def start(settings: Settings) -> TestClient:
        app = build_app(settings, "all")
        client = TestClient(NodeServer(app, host="127.0.0.1"), auto_decompress=False)
        clients.append(client)
        await client.start_server()
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def node(node_factory: NodeFactory, upstream: Upstream) -> TestClient:
    """The node with the default settings, proxying /api/... to one upstream."""
    return await node_factory(proxy_settings([upstream.url]))
