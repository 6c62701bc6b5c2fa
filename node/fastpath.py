"""Route requests served straight from the parsed message: no web.Request, no task per
request, one write for the reply.

aiohttp wraps every request in a web.Request, a task of its own (on Python 3.11, with no
eager tasks, an extra turn of the loop), Application._handle and finish_response before
a route's pipeline runs: about a fifth of a proxied request's CPU (py-spy). A request
that needs none of it (`eligible`: HTTP/1.0 or 1.1, no upgrade, no Expect, no transfer
coding but chunked, a path in origin form, and no access log, which aiohttp writes) and
that the router gives to a route is answered here by the same pipeline (node.http's
`answer`, its body read by node.http's `read_body`), its reply framed by node.wire's rules.
Everything else (the dashboard, /metrics, 404s, the requests `eligible` turns away) goes
aiohttp's way through node.http's endpoint, which every route also has.

The pipeline runs in the connection's task: the request's CURRENT_CALL is reset when it is
answered, so nothing of one request is left to the next on the connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from yarl import URL

from node.call import Call, Handler, Reply
from node.errors import Rejected
from node.http import (
    BAD_PATH,
    CLIENT_CLOSED,
    ClientGone,
    answer,
    error_reply,
    has_dot_segment,
    read_body,
    reply_headers,
    stream_reply,
)
from node.metrics import RouteStats
from node.resources import Resources
from node.trace import CURRENT_CALL
from node.wire import encode, write_interim_to

if TYPE_CHECKING:
    from node.edge_loop import RequestLoop

log = logging.getLogger("scalenode.http")

HTTP_1 = (HttpVersion11, HttpVersion10)
CONTENT_LENGTH = hdrs.CONTENT_LENGTH
EXPECT = hdrs.EXPECT
HOST = hdrs.HOST
TRANSFER_ENCODING = hdrs.TRANSFER_ENCODING


@dataclass(frozen=True, slots=True)
class Route:
    """What the fast path needs of a route: its composed pipeline, stats, node name and
    body limit."""

    handler: Handler
    stats: RouteStats
    node: str
    max_body: int


@dataclass
class Routes:
    """The routes the fast path serves, by the aiohttp endpoint the router matches them to."""

    app: web.Application
    resources: Resources
    by_endpoint: dict[Any, Route] = field(default_factory=dict)

    def add(self, endpoint: Any, route: Route) -> None:
        self.by_endpoint[endpoint] = route

    def __bool__(self) -> bool:
        return bool(self.by_endpoint)


FAST_ROUTES = web.AppKey("fast_routes", Routes)


def eligible(message: Any) -> bool:
    """Whether a request can be served without aiohttp's request machinery: a parse error,
    HTTP/0.9 or 2.0, an upgrade, Expect (answered by aiohttp's expect handler), a transfer
    coding other than chunked alone (node.edge refuses unknown ones) and an absolute-form
    target go aiohttp's way."""
    if type(message) is not RawRequestMessage:
        return False
    headers = message.headers
    return (
        message.version in HTTP_1
        and not message.upgrade
        and EXPECT not in headers
        and (not message.chunked or headers.get(TRANSFER_ENCODING) == "chunked")
        and not message.url.absolute
    )


class Target:
    """What aiohttp's router reads of a request to resolve it: its URL and method."""

    __slots__ = ("method", "rel_url")

    def __init__(self, rel_url: URL, method: str) -> None:
        self.rel_url = rel_url
        self.method = method


class MessageCall(Call):
    """A Call over the parser's message: what it derives is read only when asked."""

    __slots__ = ("_message", "_protocol", "_resources", "replied")

    def __init__(
        self,
        message: RawRequestMessage,
        protocol: RequestLoop,
        route: str,
        params: Mapping[str, str],
        resources: Resources,
    ) -> None:
        self.method = message.method
        self.headers = message.headers
        self.params = params
        self.route = route
        self.body = b""
        self.shard = None
        self.added_headers = None
        self.peer = protocol.peername
        self._request_id = None
        self._traceparent = None
        self._query = None
        self._message = message
        self._protocol = protocol
        self._resources = resources
        self.replied = False  # any of the final reply written (no interim reply after it)

    @property
    def path(self) -> str:
        return self._message.url.path

    @property
    def raw_path(self) -> str:
        return self._message.url.raw_path

    @property
    def query_string(self) -> str:
        return self._message.url.raw_query_string

    @property
    def scheme(self) -> str:
        return "https" if self._protocol.ssl_context else "http"

    @property
    def host(self) -> str:
        """As aiohttp's request.host: the Host header, else the address it came in on."""
        host = self.headers.get(HOST)
        if host is not None:
            return host
        sockname = self._protocol.sockname
        if isinstance(sockname, tuple):
            return f"[{sockname[0]}]" if len(sockname) == 4 else str(sockname[0])
        return "" if sockname is None else str(sockname)

    @property  # type: ignore[override]
    def resources(self) -> Resources:
        return self._resources

    def send_interim(self, status: int, headers: list[tuple[str, str]]) -> None:
        """node.call.InterimSink: the target's 1xx goes to the client now."""
        transport = self._protocol.transport
        write_interim_to(transport, self._message.version, self.replied, status, headers)


async def serve(
    protocol: RequestLoop, message: RawRequestMessage, payload: StreamReader, routes: Routes
) -> bool | None:
    """Answer `message` if a route is its match: whether the connection goes on (False when
    the client left or the reply said close), None if no route matched (aiohttp answers)."""
    match_info = await routes.app.router.resolve(Target(message.url, message.method))  # type: ignore[arg-type]
    route = routes.by_endpoint.get(match_info.handler)
    if route is None:
        return None
    stats = route.stats
    raw = message.path  # the request target as sent (its query too)
    if ("." in raw or "%" in raw or "\\" in raw) and has_dot_segment(raw):
        stats.record(400, 0.0)
        return bool(write(protocol, message, payload, BAD_PATH, route.node, None))
    stats.in_flight += 1
    started = protocol.arrived or perf_counter()  # type: ignore[attr-defined]
    status = CLIENT_CLOSED
    call = MessageCall(message, protocol, stats.label, match_info, routes.resources)
    token = CURRENT_CALL.set(call)  # its log lines name it; the upstream client finds it
    try:
        if payload is EMPTY_PAYLOAD:
            reply = await answer(route.handler, call)
        else:
            reply = await answer_with_body(protocol, message, payload, route, call)
        call.replied = True
        if reply.stream is not None:
            status = reply.status
            match_info.add_app(routes.app)  # its on_response_prepare hooks name the node
            return await stream(protocol, message, match_info, reply, route.node, call)
        keep_alive = write(protocol, message, payload, reply, route.node, call.added_headers)
        if keep_alive is not None:
            status = reply.status
        return bool(keep_alive)
    except ClientGone:
        status = CLIENT_CLOSED
        return False
    finally:
        CURRENT_CALL.reset(token)
        stats.in_flight -= 1
        stats.record(status, perf_counter() - started)
        transport = protocol.transport
        if status == CLIENT_CLOSED and (transport is None or transport.is_closing()):
            log.info("client closed %s %s before the reply was out (499)", call.method, raw)


async def answer_with_body(
    protocol: RequestLoop,
    message: RawRequestMessage,
    payload: StreamReader,
    route: Route,
    call: MessageCall,
) -> Reply:
    """Read the body (node.edge's body timeout armed between its bytes), then answer."""
    length = message.headers.get(CONTENT_LENGTH)
    payload._timer = protocol.body_timer  # type: ignore[attr-defined]
    protocol.reading = payload
    try:
        call.body = await read_body(payload, int(length) if length else None, route.max_body)
    except Rejected as exc:
        return error_reply(exc)
    finally:
        protocol.reading = None
    return await answer(route.handler, call)


def write(
    protocol: RequestLoop,
    message: RawRequestMessage,
    payload: StreamReader,
    reply: Reply,
    node: str,
    added: tuple[tuple[str, ...], bytes] | None,
) -> bool | None:
    """Write a whole reply in one go: whether the connection goes on, None if the client
    had gone (nothing written)."""
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return None
    # Not when the client asked for close, once a drain began (node.drain), nor with a
    # body left unread (a 413's, say): what follows on the connection is not a request
    # (RFC 9112 section 9.3; nginx closes too).
    keep_alive = not (message.should_close or protocol.closing or not payload.is_eof())
    headers, lines = reply_headers(reply, node, added)
    _, _, data, _ = encode(
        reply.status,
        headers,
        reply.body,
        lines,
        message.method,
        message.version,
        keep_alive,
        message.path,
    )
    transport.write(data)
    return keep_alive


async def stream(
    protocol: RequestLoop,
    message: RawRequestMessage,
    match_info: Any,
    reply: Reply,
    node: str,
    call: Call,
) -> bool:
    """A streamed reply (a large or unsized upstream body) goes out through aiohttp's
    StreamResponse (chunked framing, flow control, the app's response hooks), on a
    web.Request made for it now."""
    assert reply.stream is not None and protocol._request_factory is not None
    loop = asyncio.get_running_loop()
    request = protocol._request_factory(
        message,
        EMPTY_PAYLOAD,
        protocol,
        StreamWriter(protocol, loop),
        protocol._task_handler or asyncio.current_task(loop),  # type: ignore[arg-type]
    )
    request._match_info = match_info
    try:
        response = await stream_reply(request, reply, reply.stream, node, call.added_headers)
    finally:
        request._finish()
    return bool(response.keep_alive) and protocol.transport is not None
