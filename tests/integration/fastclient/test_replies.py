"""The lean upstream client's reading and writing against odd upstreams: interim replies,
bodies ended by close, malformed replies, stray bytes after a reply, trailers, oversized
heads, CR/LF in a request head, early replies and unasked protocol switches."""

from __future__ import annotations

import asyncio

import pytest

from node.errors import BadGateway, GatewayTimeout, Rejected

from .upstreams import (
    LARGE_STARTED,
    OK,
    Serve,
    client,
    consistent,
    get,
    keep_alive_hello,
    keep_replying,
    read_request,
    replying,
)

# 1000 header lines of ~77 bytes: past the 64 KiB bound on a reply head.
PAD_64K = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"v" * 60) for i in range(1000))


async def test_skips_an_interim_100_continue(serve: Serve) -> None:
    """A 100 Continue before the real reply is not mistaken for it."""

    answer = replying(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )

    fast = client()
    assert (await get(fast, await serve(answer)))[:2] == (201, b"ok")
    await fast.close()


async def test_a_body_ended_by_close_is_streamed_whole(serve: Serve) -> None:
    """HTTP/1.0-style: no length, no chunks; the body ends when the upstream closes."""

    answer = replying(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"z" * 100_000, close=True)

    fast = client()
    status, body, _ = await get(fast, await serve(answer))
    assert (status, len(body)) == (200, 100_000)
    await fast.close()


async def test_a_malformed_reply_is_a_502(serve: Serve) -> None:
    """Garbage instead of a status line: BadGateway, never a crash."""

    answer = replying(b"SMTP READY\r\n\r\n")

    fast = client()
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    await fast.close()


async def test_a_stall_mid_body_is_a_504(serve: Serve) -> None:
    """Headers, some of a large body, then silence: the stream raises GatewayTimeout."""

    answer = replying(LARGE_STARTED)  # and no more of the body

    fast = client(timeout=0.3)
    with pytest.raises(GatewayTimeout):
        await get(fast, await serve(answer))
    await fast.close()


async def test_head_keeps_content_length_and_does_not_wait_for_a_body(serve: Serve) -> None:
    """HEAD: the headers describe the GET body; no body is awaited."""

    answer = replying(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")

    fast = client()
    status, body, headers = await get(fast, await serve(answer), "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", "1234")
    await fast.close()


async def test_a_second_reply_after_the_first_is_not_mixed_into_it(serve: Serve) -> None:
    """Bytes after a complete reply (a reply longer than promised) are not taken into it, and
    the connection they came on is not reused."""

    evil = b"HTTP/1.1 500 Oops\r\nX-Evil: 1\r\nContent-Length: 4\r\n\r\nevil"
    raw, fast = await serve(keep_replying(OK + evil)), client()
    assert await get(fast, raw) == (200, b"ok", {})
    assert await get(fast, raw) == (200, b"ok", {})
    assert raw.connections == 2
    await fast.close()


async def test_stray_bytes_after_a_streamed_reply_do_not_break_it(serve: Serve) -> None:
    """A chunked reply followed by stray bytes is passed through whole, without an error."""

    answer = replying(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\n\r\n"
    )

    fast = client()
    assert await get(fast, await serve(answer)) == (200, b"ok", {})
    assert consistent(fast)
    await fast.close()


async def test_trailers_do_not_become_headers(serve: Serve) -> None:
    """A chunked body's trailer fields are dropped (as aiohttp does), never sent as headers."""

    answer = replying(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: 1\r\n\r\n"
        b"2\r\nok\r\n0\r\nSet-Cookie: session=evil\r\nX-Trailer: 1\r\n\r\n"
    )

    fast = client()
    assert await get(fast, await serve(answer)) == (200, b"ok", {"X-Up": "1"})
    await fast.close()


async def test_a_header_block_over_64_kib_is_a_502(serve: Serve) -> None:
    """An upstream that sends more than 64 KiB of headers gets BadGateway."""

    answer = replying(b"HTTP/1.1 200 OK\r\n" + PAD_64K + b"Content-Length: 2\r\n\r\nok")

    fast = client()
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_an_endless_header_value_is_a_502_before_the_timeout(serve: Serve) -> None:
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
async def test_cr_or_lf_in_the_request_head_is_refused_unsent(
    serve: Serve, path: str, headers: dict[str, str]
) -> None:
    """A request line or header with CR or LF in it is refused, and nothing is written."""
    raw, fast = await serve(keep_alive_hello), client()
    with pytest.raises(Rejected) as caught:
        await fast.send(raw.member, "GET", path, list(headers.items()), b"")
    assert caught.value.status == 400
    assert raw.connections == 0 and consistent(fast)
    await fast.close()


async def test_an_unasked_protocol_switch_is_a_502_without_a_loop_error(serve: Serve) -> None:
    """A 101 Switching Protocols the node never asked for is BadGateway, handled in the
    client rather than by the event loop's fatal-error path."""

    answer = replying(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )

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


async def test_a_partial_stray_reply_does_not_reach_the_next_request(serve: Serve) -> None:
    """The start of a stray reply after a complete one (a status line, a header) retires the
    connection: left there, it would be read as the head of the next caller's reply."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Evil: 1")
        await writer.drain()
        while True:
            await read_request(reader)
            writer.write(OK)
            await writer.drain()

    raw, fast = await serve(answer), client()
    assert await get(fast, raw) == (200, b"ok", {})
    assert await get(fast, raw) == (200, b"ok", {})
    assert raw.connections == 2
    await fast.close()


async def test_a_reply_before_the_body_is_sent_retires_the_connection(serve: Serve) -> None:
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
    early = await fast.send(raw.member, "POST", "/early", [], smuggled)
    assert early.body == b"/early"
    assert (await get(fast, raw))[:2] == (200, b"/x")
    await fast.close()


async def test_a_retired_connection_is_dropped_not_flushed(serve: Serve) -> None:
    """A connection retired with request body still unwritten is dropped: the upstream never
    gets the rest of that body."""
    received: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
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
    assert (await fast.send(raw.member, "POST", "/", [], body)).body == b"ok"
    for _ in range(100):
        if received:
            break
        await asyncio.sleep(0.05)
    assert received and received[0] < len(body)
    await fast.close()


async def test_a_body_cut_short_is_a_502_and_frees_its_slot_once(serve: Serve) -> None:
    """The upstream closes mid-body: the stream raises BadGateway, one slot comes back."""

    answer = replying(LARGE_STARTED, close=True)

    fast = client()
    with pytest.raises(BadGateway):
        await get(fast, await serve(answer))
    await asyncio.sleep(0.01)
    assert not fast.open and consistent(fast)
    await fast.close()
