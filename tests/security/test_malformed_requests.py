"""Errors outside the JSON contract (issue #18, case 7): whatever the node answers before a
route does (a request it cannot parse, one no route can match, HTTP/0.9, a handler that
raised) is the README's `{"error", "detail"}` JSON, repeats nothing the client sent, and
logs one line, not a traceback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from testkit.rawhttp import get, parse

from node.app import STATS

from .edge_node import Seen, ServeNode, close, read_all, serving

MARK = b"zq7mark"  # in every request below where aiohttp's reply would quote it back

UNPARSABLE = {
    "bad method": b"zq7mark<x / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad header name": b"GET / HTTP/1.1\r\nHost: x\r\nBad zq7mark<h>: v\r\n\r\n",
    "nul in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: zq7mark\x00\r\n\r\n",
    "bad version": b"GET /zq7mark HTTP/9.9\r\nHost: x\r\n\r\n",
    "line too long": b"GET /" + MARK * 1200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad length": b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1zq7mark\r\n\r\n",
    "length and chunked": (
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad chunk": (
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zq7mark\r\nabc\r\n0\r\n\r\n"
    ),
    "no host": b"GET /zq7mark HTTP/1.1\r\n\r\n",
    "tls to plain http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + MARK,
}
CLOSE = "Connection: close\r\n"
UNROUTABLE = {
    "CONNECT": get("zq7mark.example:443", "CONNECT", extra=CLOSE),
    "OPTIONS *": get("*", "OPTIONS", extra=CLOSE),
    "CRLF in the path": get("/a%0d%0aSet-Cookie:zq7mark=1", extra=CLOSE),
}


@pytest.fixture
async def serve_node() -> AsyncIterator[ServeNode]:
    async with serving() as start:
        yield start


async def send(port: int, raw: bytes, wait: float = 2.0) -> Seen:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await read_all(reader, wait)
    finally:
        await close(writer)


def json_reply(seen: Seen) -> tuple[str, dict[str, list[str]], dict]:
    """The reply's status line, headers and JSON body, checked to repeat none of the
    request's marked bytes."""
    assert MARK not in seen.data, seen.data
    status, headers, body = parse(seen.data)
    assert headers["content-type"] == ["application/json"], headers
    assert headers["x-node"] == ["edge"]
    return status, headers, orjson.loads(body)


def logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith(("scalenode", "aiohttp"))]


@pytest.mark.parametrize("raw", UNPARSABLE.values(), ids=UNPARSABLE.keys())
async def test_an_unparsable_request_gets_a_json_400_and_one_info_line(serve_node, caplog, raw):
    """aiohttp's text/plain 400 quoted the bad bytes and logged a traceback at ERROR."""
    caplog.set_level(logging.INFO)
    served = await serve_node()
    seen = await send(served.port, raw)
    assert seen.closed
    status, headers, body = json_reply(seen)
    assert status in ("HTTP/1.0 400 Bad Request", "HTTP/1.1 400 Bad Request")
    assert headers["connection"] == ["close"]
    assert body["error"] == "bad_request" and body["detail"]
    records = logged(caplog)
    assert [r.levelno for r in records] == [logging.INFO], [r.getMessage() for r in records]
    assert records[0].exc_info is None and "malformed request" in records[0].getMessage()
    assert MARK.decode() not in records[0].getMessage()
    assert served.edge.malformed == 1


@pytest.mark.parametrize("raw", UNROUTABLE.values(), ids=UNROUTABLE.keys())
async def test_a_target_no_route_can_match_gets_a_json_404(serve_node, raw):
    """CONNECT's host:port, OPTIONS * and a path with CR LF miss even the catch-all route:
    aiohttp's router answered them with a text/plain 404."""
    served = await serve_node()
    status, _, body = json_reply(await send(served.port, raw))
    assert status == "HTTP/1.1 404 Not Found"
    assert body == {"error": "not_found", "detail": "no route serves this request target"}


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        (b"GET /echo/zq7mark\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (get("/health") + b"GET /echo/zq7mark\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            b"GET /echo/zq7mark HTTP/2.0\r\nHost: x\r\n\r\n",
            "HTTP/1.1 505 HTTP Version Not Supported",
        ),
    ],
    ids=["HTTP/0.9", "HTTP/0.9 after HTTP/1.1", "HTTP/2.0 in text"],
)
async def test_a_request_line_of_another_http_version_is_refused(serve_node, raw, answer):
    """llhttp parses HTTP/0.9 and a text HTTP/2.0 line: the echo route answered them as
    "HTTP/0.9 200 OK" and "HTTP/2.0 200 OK". Now an HTTP/1.1 refusal, then the connection
    closes, and the route never runs."""
    served = await serve_node()
    seen = await send(served.port, raw)
    assert seen.closed
    if raw.startswith(get("/health")):  # the HTTP/1.1 request before it is answered
        assert seen.data.startswith(b"HTTP/1.1 200 OK")
        seen.data = seen.data[seen.data.index(b"HTTP/1.1 ", 1) :]
    status, headers, body = json_reply(seen)
    assert status == answer
    assert headers["connection"] == ["close"]
    assert body["detail"] == "only HTTP/1.0 and HTTP/1.1 are served"
    assert served.app[STATS].routes["/echo/{tail:.*}"].statuses == {}


async def test_a_failing_handler_outside_the_routes_gets_a_json_500(serve_node, caplog):
    """A system, admin or dashboard handler that raises: a JSON 500 naming nothing of the
    failure (its traceback goes to the log), where aiohttp answered text/plain."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("zq7mark: a secret in the failure")

    served = await serve_node(extend=lambda app: app.router.add_get("/broken", broken))
    caplog.set_level(logging.INFO)
    seen = await send(served.port, get("/broken", extra=CLOSE))
    status, _, body = json_reply(seen)
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert body == {"error": "internal", "detail": "the handler failed; see the node's log"}
    errors = [r for r in logged(caplog) if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None  # a bug: its traceback, once
