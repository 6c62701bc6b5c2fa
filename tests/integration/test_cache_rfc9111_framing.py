"""RFC 9112 section 6.3 (a reply whose Transfer-Encoding does not end in chunked and has no
Content-Length is read until the connection closes) and RFC 9110 section 15.2 (interim
1xx replies are forwarded to an HTTP/1.1 client as they come, never to an HTTP/1.0 one,
never break the final reply, and are never stored)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from .cache_helpers import BACKENDS, Cached, cached_for


class RawOrigin:
    """An origin writing the bytes a test gives, then closing the connection; `pause`
    seconds pass after the first part of `reply` (split at `split`) before the rest."""

    def __init__(self, reply: bytes, split: int = 0, pause: float = 0.0) -> None:
        self.reply = reply
        self.split = split
        self.pause = pause
        self.requests = 0
        self.url = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        if self.pause:
            writer.write(self.reply[: self.split])
            await writer.drain()
            await asyncio.sleep(self.pause)
            writer.write(self.reply[self.split :])
        else:
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


async def serve(cached: Cached, reply: bytes, **kw: float) -> tuple[RawOrigin, TestClient]:
    raw = RawOrigin(reply, **kw)  # type: ignore[arg-type]
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


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nfinal"


async def raw_get(node: TestClient, path: str, version: str = "1.1") -> list[bytes]:
    """The heads the node sends a raw client for one GET (each up to its blank line), the
    final one last; read until the node closes the connection."""
    reader, writer = await asyncio.open_connection(node.host, node.port)
    writer.write(f"GET /c{path} HTTP/{version}\r\nHost: n\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    heads = []
    while b"\r\n\r\n" in data:
        head, _, data = data.partition(b"\r\n\r\n")
        heads.append(head)
        if not head.split(b" ", 2)[1].startswith(b"1"):
            break
    return heads


async def test_a_103_reaches_the_client_before_the_final_reply(cached: Cached) -> None:
    """Early Hints go out as they come: the client reads the 103 while the origin is still
    preparing its reply."""
    hints = EARLY_HINTS + b"\r\n"
    raw, node = await serve(cached, hints + FINAL, split=len(hints), pause=1.0)
    try:
        reader, writer = await asyncio.open_connection(node.host, node.port)
        writer.write(f"GET /c{cached.path()} HTTP/1.1\r\nHost: n\r\n\r\n".encode())
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.8)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert first.startswith(b"HTTP/1.1 103 Early Hints\r\n")
        assert b"Link: </s.css>; rel=preload" in first
        assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        await raw.stop()


async def test_interim_replies_are_forwarded_and_never_stored(cached: Cached) -> None:
    """A 102 and a 103 reach the client in order before the 200 of a miss; the hit that
    follows is the 200 alone."""
    interims = b"HTTP/1.1 102 Processing\r\n\r\n" + EARLY_HINTS + b"\r\n"
    raw, node = await serve(cached, interims + FINAL)
    try:
        miss = await raw_get(node, cached.path())
        hit = await raw_get(node, cached.path())
        assert [h.split(b"\r\n")[0] for h in miss] == [
            b"HTTP/1.1 102 Processing",
            b"HTTP/1.1 103 Early Hints",
            b"HTTP/1.1 200 OK",
        ]
        assert len(hit) == 1 and b"X-Cache: HIT-L1" in hit[0] and raw.requests == 1
    finally:
        await raw.stop()


async def test_an_http10_client_gets_no_interim_reply(cached: Cached) -> None:
    """RFC 9110 section 15.2: a server must not send a 1xx to an HTTP/1.0 client."""
    raw, node = await serve(cached, EARLY_HINTS + b"\r\n" + FINAL)
    try:
        heads = await raw_get(node, cached.path(), version="1.0")
        assert len(heads) == 1 and heads[0].startswith(b"HTTP/1.0 200 OK")
    finally:
        await raw.stop()


async def test_an_interim_reply_loses_its_hop_by_hop_fields(cached: Cached) -> None:
    """The 103's Connection and the fields it names stay on the upstream's hop."""
    hints = b"HTTP/1.1 103 Early Hints\r\nConnection: X-Hop\r\nX-Hop: 1\r\nLink: <a>\r\n\r\n"
    raw, node = await serve(cached, hints + FINAL)
    try:
        first = (await raw_get(node, cached.path()))[0]
        assert b"Link: <a>" in first and b"X-Hop" not in first and b"Connection" not in first
    finally:
        await raw.stop()


async def test_a_100_continue_is_not_forwarded(cached: Cached) -> None:
    """A 100 answers the node's own request, not the client's: only the 200 goes out."""
    raw, node = await serve(cached, b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL)
    try:
        heads = await raw_get(node, cached.path())
        assert len(heads) == 1 and heads[0].startswith(b"HTTP/1.1 200 OK")
    finally:
        await raw.stop()
