"""One kept-alive connection to an upstream member (`Exchange`): the asyncio protocol, the
llhttp (httptools) callbacks that parse its replies, and `ReplyStream`, a reply body passed
through as it arrives. `node.upstream.fastclient` pools these connections."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httptools

from node.call import Call
from node.errors import BadGateway, GatewayTimeout
from node.trace import CURRENT_CALL
from node.upstream.pool import HOP_BY_HOP, READ_WHOLE_LIMIT

if TYPE_CHECKING:
    from node.upstream.fastclient import FastClient

PAUSE_AT = 4 * 64 * 1024  # bytes a streamed reply may buffer before reading pauses
MAX_HEAD = 64 * 1024  # bytes of reply headers an upstream may send; more is a 502
NO_BODY = frozenset({204, 304})
# Interim replies forwarded to the client (RFC 9110 section 15.2): not 100 Continue, which
# answers the node's own request (aiohttp answered the client's Expect itself), nor 101.
FORWARDED_INTERIM = range(102, 200)
INTERIM_DROP = HOP_BY_HOP | {"content-length"}
log = logging.getLogger("scalenode.upstream")


class Exchange(asyncio.Protocol):
    """One keep-alive connection to one member; one request/reply at a time."""

    def __init__(
        self, url: str, timeout: float, pool: FastClient, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.loop = loop
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
        # The call this exchange answers, if served over HTTP (node.trace.CURRENT_CALL):
        # its send_interim takes the upstream's 1xx replies to the client.
        self.interim: Call | None = None

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
        """RFC 9112 section 6.3: a reply without Content-Length whose Transfer-Encoding
        (if any) does not end in chunked is delimited by the connection's close."""
        codings = []
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-length":
                return False
            if lowered == "transfer-encoding":
                codings += [c.strip().lower() for c in value.split(",") if c.strip()]
        return not codings or codings[-1] != "chunked"

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
        try:
            # UTF-8, as aiohttp encodes what the node sends: a value's bytes go out as they
            # came (decoded as latin-1, `café` reached the client as `cafÃ©`).
            text = value.decode()
        except UnicodeDecodeError:  # not UTF-8: latin-1 keeps every byte a character
            text = value.decode("latin-1")
        self.headers.append((name.decode("latin-1"), text))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim reply: the real one follows
            if status in FORWARDED_INTERIM and hasattr(self.interim, "send_interim"):
                self.forward_interim(status)
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

    def forward_interim(self, status: int) -> None:
        """Hand a 1xx (its end-to-end fields) to the client's sink; nothing it does (a
        client gone, say) may break the exchange, whose final reply is still to come."""
        drop = INTERIM_DROP | {
            token.strip().lower()
            for name, value in self.headers
            if name.lower() == "connection"
            for token in value.split(",")
        }
        headers = [(name, value) for name, value in self.headers if name.lower() not in drop]
        try:
            self.interim.send_interim(status, headers)  # type: ignore[union-attr]
        except Exception:
            log.exception("forwarding a %d from %s to the client failed", status, self.url)

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
        self.head = self.loop.create_future()
        self.status, self.headers, self.body = 0, [], []
        self.stream, self.complete, self.keep_alive = None, False, False
        self.head_only = head_only
        self.in_use, self.answered = True, False
        self.interim = CURRENT_CALL.get()  # read here: in the task of the request it answers
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
                self.waiter = self.exchange.loop.create_future()
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
