"""The node's connection handler: aiohttp's, with the header and body timeouts and the
connection cap it lacks, and the node's JSON for the errors aiohttp answers itself.

aiohttp (pinned to 3.14) takes no handler class: `EdgeRunner` makes the app's `Server` as
`AppRunner` does, then an `EdgeServer` with the same arguments whose connections are
`EdgeHandler`s. Per request only `make_request` runs, in place of the app's own factory;
the timers are per connection, or armed only while a body is awaited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import BaseTimerContext
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict

from node.arrival import PHASE, TURN
from node.call import JSON_TYPE
from node.config import NodeSettings
from node.edge_loop import RequestLoop
from node.edge_replies import parse_error_detail, refusal
from node.edge_stats import EDGE, EdgeStats, connection_cap, fd_bound
from node.errors import Rejected, RequestTimeout
from node.fastpath import FAST_ROUTES
from node.wire import CONNECTION, CONTENT_TYPE, X_NODE, ReadyResponse

log = logging.getLogger("scalenode.http")

CAP_WARNING_EVERY = 10.0  # seconds between "cap reached" warnings under a flood
HTTP_1 = (HttpVersion10, HttpVersion11)
TRANSFER_ENCODING = hdrs.TRANSFER_ENCODING
# Transfer codings the node decodes: chunked (llhttp), and identity, which means none.
KNOWN_CODINGS = frozenset(("chunked", "identity"))


def client_of(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class BodyTimer(BaseTimerContext):
    """aiohttp's StreamReader enters its timer around each wait for more body bytes: this
    one calls `stalled` when no byte came for `seconds` (time between reads, not in all)."""

    __slots__ = ("_handle", "_loop", "seconds", "stalled")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, stalled) -> None:
        self._loop = loop
        self.seconds = seconds
        self.stalled = stalled
        self._handle: asyncio.TimerHandle | None = None

    def __enter__(self) -> BaseTimerContext:
        self._handle = self._loop.call_later(self.seconds, self.stalled)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class EdgeHandler(RequestLoop):
    """One connection. Over the cap it is refused at once; its first request head must be
    in within node.header_timeout. That timer runs from connect and, when it fires, looks
    whether a head came (aiohttp's keep-alive timer works so too): nothing per request."""

    __slots__ = ("admitted", "arrived", "body_timer", "head_timer")

    _manager: EdgeServer | None

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.admitted = False
        # perf_counter() when the bytes of the request not yet being answered reached the
        # node, as node.arrival estimates it (within half a loop turn's busy time): a
        # request's latency counts from here, so time its bytes waited in the kernel and
        # for the loop (a busy node's queue) is in it, as the client sees it (node.http
        # reads it).
        self.arrived = 0.0
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: BodyTimer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = cast(EdgeServer, self._manager)
        if server.stats.open >= server.cap:
            self._force_close = True  # nothing it sends is read
            server.refused(cast(asyncio.Transport, transport))
            return
        self.admitted = True
        server.stats.open += 1
        super().connection_made(transport)
        loop = self._loop
        self.head_timer = loop.call_later(server.header_timeout, self.head_timed_out)
        self.body_timer = BodyTimer(loop, server.body_timeout, self.body_stalled)

    def data_received(self, data: bytes) -> None:
        if self._current_request is None and not self._messages:  # a new request begins
            loop = self._loop
            arrived = PHASE.get(loop)  # this poll phase's estimate, once one read made it
            self.arrived = TURN.arrival(loop) if arrived is None else arrived
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.admitted:
            self.admitted = False
            cast(EdgeServer, self._manager).stats.open -= 1
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def refuse(self, status: int, code: str, detail: str) -> None:
        """Answer `status` with the node's JSON and close: there is no request to answer."""
        transport = self.transport
        if transport is not None and self._manager is not None:
            transport.write(refusal(status, code, detail, self._manager.node))
        self.force_close()

    def head_timed_out(self) -> None:
        self.head_timer = None
        server = self._manager
        if server is None or self.transport is None or self._request_count:
            return  # closed, or a head came (a parse error counts: it was answered)
        server.stats.head_timeouts += 1
        seconds = server.header_timeout
        log.info(
            "no whole request head from %s within %g s: answered 408, closed",
            client_of(self.peername),
            seconds,
        )
        self.refuse(408, "request_timeout", f"no whole request head within {seconds:g} s")

    def body_stalled(self) -> None:
        """The body being read sent nothing for node.body_timeout: its read fails with a
        408 (the route answers it), and the connection closes after that reply."""
        request = self._current_request
        # The body node.fastpath reads, or the one of the request aiohttp answers.
        body = self.reading or (request.content if request is not None else None)
        server = self._manager
        if body is None or server is None or self.transport is None:
            return  # between requests: aiohttp's lingering read has its own bound
        server.stats.body_timeouts += 1
        seconds = server.body_timeout
        log.info(
            "request body from %s sent nothing for %g s: answered 408, closed",
            client_of(self.peername),
            seconds,
        )
        self._lingering_time = 0.0  # aiohttp would wait to read the rest of it
        self.close()
        timeout = RequestTimeout(
            f"the request body sent nothing for {seconds:g} s", headers={"Connection": "close"}
        )
        body.set_exception(timeout)

    def refuse_version(self, version: tuple[int, int]) -> None:
        """HTTP/0.9 (a request line without a version: no headers, no status line back) or
        HTTP/2.0 in text, both of which llhttp parses: 400 and 505 as nginx answers them."""
        server = cast(EdgeServer, self._manager)
        server.stats.malformed += 1
        status = 400 if version < HttpVersion10 else 505
        log.info(
            "HTTP/%d.%d request from %s: answered %d, closed",
            *version,
            client_of(self.peername),
            status,
        )
        code = "bad_request" if status == 400 else "http_version_not_supported"
        self.refuse(status, code, "only HTTP/1.0 and HTTP/1.1 are served")

    def refuse_coding(self, coding: str) -> None:
        """RFC 9112 section 6.1: a request with a transfer coding the server does not
        understand SHOULD get 501; closed, as the body's framing cannot be trusted."""
        server = cast(EdgeServer, self._manager)
        server.stats.malformed += 1
        log.info(
            "request from %s with Transfer-Encoding %r: answered 501, closed",
            client_of(self.peername),
            coding[:32],
        )
        self.refuse(501, "not_implemented", "only the chunked transfer coding is understood")

    def handle_error(  # type: ignore[override]
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> ReadyResponse:
        """aiohttp's reply to a request it could not parse or whose handler raised: the
        node's JSON instead of text/plain, with nothing of the request in it."""
        if request.writer.output_size > 0:  # as aiohttp: a reply is already on its way
            raise ConnectionError("the reply had begun; no error reply can follow it")
        server = cast(EdgeServer, self._manager)
        headers = CIMultiDict({CONTENT_TYPE: JSON_TYPE, X_NODE: server.node})
        if isinstance(exc, HttpProcessingError):
            server.stats.malformed += 1
            code, detail = "bad_request", parse_error_detail(exc)
            headers[CONNECTION] = "close"
            log.info(
                "malformed request from %s: answered %d: %s (%s)",
                request.remote,
                status,
                detail,
                type(exc).__name__,
            )
        elif isinstance(exc, Rejected):  # a body timeout in a handler that is not a route's
            status, code, detail = exc.status, exc.code, exc.detail
            headers.update(exc.headers)
        elif status == 504:
            code, detail = "gateway_timeout", "the handler timed out"
            log.warning("%s %s timed out (504)", request.method, request.path)
        else:
            status, code, detail = 500, "internal", "the handler failed; see the node's log"
            log.error("%s %s failed", request.method, request.path, exc_info=exc)
        return ReadyResponse(status, headers, orjson.dumps({"error": code, "detail": detail}))


def unknown_coding(lines: list[str]) -> str | None:
    """The first transfer coding of a chunked request that the node cannot decode (gzip,
    say): llhttp takes the chunks off and would hand on still-coded bytes as the body."""
    for line in lines:
        for coding in line.split(","):
            name = coding.split(";", 1)[0].strip().lower()
            if name and name not in KNOWN_CODINGS:
                return name
    return None


RequestFactory = Callable[
    [RawRequestMessage, StreamReader, EdgeHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.Request,
]


def request_factory(app: web.Application, loop: asyncio.AbstractEventLoop) -> RequestFactory:
    """The app's request factory (Application._make_request, same arguments), plus what the
    edge needs per request: a body still to come gets the body timer, and a version other
    than HTTP/1.x is refused. Callgrind counts no more instructions than for the app's own
    factory (a closure, not a bound method, pays for the checks)."""
    # What Application._make_request passes; aiohttp 3.14.4 added client_max_fields.
    limits = {"client_max_size": app._client_max_size}
    if hasattr(app, "_client_max_fields"):
        limits["client_max_fields"] = app._client_max_fields
    request_class = web.Request

    def make_request(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: EdgeHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.Request:
        if payload is not EMPTY_PAYLOAD:
            payload._timer = protocol.body_timer
        request = request_class(message, payload, protocol, writer, task, loop, **limits)
        # The request's slot, not message.version: a Cython attribute costs twice as much.
        version = request._version
        if version is not HttpVersion11 and version not in HTTP_1:
            protocol.refuse_version(version)
            # Ends the connection's task as aiohttp's own keep-alive timeout does (its
            # force_close cancels the task's wait): no route sees the request.
            raise asyncio.CancelledError
        if message.chunked and message.headers.get(TRANSFER_ENCODING) != "chunked":
            coding = unknown_coding(message.headers.getall(TRANSFER_ENCODING))
            if coding is not None:
                protocol.refuse_coding(coding)
                raise asyncio.CancelledError
        return request

    return make_request


class EdgeServer(web.Server):
    """aiohttp's Server, handing each connection to an EdgeHandler."""

    def __init__(self, made: web.Server, app: web.Application, node: NodeSettings) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(
            made.request_handler,
            request_factory=request_factory(app, loop),
            handler_cancellation=made.handler_cancellation,
            loop=loop,
            **made._kwargs,  # what AppRunner and the app resolved: keepalive_timeout, debug, ...
        )
        self.node = node.name
        self.header_timeout = node.header_timeout
        self.body_timeout = node.body_timeout
        self.cap = connection_cap(node.max_connections)
        self.stats: EdgeStats = app[EDGE]
        self.stats.cap = self.cap
        self._next_warning = 0.0
        # The routes node.fastpath serves (none if the app has none), and whether replies
        # say `Connection: close` now (node.drain sets it).
        self.routes = app.get(FAST_ROUTES)
        self.closing = False
        bound = fd_bound()
        if node.max_connections > bound:
            log.warning(
                "node.max_connections %d is over the %d the open-file limit leaves room for "
                "(ulimit -n); past it, accept() fails instead of answering 503",
                node.max_connections,
                bound,
            )

    def __call__(self) -> EdgeHandler:
        return EdgeHandler(self, loop=self._loop, **self._kwargs)

    def refused(self, transport: asyncio.Transport) -> None:
        """A connection over the cap: a 503 and closed, counted, warned of now and then."""
        self.stats.refused += 1
        detail = f"the node holds its maximum of {self.cap} connections; retry shortly"
        reply = refusal(503, "too_many_connections", detail, self.node, "Retry-After: 1\r\n")
        transport.write(reply)
        transport.close()
        now = self._loop.time()
        if now >= self._next_warning:
            self._next_warning = now + CAP_WARNING_EVERY
            log.warning(
                "connection cap of %d reached: refusing connections with 503 (%d so far)",
                self.cap,
                self.stats.refused,
            )


class EdgeRunner(web.AppRunner):
    """AppRunner serving the app through an EdgeServer (node.keepalive_timeout is aiohttp's)."""

    __slots__ = ("_node",)

    def __init__(self, app: web.Application, node: NodeSettings, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=node.keepalive_timeout, **kwargs)
        self._node = node

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # runs the app's startup, freezes it
        return EdgeServer(made, self.app, self._node)
