"""Header bytes from an upstream reach the client as they came: a UTF-8 value is not
re-encoded (it arrived as `cafÃ©`). A value that is not UTF-8 (obs-text, RFC 9110 section
5.5) still passes, read as latin-1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from testkit.rawhttp import exchange

from .conftest import proxy_settings


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """An upstream whose reply carries a UTF-8 and a latin-1 header value, raw."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\nX-Old: caf\xe9\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_header_values_pass_through_byte_for_byte(node_factory, upstream):
    client = await node_factory(proxy_settings([upstream]))
    raw = await exchange(client, b"GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = raw.partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Name: caf\xc3\xa9\r\n" in head
    assert b"caf\xc3\x83\xc2\xa9" not in head  # not encoded twice
    assert head.startswith(b"HTTP/1.1 200 OK")
