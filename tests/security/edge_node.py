"""A node served as `python run.py` serves it (node.server's runner, so node.edge's
connection handler), in this process on a free port, and raw-socket helpers for what a
client of it sees: the reply, whether the node closed, and when."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.app import build_app
from node.config import Settings
from node.edge_stats import EDGE, EdgeStats
from node.schema import build
from node.server import node_runner

NODE_NAME = "edge"
# Small timeouts keep the tests fast; each test states which one it exercises.
FAST = {"header_timeout": 0.5, "keepalive_timeout": 1.0, "body_timeout": 0.5}
ECHO = {"path": "/echo/{tail:.*}", "target": "handler:node.demo:echo"}


@dataclass
class Served:
    port: int
    app: web.Application

    @property
    def edge(self) -> EdgeStats:
        return self.app[EDGE]


ServeNode = Callable[..., Awaitable[Served]]


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[ServeNode]:
    """`start(node, extend)` starts a node with [node] keys `node` (FAST by default);
    `extend(app)` may add routes. Every node started is stopped on leaving."""
    runners: list[web.AppRunner] = []

    async def start(node: dict[str, Any] | None = None, extend=None) -> Served:
        data = {"node": {"name": NODE_NAME, **FAST, **(node or {})}, "routes": [ECHO]}
        settings = build(Settings, data, "")
        app = build_app(settings, "all")
        if extend is not None:
            extend(app)
        runner = node_runner(app, settings.node)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return Served(runner.addresses[0][1], app)

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@dataclass
class Seen:
    """What one connection received: every byte until the node closed or `wait` ran out."""

    data: bytes
    closed: bool
    after: float  # seconds from the start of reading to the close (or to giving up)


async def read_all(reader: asyncio.StreamReader, wait: float) -> Seen:
    started = time.monotonic()
    data = b""
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return Seen(data, False, time.monotonic() - started)
    except ConnectionResetError:
        pass
    return Seen(data, True, time.monotonic() - started)


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
    """Send `data` a byte at a time, `every` seconds apart, until done or the node closes."""
    for i in range(len(data)):
        if writer.is_closing():
            return
        writer.write(data[i : i + 1])
        try:
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
