"""The aiohttp adapter: request → `Call`, pipeline, `Reply` → response, errors → JSON.

This is the only place that turns errors into replies: `Rejected` (and its family)
becomes its status with `{"error", "detail"}`; anything else is logged and becomes a
500 whose body names no internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from time import perf_counter

import orjson
from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from node.call import JSON_TYPE, AddedHeaders, ByteStream, Call, Handler, Reply
from node.errors import MethodNotAllowed, NotFound, PayloadTooLarge, Rejected
from node.metrics import RouteStats
from node.resources import RESOURCES, Resources
from node.targets import as_reply
from node.trace import CURRENT_CALL
from node.wire import (
    CONTENT_TYPE,
    X_NODE,
    ReadyResponse,
    header_items,
    json_response,
    write_interim,
)

log = logging.getLogger("scalenode.http")


def error_reply(exc: Rejected) -> Reply:
    return Reply.json({"error": exc.code, "detail": exc.detail}, exc.status, exc.headers)


def internal_error(request_id: str) -> Reply:
    """The 500 for an unexpected failure: no internals, and the request id the node's log
    line names, so "see the node's log" leads to it."""
    return Reply.json(
        {"error": "internal", "detail": "the handler failed; see the node's log"},
        500,
        {"X-Request-Id": request_id},
    )


CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"


class ClientGone(Exception):
    """The client closed its connection before the node could answer (mid-body, mid-stream)."""


async def read_body(payload: StreamReader, length: int | None, max_body: int) -> bytes:
    """The whole request body, at most `max_body` bytes (else 413, before reading when the
    declared `length` says so). A client that leaves mid-body raises ClientGone; the body
    timeout's RequestTimeout (node.edge) passes through as the 408 it is."""
    if length is not None and length > max_body:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {max_body}")
    chunks = []
    size = 0
    try:
        while chunk := await payload.readany():
            size += len(chunk)
            if size > max_body:
                raise PayloadTooLarge(f"request body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
    except (ConnectionError, asyncio.CancelledError) as exc:
        # aiohttp fails the body's reader with one of these when the client goes; a
        # cancellation of this task itself (a shutdown) stays a cancellation.
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
            raise
        raise ClientGone from exc
    return b"".join(chunks)


class RequestCall(Call):
    """A Call over an aiohttp request: each part is read from the request (which caches
    what it derives) only when asked. Measured with callgrind, copying them up front cost
    a tenth of a hello-world request."""

    __slots__ = ("_request",)

    def __init__(self, request: web.Request, route: str, body: bytes) -> None:
        self.route = route
        self.body = body
        self.shard = None
        self.added_headers = None
        # What `request.remote` derives from, read directly: `remote` is computed by a
        # Python function on first use, a frame per request for the rate limit (aiohttp is
        # pinned to 3.14; the rate limit's tests check the address). Never cloned here.
        self.peer = request._transport_peername
        self._request_id = None
        self._traceparent = None
        self._query = None
        self._request = request

    @property  # type: ignore[override]
    def method(self) -> str:
        return self._request.method

    @property  # type: ignore[override]
    def headers(self) -> CIMultiDictProxy[str]:
        return self._request.headers

    @property  # type: ignore[override]
    def params(self) -> Mapping[str, str]:
        return self._request.match_info

    @property
    def path(self) -> str:
        return self._request.path

    @property
    def raw_path(self) -> str:
        return self._request.rel_url.raw_path

    @property
    def query_string(self) -> str:
        return self._request.rel_url.raw_query_string

    @property
    def scheme(self) -> str:
        return self._request.scheme

    @property
    def host(self) -> str:
        return self._request.host

    @property  # type: ignore[override]
    def resources(self) -> Resources:
        return self._request.app[RESOURCES]

    def send_interim(self, status: int, headers: list[tuple[str, str]]) -> None:
        """node.call.InterimSink: the target's 1xx goes to the client now."""
        write_interim(self._request, status, headers)


def reply_headers(
    reply: Reply, node: str, added: AddedHeaders | None = None
) -> tuple[CIMultiDict[str], bytes]:
    """The reply's headers as they go out (a copy: the reply may be a cached one), and the
    serialized lines a plugin adds at their end (node.call.AddedHeaders)."""
    headers = CIMultiDict(reply.headers) if reply.headers else CIMultiDict()
    lines = b""
    if added is not None:
        names, lines = added
        if reply.headers:  # the reply's own headers of those names give way
            for name in names:
                headers.popall(name, None)
    if reply.content_type is not None:
        headers[CONTENT_TYPE] = reply.content_type
    headers[X_NODE] = node
    return headers, lines


def to_response(reply: Reply, node: str, added: AddedHeaders | None = None) -> ReadyResponse:
    headers, lines = reply_headers(reply, node, added)
    return ReadyResponse(reply.status, headers, reply.body, lines)


async def stream_reply(
    request: web.Request,
    reply: Reply,
    stream: ByteStream,
    node: str,
    added: AddedHeaders | None = None,
) -> web.StreamResponse:
    """A reply whose body is a stream: headers first, then chunks as they come."""
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    if added is not None:
        response.headers.update(header_items(added[1]))
    length = reply.headers.get("Content-Length")
    if length is None:
        response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        async for chunk in stream:
            await response.write(chunk)
    except ConnectionError as exc:
        raise ClientGone from exc
    except Rejected as exc:
        # Headers are out: the only honest signal left is a cut connection, as nginx does.
        log.warning("stream of %s %s broke off: %s", request.method, request.path, exc.detail)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:
        await stream.aclose()
    await response.write_eof()
    return response


def has_dot_segment(raw_path: str) -> bool:
    """Does the path hold a `.` or `..` segment, plain or percent-encoded, or hidden behind
    an encoded slash or a backslash? Routing matched the path as sent; an upstream that
    resolves such segments (RFC 3986 section 5.2.4) would serve another path than the one
    routed, so the node refuses them instead of forwarding (route and forward one path)."""
    lowered = (
        raw_path.partition("?")[0]
        .lower()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
    )
    return any(segment in (".", "..") for segment in lowered.replace("\\", "/").split("/"))


BAD_PATH = Reply.json(
    {
        "error": "bad_path",
        "detail": "the path holds a dot segment (. or .., plain or percent-encoded): "
        "send it normalised (RFC 3986 section 5.2.4)",
    },
    400,
)


EXPECTATION_FAILED = orjson.dumps(
    {"error": "expectation_failed", "detail": "only Expect: 100-continue is understood"}
)


async def expect_continue(request: web.Request) -> None:
    """aiohttp's Expect handling, without echoing the header (its 417 text quotes the value,
    and a non-UTF-8 byte in it made that a 500): RFC 9110 section 10.1.1, a 100 for
    100-continue on HTTP/1.1, else 417."""
    if request.version != HttpVersion11:
        return  # an HTTP/1.0 client cannot have sent a meaningful Expect
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the reply proper has not begun (as aiohttp)
        return
    raise web.HTTPExpectationFailed(body=EXPECTATION_FAILED, content_type=JSON_TYPE)


async def answer(handler: Handler, call: Call) -> Reply:
    """The route's pipeline on `call`: its reply, a Rejected as its JSON error, anything
    else logged (naming the request id) as a 500. ClientGone passes through."""
    try:
        reply = await handler(call)
        if type(reply) is not Reply:  # a handler whose `-> Reply` annotation was wrong
            reply = as_reply(reply)
    except Rejected as exc:
        reply = error_reply(exc)
    except ClientGone:
        raise
    except Exception:
        request_id = call.request_id
        log.exception(
            "route %s failed on %s %s (X-Request-Id: %s)",
            call.route,
            call.method,
            call.path,
            request_id,
        )
        reply = internal_error(request_id)
    return reply


def route_endpoint(handler: Handler, stats: RouteStats, node: str, max_body: int):
    """The aiohttp handler of one route: the adapter around its composed pipeline. Most of a
    route's requests are served by node.fastpath instead, with the same pipeline; this one
    answers those it turns away (Expect, an access-logged node, a test server's)."""
    label = stats.label

    async def endpoint(request: web.Request) -> web.StreamResponse | ReadyResponse:
        raw = request.raw_path  # the request target as sent (its query too): no URL parsing
        # The common path holds none of these: no call (a frame per request) to look closer.
        if ("." in raw or "%" in raw or "\\" in raw) and has_dot_segment(raw):
            stats.record(400, 0.0)
            return to_response(BAD_PATH, node)
        stats.in_flight += 1
        # From the request's arrival (node.edge's handler), else now (a test server's).
        arrived = getattr(request.protocol, "arrived", None)
        started = arrived if type(arrived) is float and arrived else perf_counter()
        status = CLIENT_CLOSED
        try:
            call = RequestCall(request, label, b"")
            # The task is this request's: its log lines name it, the upstream client
            # hands it the target's 1xx replies.
            CURRENT_CALL.set(call)
            try:
                if request.body_exists:
                    call.body = await read_body(request.content, request.content_length, max_body)
            except Rejected as exc:
                reply = error_reply(exc)
            else:
                reply = await answer(handler, call)
            status = reply.status
            if reply.stream is None:
                return to_response(reply, node, call.added_headers)
            return await stream_reply(request, reply, reply.stream, node, call.added_headers)
        except (ClientGone, asyncio.CancelledError):
            transport = request.transport
            if transport is None or transport.is_closing():  # the client left, not a shutdown
                log.info(
                    "client closed %s %s before the reply was out (499)",
                    request.method,
                    request.path,
                )
                status = CLIENT_CLOSED
                raise asyncio.CancelledError from None  # aiohttp drops the connection quietly
            raise
        finally:
            stats.in_flight -= 1
            stats.record(status, perf_counter() - started)

    return endpoint


def unmatched_endpoint(node: str, resources: list[web.AbstractResource]):
    """The catch-all route, matched only when no route fits: JSON 404, or 405 with Allow.

    Registered last, it costs matched requests nothing (no middleware on the hot path).
    """

    async def endpoint(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in resources:
            _, methods = await resource.resolve(request)
            allowed |= methods
        if allowed:
            exc: Rejected = MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        else:
            exc = NotFound(f"no route for {request.path}")
        return json_response(
            {"error": exc.code, "detail": exc.detail}, exc.status, node, exc.headers
        )

    return endpoint
