"""A lean HTTP/1.1 client for plain-http upstreams: keep-alive connections and httptools.

aiohttp's client spends most of a proxied request's CPU on machinery a proxy does not use
(URL objects, timers per phase, tracing, cookie jars). This client writes the request in
one buffer, parses the reply with llhttp (httptools) and hands back a `Reply`: whole when
it is small and sized, streamed otherwise. One timer per exchange bounds it (`timeout`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from node.call import Reply
from node.config import UpstreamSettings
from node.errors import BadGateway, GatewayTimeout, Rejected
from node.upstream import HEAD_REPLY_DROP, READ_WHOLE_LIMIT, REPLY_DROP, end_to_end

PAUSE_AT = 4 * 64 * 1024  # bytes a streamed reply may buffer before reading pauses
MAX_HEAD = 64 * 1024  # bytes of reply headers an upstream may send; more is a 502
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # send Content-Length: 0 when empty
NO_BODY = frozenset({204, 304})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
BYTES_AS_SENT = ("utf-8", "surrogateescape")


class Exchange(asyncio.Protocol):
    """One keep-alive connection to one member; one request/reply at a time."""

    def __init__(self, url: str, timeout: float, pool: FastClient) -> None:
        self.url = url
        self.timeout = timeout
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.head: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.stream: ReplyStream | None = None
        self.complete = False
        self.keep_alive = False
        self.head_only = False
        self.in_use = False
        self.served = 0  # exchanges completed on this connection
        self.answered = False  # any byte of the current reply arrived
        self.head_size = 0  # bytes of header names and values in the current reply
        self.head_read = 0  # bytes read while its head was still incomplete

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # bytes no request asked for: the connection cannot be trusted
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised
            if not isinstance(cause, BadGateway):
                cause = BadGateway(f"upstream sent a malformed reply: {exc}")
            self.fail(cause)
        except httptools.HttpParserUpgrade:  # not an HttpParserError: a 101 nobody asked for
            self.fail(BadGateway("upstream switched protocols unasked"))
        else:
            if not self.status:  # the head is still incomplete (one long line, perhaps)
                self.head_read += len(data)
                if self.head_read > MAX_HEAD:
                    self.fail(BadGateway("upstream sent a reply head over 64 KiB"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.in_use:  # idle (or already given back): its slot is free at once
            self.pool.lost(self)
            return
        if self.complete:
            return
        if exc is None and self.stream is not None and self.read_until_close():
            self.complete = True  # a body without length or chunks ends with the connection
            self.stream.finish()
            self.give_back()
        else:
            self.fail(BadGateway("upstream closed the connection mid-reply"))

    def read_until_close(self) -> bool:
        framing = {k.lower() for k, _ in self.headers}
        return "content-length" not in framing and "transfer-encoding" not in framing

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # a reply after the reply, even its first byte: the connection goes
            raise BadGateway("upstream sent more than its reply")  # (the reply stands)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:  # past the head: a chunked body's trailers (dropped, as aiohttp does)
            return
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD:
            raise BadGateway("upstream sent over 64 KiB of headers")
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim reply (100 Continue): the real one follows
            self.headers = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        length = next((v for k, v in self.headers if k.lower() == "content-length"), None)
        if self.head_only:
            self.complete, self.keep_alive = True, False  # no body follows; don't reuse
            self._resolve_head()
        elif status not in NO_BODY and (length is None or int(length) > READ_WHOLE_LIMIT):
            self.stream = ReplyStream(self, self.timeout)
            self._resolve_head()

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self.stream.push(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status == 0:  # the end of an interim reply
            return
        self.complete = True
        if self.stream is not None:
            self.stream.finish()
            if self.stream.paused:  # the connection goes on without the stream, which must
                self.stream.paused = False  # not resume it later, under the next reply
                if self.transport is not None:
                    self.transport.resume_reading()
            self.done()
        else:
            self._resolve_head()

    def _resolve_head(self) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        elif self.stream is not None:
            self.stream.fail(exc)
        self.close()

    def close(self) -> None:
        """Drop the connection now: what is still unwritten (a request body) is not wanted."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def done(self) -> None:
        """The exchange is over: back to the idle list if the connection can go on. Not if the
        reply came before the request body was all written: the upstream would read the rest
        of it as the next request (nginx's keepalive rule too)."""
        transport = self.transport
        if (
            not (self.complete and self.keep_alive)
            or self.closed
            or transport is None
            or transport.get_write_buffer_size()
        ):
            self.close()
        self.give_back()

    def give_back(self) -> None:
        if self.in_use:  # once per exchange, whichever path ends it first
            self.in_use = False
            self.served += 1
            self.pool.release(self)

    def time_out(self) -> None:
        self.fail(GatewayTimeout(f"upstream {self.url} timed out"))

    def send(self, head: bytes, body: bytes, head_only: bool) -> None:
        self.head = asyncio.get_running_loop().create_future()
        self.status, self.headers, self.body = 0, [], []
        self.stream, self.complete, self.keep_alive = None, False, False
        self.head_only = head_only
        self.in_use, self.answered = True, False
        self.head_size = self.head_read = 0
        assert self.transport is not None
        if len(body) < 65536:
            self.transport.write(head + body)
        else:
            self.transport.write(head)
            self.transport.write(body)


class ReplyStream:
    """A reply body passed through as it arrives; reading pauses while the client lags."""

    def __init__(self, exchange: Exchange, timeout: float) -> None:
        self.exchange = exchange
        self.timeout = timeout  # seconds the upstream may stay silent mid-body
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.on_close: Callable[[], None] | None = None
        self._closed = False

    def push(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > PAUSE_AT and not self.paused and self.exchange.transport is not None:
            self.paused = True
            self.exchange.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, exc: Exception) -> None:
        if not self.ended:  # a body that arrived whole stays whole
            self.error = exc
            self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= PAUSE_AT // 2:
                    self.paused = False
                    if self.exchange.transport is not None:
                        self.exchange.transport.resume_reading()
                yield chunk
            elif self.error is not None:
                raise self.error
            elif self.ended:
                return
            else:
                self.waiter = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.wait_for(self.waiter, self.timeout)
                except TimeoutError:
                    self.exchange.close()
                    raise GatewayTimeout("upstream stalled mid-response") from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.ended:  # the client left early: this connection cannot be reused
            self.exchange.close()
            self.exchange.give_back()
        if self.on_close is not None:
            self.on_close()


class FastClient:
    """The `UpstreamClient` for http:// members (https:// pools keep `AiohttpClient`)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.idle: dict[str, list[Exchange]] = {}
        self.free = settings.max_connections  # slots no open connection holds
        self.open: set[Exchange] = set()
        # Requests waiting for a slot, first come first served: (url, future, fresh). The
        # future gets a kept-alive connection to url given back (unless fresh), or None: a
        # slot to connect with.
        self.waiters: deque[tuple[str, asyncio.Future[Exchange | None], bool]] = deque()
        self.hosts: dict[str, str] = {}  # url -> its Host line

    async def send(
        self, member: object, method: str, path: str, headers: CIMultiDict[str], body: bytes
    ) -> Reply:
        url: str = member.url  # type: ignore[attr-defined]
        head = self.request_head(url, method, path, headers, body)
        # `timeout` bounds it all: the wait for a slot, connecting, the retry, the reply head.
        deadline = asyncio.get_running_loop().time() + self.settings.timeout
        exchange = await self.acquire(url, deadline)
        reused = exchange.served > 0
        try:
            return await self.exchange(exchange, method, head, body, deadline)
        except BadGateway:
            # A kept-alive connection the upstream closed just as we used it (its idle
            # timeout): nothing was answered, so an idempotent request goes again, once, on a
            # new connection (the other idle ones may be as stale).
            if not reused or exchange.answered or method not in IDEMPOTENT:
                raise
        exchange = await self.acquire(url, deadline, fresh=True)
        return await self.exchange(exchange, method, head, body, deadline)

    def request_head(
        self, url: str, method: str, path: str, headers: CIMultiDict[str], body: bytes
    ) -> bytes:
        """The request line and headers, refused (400, nothing sent) if any of them holds a
        CR or LF: written as is, one would end a line the caller did not mean to end."""
        host = self.hosts.get(url)
        if host is None:
            host = self.hosts[url] = f"Host: {urlsplit(url).netloc}\r\n"
        text = f"{method} {path} HTTP/1.1\r\n{host}" + "".join(
            [f"{k}: {v}\r\n" for k, v in headers.items()]
        )
        lines = len(headers) + 2
        if text.count("\n") != lines or text.count("\r") != lines:
            raise Rejected("a request line or header holds CR or LF: not forwarded")
        if body or method in BODY_METHODS:
            text += f"Content-Length: {len(body)}\r\n"
        try:
            # aiohttp decoded the client's bytes as UTF-8 with surrogateescape: this restores them.
            return (text + "\r\n").encode(*BYTES_AS_SENT)
        except UnicodeEncodeError:
            raise Rejected("a request line or header cannot be encoded: not forwarded") from None

    async def exchange(
        self, exchange: Exchange, method: str, head: bytes, body: bytes, deadline: float
    ) -> Reply:
        timer = asyncio.get_running_loop().call_at(deadline, exchange.time_out)
        try:
            exchange.send(head, body, method == "HEAD")
            await exchange.head  # type: ignore[misc]
        except BaseException:
            exchange.close()
            exchange.give_back()
            raise
        finally:
            timer.cancel()
        reply_headers = end_to_end(
            CIMultiDict(exchange.headers), HEAD_REPLY_DROP if method == "HEAD" else REPLY_DROP
        )
        stream = exchange.stream
        if stream is not None:
            length = reply_headers.get("Content-Length") or next(
                (v for k, v in exchange.headers if k.lower() == "content-length"), None
            )
            if length is not None:
                reply_headers["Content-Length"] = length
            return Reply(exchange.status, b"", reply_headers, stream=stream)
        exchange.done()
        return Reply(exchange.status, b"".join(exchange.body), reply_headers)

    async def acquire(self, url: str, deadline: float, fresh: bool = False) -> Exchange:
        idle = None if fresh else self.idle.get(url)
        while idle:
            exchange = idle.pop()
            if not exchange.closed:
                return exchange
            self._forget(exchange)  # its connection died while idle
        if not self.free:
            self._evict()  # at the cap: an idle connection (to any member) makes room
        if self.free:
            self.free -= 1
        else:
            handed = await self._wait(url, deadline, fresh)
            if handed is not None:  # a kept-alive connection to url, given back by a request
                if not handed.closed:
                    return handed
                return await self.acquire(url, deadline, fresh)  # it closed on its way: again
        try:
            return await self.connect(url, deadline)
        except BaseException:
            self._free_slot()
            raise

    async def _wait(self, url: str, deadline: float, fresh: bool) -> Exchange | None:
        """Queue for a slot until `deadline`: a connection to url given back, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Exchange | None] = loop.create_future()
        entry = (url, future, fresh)
        self.waiters.append(entry)
        timer = loop.call_at(deadline, self._expire, entry)
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():  # still queued, or skipped as cancelled
                with suppress(ValueError):
                    self.waiters.remove(entry)
            elif future.exception() is None:  # handed one just as the request was cancelled
                self._pass_on(future.result())
            raise
        finally:
            timer.cancel()

    def _expire(self, entry: tuple[str, asyncio.Future[Exchange | None], bool]) -> None:
        url, future, _ = entry
        if not future.done():
            self.waiters.remove(entry)
            future.set_exception(GatewayTimeout(f"no free connection to {url} in time"))

    def _pass_on(self, handed: Exchange | None) -> None:
        if handed is None:
            self._free_slot()
        else:
            self.release(handed)

    def _free_slot(self) -> None:
        """A slot comes free: the first request waiting gets it, else it is counted free."""
        while self.waiters:
            future = self.waiters.popleft()[1]
            if not future.done():
                future.set_result(None)
                return
        self.free += 1

    async def connect(self, url: str, deadline: float) -> Exchange:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        timeout = self.settings.timeout
        loop = asyncio.get_running_loop()
        try:
            _, exchange = await asyncio.wait_for(
                loop.create_connection(lambda: Exchange(url, timeout, self), host, port),
                min(self.settings.connect_timeout, deadline - loop.time()),
            )
        except TimeoutError:
            raise GatewayTimeout(f"upstream {url} did not accept a connection in time") from None
        except OSError as exc:
            raise BadGateway(f"upstream {url} failed: {type(exc).__name__}") from exc
        self.open.add(exchange)
        return exchange

    def release(self, exchange: Exchange) -> None:
        if exchange.closed:
            self._forget(exchange)
        elif self.waiters:
            self._hand_over(exchange)
        else:
            self.idle.setdefault(exchange.url, []).append(exchange)

    def _hand_over(self, exchange: Exchange) -> None:
        """At the cap, a connection given back goes to the first request waiting for its
        member; when they all wait for other members, it closes and its slot goes instead."""
        for entry in self.waiters:
            url, future, fresh = entry
            if url == exchange.url and not fresh and not future.done():
                self.waiters.remove(entry)
                future.set_result(exchange)
                return
        exchange.close()
        self._forget(exchange)

    def lost(self, exchange: Exchange) -> None:
        """An idle connection closed (the upstream's idle timeout, a reset): drop it now."""
        idle = self.idle.get(exchange.url)
        if idle and exchange in idle:
            idle.remove(exchange)
        self._forget(exchange)

    def _evict(self) -> None:
        """Close an idle connection (its member's longest-idle), whichever member, to free a slot:
        the cap bounds open connections, and idle ones must not starve a busy member."""
        for idle in self.idle.values():
            if idle:
                exchange = idle.pop(0)
                exchange.close()
                self._forget(exchange)
                return

    def _forget(self, exchange: Exchange) -> None:
        if exchange in self.open:
            self.open.discard(exchange)
            self._free_slot()

    async def close(self) -> None:
        for exchange in list(self.open):
            exchange.close()
        self.open.clear()
        self.idle.clear()
        for _, future, _ in self.waiters:
            if not future.done():
                future.set_exception(BadGateway("the upstream client is closed"))
        self.waiters.clear()
