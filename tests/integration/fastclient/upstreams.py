"""Raw TCP upstreams for the lean client's tests, and the helpers that drive the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from node.upstream.fastclient import FastClient
from node.upstream.settings import UpstreamSettings

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Answer], Awaitable["RawServer"]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# The head of a reply too large to read whole, and the start of its body: it is streamed.
LARGE_STARTED = b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"a" * 1000


class Member:
    def __init__(self, url: str) -> None:
        self.url = url


class RawServer:
    """A TCP server whose every connection runs `answer`; it counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def member(self) -> Member:
        assert self.server is not None
        return Member(f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def replying(reply: bytes, *, close: bool = False, delay: float = 0.0) -> Answer:
    """An upstream that reads one request, waits `delay`, writes `reply` (b"": nothing),
    then closes (`close`) or keeps the connection until the client closes it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if delay:
            await asyncio.sleep(delay)
        writer.write(reply)
        await writer.drain()
        if not close:
            await reader.read()

    return answer


def keep_replying(reply: bytes, *, delay: float = 0.0) -> Answer:
    """A keep-alive upstream: every request on a connection gets `reply`, after `delay`."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            if delay:
                await asyncio.sleep(delay)
            writer.write(reply)
            await writer.drain()

    return answer


keep_alive_hello = keep_replying(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello")


def client(timeout: float = 2.0, max_connections: int = 256) -> FastClient:
    return FastClient(
        UpstreamSettings(
            targets=("http://127.0.0.1:1",), timeout=timeout, max_connections=max_connections
        )
    )


def consistent(fast: FastClient) -> bool:
    """At rest: every open connection holds one slot, every idle one is open, none waits."""
    idle = [exchange for waiting in fast.idle.values() for exchange in waiting]
    slots = fast.free + len(fast.open) == fast.settings.max_connections
    return slots and set(idle) <= fast.open and not fast.waiters


def chunk(size: int) -> bytes:
    return b"%x\r\n" % size + b"c" * size + b"\r\n"


async def get(fast: FastClient, raw: RawServer, method: str = "GET") -> tuple[int, bytes, dict]:
    reply = await fast.send(raw.member, method, "/x", [("Accept", "*/*")], b"")
    body = reply.body
    if reply.stream is not None:  # read, then always closed, as the HTTP adapter does
        try:
            body = b"".join([chunk async for chunk in reply.stream])
        finally:
            await reply.stream.aclose()
    return reply.status, body, dict(reply.headers)
