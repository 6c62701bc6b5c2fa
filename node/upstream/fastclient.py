"""A lean HTTP/1.1 client for plain-http upstreams: keep-alive connections and httptools.

aiohttp's client spends most of a proxied request's CPU on machinery a proxy does not use
(URL objects, timers per phase, tracing, cookie jars). This client writes the request in
one buffer, parses the reply with llhttp (httptools) and hands back a `Reply`: whole when
it is small and sized, streamed otherwise. One timer per exchange bounds it (`timeout`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress
from urllib.parse import urlsplit

from node.call import Reply
from node.errors import BadGateway, GatewayTimeout, Rejected, UpstreamUnreachable
from node.upstream.exchange import Exchange
from node.upstream.pool import HEAD_REPLY_DROP, REPLY_DROP, RequestHeaders, end_to_end
from node.upstream.settings import UpstreamSettings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # send Content-Length: 0 when empty
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
BYTES_AS_SENT = ("utf-8", "surrogateescape")


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
        # The loop it serves on, bound on first use: asyncio.get_running_loop() costs a
        # getpid() system call in Python 3.11, three of them a request here (strace).
        self.loop: asyncio.AbstractEventLoop | None = None

    async def send(
        self, member: object, method: str, path: str, headers: RequestHeaders, body: bytes
    ) -> Reply:
        url: str = member.url  # type: ignore[attr-defined]
        head = self.request_head(url, method, path, headers, body)
        loop = self.loop or self._bind_loop()
        # `timeout` bounds it all: the wait for a slot, connecting, the retry, the reply head.
        deadline = loop.time() + self.settings.timeout
        exchange = self.take_idle(url) or await self.acquire(url, deadline)
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

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self.loop = asyncio.get_running_loop()
        return self.loop

    def request_head(
        self, url: str, method: str, path: str, headers: RequestHeaders, body: bytes
    ) -> bytes:
        """The request line and headers, refused (400, nothing sent) if any of them holds a
        CR or LF: written as is, one would end a line the caller did not mean to end."""
        host = self.hosts.get(url)
        if host is None:
            host = self.hosts[url] = f"Host: {urlsplit(url).netloc}\r\n"
        text = f"{method} {path} HTTP/1.1\r\n{host}" + "".join(
            [f"{k}: {v}\r\n" for k, v in headers]
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
        timer = exchange.loop.call_at(deadline, exchange.time_out)
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
            exchange.headers, HEAD_REPLY_DROP if method == "HEAD" else REPLY_DROP
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

    def take_idle(self, url: str) -> Exchange | None:
        """A kept-alive connection to url, if one is idle (no coroutine: the common case)."""
        idle = self.idle.get(url)
        while idle:
            exchange = idle.pop()
            if not exchange.closed:
                return exchange
            self._forget(exchange)  # its connection died while idle
        return None

    async def acquire(self, url: str, deadline: float, fresh: bool = False) -> Exchange:
        exchange = None if fresh else self.take_idle(url)
        if exchange is not None:
            return exchange
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
                loop.create_connection(lambda: Exchange(url, timeout, self, loop), host, port),
                min(self.settings.connect_timeout, deadline - loop.time()),
            )
        except TimeoutError:
            raise GatewayTimeout(f"upstream {url} did not accept a connection in time") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"upstream {url} failed: {type(exc).__name__}") from exc
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
