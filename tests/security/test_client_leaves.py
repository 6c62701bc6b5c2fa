"""A client that leaves mid-upload or mid-reply: counted 499 as nginx does, one info line,
no traceback, nothing left in flight (the drain would wait for it), and the node serves on."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from node.app import STATS

from .conftest import proxy_settings

UPLOAD = b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000


async def leave(port: int, raw: bytes, *, read: int = 0, reset: bool = False) -> None:
    """Send `raw`, read `read` bytes of the reply, then close (with an RST if `reset`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    if read:
        await reader.readexactly(read)
    await asyncio.sleep(0.05)
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def settled(client, label: str, wanted: int) -> dict[int, int]:
    stats = client.server.app[STATS].routes[label]
    for _ in range(100):
        if stats.statuses.get(499, 0) >= wanted and stats.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    return dict(stats.statuses)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_an_aborted_upload_is_a_499_with_one_info_line(node_factory, origin, caplog, reset):
    caplog.set_level(logging.INFO, logger="scalenode.http")
    client = await node_factory(proxy_settings([origin.url]))
    for _ in range(5):
        await leave(client.port, UPLOAD, reset=reset)
    statuses = await settled(client, "/api/{tail:.*}", 5)
    assert statuses == {499: 5}
    assert client.server.app[STATS].routes["/api/{tail:.*}"].in_flight == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    infos = [r.getMessage() for r in caplog.records if "client closed" in r.getMessage()]
    assert len(infos) == 5 and "before the reply was out (499)" in infos[0]
    assert not origin.gets and not origin.versions  # nothing half-sent upstream
    assert (await client.get("/api/after")).status == 200  # and the node serves on


async def test_a_client_leaving_mid_stream_is_a_499(node_factory, origin, caplog):
    caplog.set_level(logging.INFO, logger="scalenode.http")
    client = await node_factory(proxy_settings([origin.url]))
    big = b"GET /api/big?size=20000000 HTTP/1.1\r\nHost: x\r\n\r\n"  # streamed: over 1 MiB
    await leave(client.port, big, read=4096, reset=True)
    statuses = await settled(client, "/api/{tail:.*}", 1)
    assert statuses == {499: 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
