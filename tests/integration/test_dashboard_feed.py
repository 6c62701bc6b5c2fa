"""The dashboard feed on a real node app: frame rate, shared frames, slow viewers, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestServer
from testkit.node_server import NodeServer

from node.app import build_app
from node.config import Settings

from .dashboard_helpers import dashboard_settings


@pytest.fixture
async def start_server() -> AsyncIterator[Callable]:
    servers: list[TestServer] = []

    async def start(settings: Settings) -> TestServer:
        server = NodeServer(build_app(settings, "all"), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def frames(ws: aiohttp.ClientWebSocketResponse, count: int, seconds: float) -> list[dict]:
    out = []
    async with asyncio.timeout(seconds):
        while len(out) < count:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            out.append(orjson.loads(msg.data))
    return out


async def test_feed_sends_a_frame_every_second(start_server, session):
    """At the default interval, frames come at least once a second."""
    server = await start_server(dashboard_settings())
    async with session.ws_connect(server.make_url("/dashboard/ws")) as ws:
        received = []
        for frame in await frames(ws, 4, 6):
            received.append((time.monotonic(), frame))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(received[1:])]
    assert all(gap <= 1.3 for gap in gaps), gaps
    assert {"nodes", "cluster", "history"} <= set(received[-1][1])


async def test_first_frame_has_history_then_one_point_each(start_server, session):
    """A new viewer gets the whole history at once, then one point per frame."""
    server = await start_server(dashboard_settings(interval=0.05))
    await asyncio.sleep(0.5)  # a few points of history
    async with session.ws_connect(server.make_url("/dashboard/ws")) as ws:
        first, second = await frames(ws, 2, 3)
    assert first["history"]["full"] is True
    assert len(first["history"]["t"]) >= 3
    assert second["history"]["full"] is False
    assert len(second["history"]["t"]) == 1


async def test_viewers_share_one_aggregation(start_server, session):
    """Two viewers get byte-identical frames: one aggregation per tick serves both."""
    server = await start_server(dashboard_settings(interval=0.1))
    url = server.make_url("/dashboard/ws")
    async with session.ws_connect(url) as a, session.ws_connect(url) as b:
        await frames(a, 1, 3)  # past each one's full first frame
        await frames(b, 1, 3)
        seen_a = {f["t"]: f for f in await frames(a, 5, 3)}
        seen_b = {f["t"]: f for f in await frames(b, 5, 3)}
    shared = set(seen_a) & set(seen_b)
    assert shared
    assert all(seen_a[t] == seen_b[t] for t in shared)


async def stalled_viewer(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    writer.write(
        b"GET /dashboard/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    status = await reader.readline()
    assert b" 101 " in status, status
    return reader, writer


async def test_slow_viewer_is_dropped_and_others_keep_getting_frames(start_server, session, caplog):
    """A viewer that stops reading is cut off once its queue fills; the others are unaffected."""
    caplog.set_level(logging.INFO, logger="scalenode.dashboard")
    server = await start_server(dashboard_settings(interval=0.05, routes=60))
    reader, writer = await stalled_viewer(server.port)
    async with session.ws_connect(server.make_url("/dashboard/ws")) as ws:
        deadline = time.monotonic() + 10
        while "dropping a dashboard viewer" not in caplog.text:
            assert time.monotonic() < deadline, "the stalled viewer was never dropped"
            await frames(ws, 1, 2)  # the good viewer keeps reading
        assert len(await frames(ws, 3, 2)) == 3
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(5):
            while True:  # what was buffered, then the reset of the cut connection
                if not await reader.read(65536):
                    raise asyncio.IncompleteReadError(b"", None)
    writer.close()


async def test_viewers_are_closed_on_shutdown(start_server, session):
    """Stopping the node closes every feed socket with 1001 (going away)."""
    server = await start_server(dashboard_settings(interval=0.1))
    async with session.ws_connect(server.make_url("/dashboard/ws")) as ws:
        await frames(ws, 1, 3)
        closing = asyncio.ensure_future(server.close())
        async with asyncio.timeout(5):
            while (await ws.receive()).type == WSMsgType.TEXT:
                pass
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
        await closing


async def test_api_cluster_is_the_same_frame_with_full_history(start_server, session):
    """GET /dashboard/api/cluster answers the frame, history and all, as JSON."""
    server = await start_server(dashboard_settings(interval=0.1))
    for _ in range(5):
        async with session.get(server.make_url("/hello0")) as resp:
            assert resp.status == 200
    await asyncio.sleep(0.3)
    async with session.get(server.make_url("/dashboard/api/cluster")) as resp:
        assert resp.status == 200
        frame = await resp.json()
    assert frame["served_by"] == "dash-a"
    assert frame["cluster"]["nodes"] == 1
    assert frame["cluster"]["plugins"]["ratelimit"]["counters"]["allowed"] == 5
    assert frame["history"]["full"] is True


async def test_metrics_export_the_recommended_replicas(start_server, session):
    """/metrics carries scalenode_recommended_replicas for an HPA or an operator."""
    server = await start_server(dashboard_settings(interval=0.1))
    await asyncio.sleep(0.2)
    async with session.get(server.make_url("/metrics")) as resp:
        text = await resp.text()
    assert 'scalenode_recommended_replicas{node="dash-a"} 1.0' in text
