"""The lean upstream client's connections: keep-alive reuse and its races, the connection cap
(slots given back, handed over, never leaked) when requests queue, time out or are
cancelled, and one timeout over the whole exchange."""

from __future__ import annotations

import asyncio

import pytest

from node.errors import GatewayTimeout
from node.upstream.exchange import PAUSE_AT

from .upstreams import (
    LARGE_STARTED,
    OK,
    Serve,
    chunk,
    client,
    consistent,
    get,
    keep_alive_hello,
    keep_replying,
    read_request,
    replying,
)


async def test_keeps_one_connection_alive_across_requests(serve: Serve) -> None:
    """Ten sequential requests travel over one upstream connection."""
    raw, fast = await serve(keep_alive_hello), client()
    for _ in range(10):
        assert await get(fast, raw) == (200, b"hello", {"X-Up": "1"})
    assert raw.connections == 1
    await fast.close()


async def test_a_silent_upstream_times_out_and_frees_its_slot(serve: Serve) -> None:
    """No answer within `timeout`: 504, and the connection does not count against the cap."""

    answer = replying(b"")  # reads the request, never answers

    fast = client(timeout=0.2)
    raw = await serve(answer)
    with pytest.raises(GatewayTimeout):
        await get(fast, raw)
    assert not fast.open
    await fast.close()


async def test_a_connection_closed_while_idle_is_replaced(serve: Serve) -> None:
    """The upstream drops a kept-alive connection between requests: the next one reconnects."""

    answer = replying(OK, close=True)

    raw, fast = await serve(answer), client()
    assert (await get(fast, raw))[:2] == (200, b"ok")
    await asyncio.sleep(0.05)
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert raw.connections == 2
    await fast.close()


async def test_a_keep_alive_race_is_retried_on_a_new_connection(serve: Serve) -> None:
    """The upstream closes a kept-alive connection as the next request arrives (its idle
    timeout): an idempotent request goes again on a fresh connection, no 502."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # the second request: closed unanswered

    raw, fast = await serve(answer), client()
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert raw.connections == 2
    await fast.close()


async def test_idle_connections_to_one_member_do_not_starve_another(serve: Serve) -> None:
    """At the connection cap, an idle connection to one member makes room for another."""
    first, second = await serve(keep_alive_hello), await serve(keep_alive_hello)
    fast = client(timeout=0.5, max_connections=1)
    assert (await get(fast, first))[0] == 200
    assert (await get(fast, second))[0] == 200
    assert consistent(fast)
    await fast.close()


async def test_a_connection_closed_while_idle_leaves_the_pool_at_once(serve: Serve) -> None:
    """The upstream drops an idle kept-alive connection: its slot is free without a request."""

    answer = replying(OK, close=True)

    fast = client()
    assert (await get(fast, await serve(answer)))[:2] == (200, b"ok")
    await asyncio.sleep(0.05)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_reading_stays_paused_for_a_reply_on_a_reused_connection(serve: Serve) -> None:
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
    first = await fast.send(raw.member, "GET", "/1", [], b"")
    await asyncio.sleep(0.3)
    second = await fast.send(raw.member, "GET", "/2", [], b"")
    await asyncio.sleep(0.2)
    assert first.stream is not None and second.stream is not None and raw.connections == 1
    assert len(b"".join([part async for part in first.stream])) == 270_000
    await first.stream.aclose()
    await asyncio.sleep(0.2)
    assert second.stream.buffered < 4 * PAUSE_AT  # type: ignore[attr-defined]
    await second.stream.aclose()
    await fast.close()


async def test_a_request_cancelled_while_awaiting_its_reply_frees_its_slot(serve: Serve) -> None:
    """The client leaves while the upstream thinks: that connection is dropped, its slot freed."""

    answer = replying(b"")  # reads the request, never answers

    raw, fast = await serve(answer), client(max_connections=1)
    waiting = asyncio.create_task(get(fast, raw))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.01)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_a_stream_closed_early_frees_its_slot_once(serve: Serve) -> None:
    """The client leaves mid-body (the adapter may close twice): one slot comes back, once."""

    answer = replying(LARGE_STARTED)

    raw, fast = await serve(answer), client()
    reply = await fast.send(raw.member, "GET", "/", [], b"")
    assert reply.stream is not None
    await reply.stream.aclose()
    await reply.stream.aclose()
    await asyncio.sleep(0.01)
    assert not fast.open and consistent(fast)
    await fast.close()


async def test_the_retry_after_a_keep_alive_race_takes_a_new_connection(serve: Serve) -> None:
    """When every idle connection was closed by the upstream at once, the one retry goes on a
    new connection, not on the next idle one, which is as stale as the first."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.05)  # so that two requests at once take two connections
        writer.write(OK)
        await writer.drain()
        await read_request(reader)  # any later request on this connection: closed unanswered

    raw, fast = await serve(answer), client()
    await asyncio.gather(get(fast, raw), get(fast, raw))
    assert (await get(fast, raw))[:2] == (200, b"ok")
    assert raw.connections == 3
    await fast.close()


async def test_a_connection_given_back_at_the_cap_goes_to_a_waiting_request(serve: Serve) -> None:
    """At the cap, a kept-alive connection given back goes to a request waiting for one,
    instead of idling while that request times out."""

    raw = await serve(keep_replying(OK, delay=0.1))
    fast = client(timeout=1.0, max_connections=1)
    replies = await asyncio.gather(*(get(fast, raw) for _ in range(3)))
    assert [reply[:2] for reply in replies] == [(200, b"ok")] * 3
    assert raw.connections == 1 and consistent(fast)
    await fast.close()


async def test_a_connection_given_back_at_the_cap_makes_room_for_another_member(
    serve: Serve,
) -> None:
    """At the cap, a connection given back while only other members' requests wait is closed,
    and its slot goes to the first of them."""

    slow_hello = replying(OK, delay=0.1)

    first, second = await serve(slow_hello), await serve(keep_alive_hello)
    fast = client(timeout=1.0, max_connections=1)
    replies = await asyncio.gather(get(fast, first), get(fast, second))
    assert [reply[:2] for reply in replies] == [(200, b"ok"), (200, b"hello")]
    assert consistent(fast)
    await fast.close()


async def test_a_request_cancelled_while_waiting_for_a_slot_leaves_the_queue(serve: Serve) -> None:
    """A request cancelled while queued for a slot leaves no trace: the next connection given
    back goes idle."""

    slow_hello = replying(OK, delay=0.1)

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


async def test_a_request_that_waits_too_long_for_a_slot_is_a_504(serve: Serve) -> None:
    """Every slot busy for longer than `timeout`: GatewayTimeout, and the queue is left clean."""

    answer = replying(LARGE_STARTED)

    raw, fast = await serve(answer), client(timeout=0.3, max_connections=1)
    busy = await fast.send(raw.member, "GET", "/", [], b"")  # holds the one slot
    with pytest.raises(GatewayTimeout, match="no free connection"):
        await get(fast, raw)
    assert busy.stream is not None and not fast.waiters
    await busy.stream.aclose()
    assert consistent(fast)
    await fast.close()


async def test_the_timeout_bounds_the_whole_exchange_slot_wait_included(serve: Serve) -> None:
    """Time spent waiting for a slot counts against `timeout`, as it did with aiohttp's total
    timeout: the wait and the exchange after it do not get `timeout` each."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        if head.startswith(b"GET /stream "):
            writer.write(LARGE_STARTED)
        else:
            await asyncio.sleep(0.3)
            writer.write(OK)
        await writer.drain()
        await reader.read()

    raw, fast = await serve(answer), client(timeout=0.4, max_connections=1)
    busy = await fast.send(raw.member, "GET", "/stream", [], b"")
    assert busy.stream is not None

    async def free_the_slot_later() -> None:
        await asyncio.sleep(0.25)
        await busy.stream.aclose()  # type: ignore[union-attr]

    freeing = asyncio.create_task(free_the_slot_later())
    with pytest.raises(GatewayTimeout):
        await get(fast, raw)  # 0.25 s for a slot, then 0.3 s for the reply: over 0.4 s
    await freeing
    await fast.close()
