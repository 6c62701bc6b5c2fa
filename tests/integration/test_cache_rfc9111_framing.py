"""RFC 9112 section 6.3 (a reply whose Transfer-Encoding does not end in chunked and has no
Content-Length is read until the connection closes) and RFC 9110 section 15.2 (interim
1xx replies never break the final one, and are never stored)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from .cache_helpers import BACKENDS, Cached, cached_for


class RawOrigin:
    """An origin writing the bytes a test gives, then closing the connection."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests = 0
        self.url = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        writer.write(self.reply)
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture(params=BACKENDS)
async def cached(request: pytest.FixtureRequest) -> AsyncIterator[Cached]:
    async with cached_for(request.param) as made:
        yield made


async def serve(cached: Cached, reply: bytes) -> tuple[RawOrigin, object]:
    raw = RawOrigin(reply)
    await raw.start()
    cached.origin.url = raw.url  # the node's upstream is the raw origin
    return raw, await cached.node({"ttl": 30})


@pytest.mark.parametrize("coding", ["gzip", "identity", "gzip, br"])
async def test_a_non_chunked_transfer_coding_reads_to_close(cached: Cached, coding: str) -> None:
    """No Content-Length, Transfer-Encoding not ending in chunked: the body is all the
    bytes up to the close; the reply reaches the client whole."""
    body = b"z" * 5000
    raw, node = await serve(
        cached, f"HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n".encode() + body
    )
    try:
        status, _, got = await cached.get(node, cached.path())
        assert (status, got) == (200, body)
    finally:
        await raw.stop()


@pytest.mark.parametrize(
    "interim", [b"103 Early Hints\r\nLink: </s.css>; rel=preload", b"102 Processing"]
)
async def test_interim_replies_pass_and_are_not_stored(cached: Cached, interim: bytes) -> None:
    """A 1xx before the final reply: the client gets the final 200, which alone is stored."""
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nfinal"
    raw, node = await serve(cached, b"HTTP/1.1 " + interim + b"\r\n\r\n" + final)
    try:
        first = await cached.get(node, cached.path())
        second = await cached.get(node, cached.path())
        assert (first[0], first[2], second[0], second[2]) == (200, b"final", 200, b"final")
        assert second[1]["X-Cache"] == "HIT-L1" and raw.requests == 1
    finally:
        await raw.stop()
