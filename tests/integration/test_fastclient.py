"""The lean upstream client against raw TCP servers that answer the way odd upstreams do:
interim replies, bodies ended by close, malformed replies, stalls, keep-alive reuse, stray
bytes after a reply, trailers, oversized heads and early replies; and its connection cap
(slots given back, handed over, never leaked) when requests queue, time out or are cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from node.errors import BadGateway, GatewayTimeout, Rejected
from node.exchange import PAUSE_AT
from node.fastclient import FastClient
from node.upstream_settings import UpstreamSettings

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(answer: Answer) -> RawServer:
        raw = RawServer(answer)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


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
    reply = await fast.send(raw.member, method, "/x", CIMultiDict({"Accept": "*/*"}), b"")
    body = reply.body
    if reply.stream is not None:  # read, then always closed, as the HTTP adapter does
        try:
            body = b"".join([chunk async for chunk in reply.stream])
        finally:
            await reply.stream.aclose()
    return reply.status, body, dict(reply.headers)


async def keep_alive_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello")
        await writer.drain()


async def test_keeps_one_connection_alive_across_requests(serve) -> None:
    """Ten sequential requests travel over one upstream connection."""
    raw, fast = await serve(keep_alive_hello), client()
    for _ in range(10):
        assert await get(fast, raw) == (200, b"hello", {"X-Up": "1"})
    assert raw.connections == 1
    await fast.close()


async def test_skips_an_interim_100_continue(serve) -> None:
    """A 100 Continue before the real reply is not mistaken for it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    fast = client()
    assert (await get(fast, await serve(answer)))[:2] == (201, b"ok")
    await fast.close()


async def test_a_body_ended_by_close_is_streamed_whole(serve) -> None:
    """HTTP/1.0-style: no length, no chunks; the body ends when the upstream closes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 100_000)
        await writer.drain()

    fast = client()
    status, body, _ = await get(fast, await serve(answer))
    assert (status, len(body)) == (200, 100_000)
    await fast.close()


async def test_a_malformed_reply_is_a_502(serve) -> None:
    """Garbage instead of a status line: BadGateway, never a crash."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP READY\r\n\r\n")
        await writer.drain()
        await reader.read()

    fast = client()
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    await fast.close()


async def test_a_silent_upstream_times_out_and_frees_its_slot(serve) -> None:
    """No answer within `timeout`: 504, and the connection does not count against the cap."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    fast = client(timeout=0.2)
    raw = await serve(answer)
    with pytest.raises(GatewayTimeout):
        await get(fast, raw)
    assert not fast.open
    await fast.close()


async def test_a_stall_mid_body_is_a_504(serve) -> None:
    """Headers, some of a large body, then silence: the stream raises GatewayTimeout."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        await asyncio.sleep(5)

    fast = client(timeout=0.3)
    with pytest.raises(GatewayTimeout):
        await get(fast, await serve(answer))
    await fast.close()


async def test_head_keeps_content_length_and_does_not_wait_for_a_body(serve) -> None:
    """HEAD: the headers describe the GET body; no body is awaited."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        await writer.drain()
        await reader.read()

    fast = client()
    status, body, headers = await get(fast, await serve(answer), "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "1234")
    await fast.close()


async def test_a_connection_closed_while_idle_is_replaced(serve) -> None:
    """The upstream drops a kept-alive connection between requests: the next one reconnects."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # and close: the handler returns

    raw, fast = await serve(answer), client()
    assert (await get(fast, raw))[:2] == (200, b"ok")
    await asyncio.sleep(0.05)
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert raw.connections == 2
    await fast.close()


async def test_a_keep_alive_race_is_retried_on_a_new_connection(serve) -> None:
    """The upstream closes a kept-alive connection as the next request arrives (its idle
    timeout): an idempotent request goes again on a fresh connection, no 502."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the second request: closed unanswered

    raw, fast = await serve(answer), client()
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert raw.connections == 2
    await fast.close()


async def test_idle_connections_to_one_member_do_not_starve_another(serve) -> None:
    """At the connection cap, an idle connection to one member makes room for another."""
    first, second = await serve(keep_alive_hello), await serve(keep_alive_hello)
    fast = client(timeout=0.5, max_connections=1)
    assert (await get(fast, first))[0] == 200
    assert (await get(fast, second))[0] == 200
    assert consistent(fast)
    await fast.close()


async def test_a_connection_closed_while_idle_leaves_the_pool_at_once(serve) -> None:
    """The upstream drops an idle kept-alive connection: its slot is free without a request."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()  # and close: the handler returns

    fast = client()
    assert (await get(fast, await serve(answer)))[:2] == (200, b"ok")
    await asyncio.sleep(0.05)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_a_second_reply_after_the_first_is_not_mixed_into_it(serve) -> None:
    """Bytes after a complete reply (a reply longer than promised) are not taken into it, and
    the connection they came on is not reused."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 500 Oops\r\nX-Evil: 1\r\nContent-Length: 4\r\n\r\nevil"
            )
            await writer.drain()

    raw, fast = await serve(answer), client()
    assert await get(fast, raw) == (200, b"ok", {})
    assert await get(fast, raw) == (200, b"ok", {})
    assert raw.connections == 2
    await fast.close()


async def test_stray_bytes_after_a_streamed_reply_do_not_break_it(serve) -> None:
    """A chunked reply followed by stray bytes is passed through whole, without an error."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    fast = client()
    assert await get(fast, await serve(answer)) == (200, b"ok", {})
    assert consistent(fast)
    await fast.close()


async def test_trailers_do_not_become_headers(serve) -> None:
    """A chunked body's trailer fields are dropped (as aiohttp does), never sent as headers."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
            b"2\r\nok\r\n0\r\nSet-Cookie: session=evil\r\nX-Trailer: 1\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    fast = client()
    assert await get(fast, await serve(answer)) == (200, b"ok", {"X-Up": "1"})
    await fast.close()


async def test_a_header_block_over_64_kib_is_a_502(serve) -> None:
    """An upstream that sends more than 64 KiB of headers gets BadGateway."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        pad = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"v" * 60) for i in range(1000))
        writer.write(b"HTTP/1.1 200 OK\r\n" + pad + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    fast = client()
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_an_endless_header_value_is_a_502_before_the_timeout(serve) -> None:
    """One header value that never ends is cut off once it passes the bound, not buffered
    until the exchange times out."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(64):
            writer.write(b"v" * 16384)
            await writer.drain()
        await reader.read()

    fast = client(timeout=3.0)
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    await fast.close()


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x", {"X-A": "a\r\nX-Injected: 1"}),
        ("/x", {"X-A": "a\nX-Injected: 1"}),
        ("/x", {"X-A": "a\rX-Injected: 1"}),
        ("/x", {"X-A\r\nX-Injected": "1"}),
        ("/x HTTP/1.1\r\nX-Injected: 1\r\nX-B:", {}),
    ],
)
async def test_cr_or_lf_in_the_request_head_is_refused_unsent(serve, path, headers) -> None:
    """A request line or header with CR or LF in it is refused, and nothing is written."""
    raw, fast = await serve(keep_alive_hello), client()
    with pytest.raises(Rejected) as caught:
        await fast.send(raw.member, "GET", path, CIMultiDict(headers), b"")
    assert caught.value.status == 400
    assert raw.connections == 0 and consistent(fast)
    await fast.close()


async def test_reading_stays_paused_for_a_reply_on_a_reused_connection(serve) -> None:
    """A stream that ended while its reading was paused does not resume reading for the next
    reply on the same connection: that reply's buffering stays bounded."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(250_000))
        await writer.drain()
        await asyncio.sleep(0.1)  # the end arrives in the read that crosses PAUSE_AT
        writer.write(chunk(20_000) + b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):
            writer.write(chunk(65536))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    raw, fast = await serve(answer), client()
    first = await fast.send(raw.member, "GET", "/1", CIMultiDict(), b"")
    await asyncio.sleep(0.3)
    second = await fast.send(raw.member, "GET", "/2", CIMultiDict(), b"")
    await asyncio.sleep(0.2)
    assert first.stream is not None and second.stream is not None and raw.connections == 1
    assert len(b"".join([part async for part in first.stream])) == 270_000
    await first.stream.aclose()
    await asyncio.sleep(0.2)
    assert second.stream.buffered < 4 * PAUSE_AT  # type: ignore[attr-defined]
    await second.stream.aclose()
    await fast.close()


async def test_a_reply_before_the_body_is_sent_retires_the_connection(serve) -> None:
    """The upstream answers before reading the request body: the connection is not reused,
    or the unsent body would reach it as the next request (smuggling)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # a naive upstream: after an early reply, the next bytes are a request
            head = await read_request(reader)
            path = head.split(b" ")[1]
            if path != b"/early" and b"content-length: " in head.lower():
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
            await writer.drain()

    padding = b"p" * (32 * 1024 * 1024)
    smuggled = b"GET /smuggled HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(padding) + padding
    raw, fast = await serve(answer), client()
    early = await fast.send(raw.member, "POST", "/early", CIMultiDict(), smuggled)
    assert early.body == b"/early"
    assert (await get(fast, raw))[:2] == (200, b"/x")
    await fast.close()


async def test_a_retired_connection_is_dropped_not_flushed(serve) -> None:
    """A connection retired with request body still unwritten is dropped: the upstream never
    gets the rest of that body."""
    received: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.2)  # the client has its reply and retires the connection
        total = 0
        try:
            while data := await reader.read(1 << 20):
                total += len(data)
        finally:
            received.append(total)

    body = b"p" * (32 * 1024 * 1024)
    raw, fast = await serve(answer), client()
    assert (await fast.send(raw.member, "POST", "/", CIMultiDict(), body)).body == b"ok"
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.05)
    assert received and received[0] < len(body)
    await fast.close()


async def test_an_unasked_protocol_switch_is_a_502_without_a_loop_error(serve) -> None:
    """A 101 Switching Protocols the node never asked for is BadGateway, handled in the
    client rather than by the event loop's fatal-error path."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    loop, errors = asyncio.get_running_loop(), []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    fast = client()
    try:
        with pytest.raises(BadGateway):
            await get(fast, await serve(answer))
    finally:
        loop.set_exception_handler(None)
    assert not errors and consistent(fast)
    await fast.close()


async def test_a_request_cancelled_while_awaiting_its_reply_frees_its_slot(serve) -> None:
    """The client leaves while the upstream thinks: that connection is dropped, its slot freed."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    raw, fast = await serve(answer), client(max_connections=1)
    waiting = asyncio.create_task(get(fast, raw))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.01)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_a_stream_closed_early_frees_its_slot_once(serve) -> None:
    """The client leaves mid-body (the adapter may close twice): one slot comes back, once."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        await reader.read()

    raw, fast = await serve(answer), client()
    reply = await fast.send(raw.member, "GET", "/", CIMultiDict(), b"")
    assert reply.stream is not None
    await reply.stream.aclose()
    await reply.stream.aclose()
    await asyncio.sleep(0.01)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_a_body_cut_short_is_a_502_and_frees_its_slot_once(serve) -> None:
    """The upstream closes mid-body: the stream raises BadGateway, one slot comes back."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"a" * 1000)
        await writer.drain()  # and close

    fast = client()
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    await asyncio.sleep(0.01)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_the_retry_after_a_keep_alive_race_takes_a_new_connection(serve) -> None:
    """When every idle connection was closed by the upstream at once, the one retry goes on a
    new connection, not on the next idle one, which is as stale as the first."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.05)  # so that two requests at once take two connections
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # any later request on this connection: closed unanswered

    raw, fast = await serve(answer), client()
    await asyncio.gather(get(fast, raw), get(fast, raw))
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert raw.connections == 3
    await fast.close()


async def test_a_partial_stray_reply_does_not_reach_the_next_request(serve) -> None:
    """The start of a stray reply after a complete one (a status line, a header) retires the
    connection: left there, it would be read as the head of the next caller's reply."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Evil: 1")
        await writer.drain()
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    raw, fast = await serve(answer), client()
    assert await get(fast, raw) == (200, b"ok", {})
    assert await get(fast, raw) == (200, b"ok", {})
    assert raw.connections == 2
    await fast.close()


async def test_a_connection_given_back_at_the_cap_goes_to_a_waiting_request(serve) -> None:
    """At the cap, a kept-alive connection given back goes to a request waiting for one,
    instead of idling while that request times out."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    raw, fast = await serve(answer), client(timeout=1.0, max_connections=1)
    replies = await asyncio.gather(*(get(fast, raw) for _ in range(3)))
    assert [reply[:2] for reply in replies] == [(200, b"ok")] * 3
    assert raw.connections == 1 and consistent(fast)
    await fast.close()


async def test_a_connection_given_back_at_the_cap_makes_room_for_another_member(serve) -> None:
    """At the cap, a connection given back while only other members' requests wait is closed,
    and its slot goes to the first of them."""

    async def slow_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    first, second = await serve(slow_hello), await serve(keep_alive_hello)
    fast = client(timeout=1.0, max_connections=1)
    replies = await asyncio.gather(get(fast, first), get(fast, second))
    assert [reply[:2] for reply in replies] == [(200, b"ok"), (200, b"hello")]
    assert consistent(fast)
    await fast.close()


async def test_a_request_cancelled_while_waiting_for_a_slot_leaves_the_queue(serve) -> None:
    """A request cancelled while queued for a slot leaves no trace: the next connection given
    back goes idle."""

    async def slow_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    raw, fast = await serve(slow_hello), client(timeout=1.0, max_connections=1)
    first = asyncio.create_task(get(fast, raw))
    await asyncio.sleep(0.02)
    queued = asyncio.create_task(get(fast, raw))
    await asyncio.sleep(0.02)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert (await first)[:2] == (200, b"ok")
    assert len(fast.idle[raw.member.url]) == 1 and consistent(fast)
    await fast.close()


async def test_a_request_that_waits_too_long_for_a_slot_is_a_504(serve) -> None:
    """Every slot busy for longer than `timeout`: GatewayTimeout, and the queue is left clean."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        await reader.read()

    raw, fast = await serve(answer), client(timeout=0.3, max_connections=1)
    busy = await fast.send(raw.member, "GET", "/", CIMultiDict(), b"")  # holds the one slot
    with pytest.raises(GatewayTimeout, match="no free connection"):
        await get(fast, raw)
    assert busy.stream is not None and not fast.waiters
    await busy.stream.aclose()
    assert consistent(fast)
    await fast.close()


async def test_the_timeout_bounds_the_whole_exchange_slot_wait_included(serve) -> None:
    """Time spent waiting for a slot counts against `timeout`, as it did with aiohttp's total
    timeout: the wait and the exchange after it do not get `timeout` each."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        if head.startswith(b"GET /stream "):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3000000\r\n\r\n" + b"a" * 1000)
        else:
            await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    raw, fast = await serve(answer), client(timeout=0.4, max_connections=1)
    busy = await fast.send(raw.member, "GET", "/stream", CIMultiDict(), b"")
    assert busy.stream is not None

    async def free_the_slot_later() -> None:
        await asyncio.sleep(0.25)
        await busy.stream.aclose()  # type: ignore[union-attr]

    freeing = asyncio.create_task(free_the_slot_later())
    with pytest.raises(GatewayTimeout):
        await get(fast, raw)  # 0.25 s for a slot, then 0.3 s for the reply: over 0.4 s
    await freeing
    await fast.close()
