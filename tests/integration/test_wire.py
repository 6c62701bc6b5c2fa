"""What the node writes on the wire for a reply in hand (node/wire.py), read as raw bytes:
aiohttp's framing rules kept (length, bodiless statuses and HEAD, Connection by version)."""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from testkit.rawhttp import exchange, get, parse
from testkit.servers import free_port

from node.app import build_app
from node.config import Settings
from node.schema import build

HANDLERS = "testkit.wire_handlers"
ROUTES = {
    "/hello": "node.demo:hello",
    "/no-content": f"{HANDLERS}:no_content",
    "/not-modified": f"{HANDLERS}:not_modified",
    "/lying": f"{HANDLERS}:lying_length",
    "/cookies": f"{HANDLERS}:cookies",
    "/untyped": f"{HANDLERS}:untyped",
    "/injected": f"{HANDLERS}:injected",
    "/nul": f"{HANDLERS}:nul_byte",
    "/control-in-text": f"{HANDLERS}:control_in_text",
    "/tab-and-text": f"{HANDLERS}:tab_and_text",
}
CLOSE = "Connection: close\r\n"
KEEP = "Connection: keep-alive\r\n"


@pytest.fixture
async def node(node_factory) -> TestClient:
    routes = [
        {"path": path, "methods": ["GET", "HEAD"], "target": f"handler:{target}"}
        for path, target in ROUTES.items()
    ]
    return await node_factory(build(Settings, {"node": {"name": "node-a"}, "routes": routes}, ""))


async def test_a_reply_carries_length_type_date_server_and_node(node):
    status, headers, body = parse(await exchange(node, get("/hello", extra=CLOSE)))
    assert status == "HTTP/1.1 200 OK"
    assert body == b'{"message":"hello from scalenode"}'
    assert headers["content-length"] == [str(len(body))]
    assert headers["content-type"] == ["application/json"]
    assert headers["x-node"] == ["node-a"]
    assert headers["connection"] == ["close"]
    assert len(headers["date"]) == 1 and headers["date"][0].endswith(" GMT")
    assert headers["server"] == ["scalenode"]  # no Python or aiohttp version


async def test_keep_alive_serves_two_requests_on_one_connection(node):
    raw = await exchange(node, get("/hello"), then=get("/hello"))
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert b"connection:" not in raw.lower()  # HTTP/1.1 keeps alive without saying so


async def test_http_10_keep_alive_is_said_and_plain_10_closes(node):
    kept = parse(await exchange(node, get("/hello", version="1.0", extra=KEEP)))
    assert kept[0] == "HTTP/1.0 200 OK" and kept[1]["connection"] == ["keep-alive"]
    raw = await exchange(node, get("/hello", version="1.0"), then=get("/hello", version="1.0"))
    assert raw.count(b"HTTP/1.0 200 OK") == 1  # closed after the first reply
    assert b"connection:" not in raw.lower()


async def test_head_sends_the_length_but_no_body(node):
    raw = await exchange(node, get("/hello", "HEAD"), then=get("/hello"))
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert b"content-length: 34" in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body bytes between the two replies


async def test_no_content_has_neither_length_nor_body(node):
    raw = await exchange(node, get("/no-content"), then=get("/hello"))
    status, headers, rest = parse(raw)
    assert status == "HTTP/1.1 204 No Content"
    assert "content-length" not in headers and headers["x-kept"] == ["yes"]
    assert rest.startswith(b"HTTP/1.1 200 OK")


async def test_not_modified_keeps_its_length_header_and_sends_no_body(node):
    raw = await exchange(node, get("/not-modified"), then=get("/hello"))
    status, headers, rest = parse(raw)
    assert status == "HTTP/1.1 304 Not Modified"
    assert headers["content-length"] == ["5"] and headers["etag"] == ['"v1"']
    assert rest.startswith(b"HTTP/1.1 200 OK")


async def test_a_wrong_length_header_is_replaced_by_the_real_one(node):
    raw = await exchange(node, get("/lying"), then=get("/hello"))
    _, headers, rest = parse(raw)
    assert headers["content-length"] == ["12"]
    assert rest.startswith(b"twelve bytesHTTP/1.1 200 OK")


async def test_repeated_headers_are_all_sent(node):
    _, headers, _ = parse(await exchange(node, get("/cookies", extra=CLOSE)))
    assert headers["set-cookie"] == ["a=1", "b=2"]


async def test_a_body_without_a_type_is_octet_stream(node):
    _, headers, body = parse(await exchange(node, get("/untyped", extra=CLOSE)))
    assert headers["content-type"] == ["application/octet-stream"] and body == b"\x00\x01"


async def test_a_header_value_with_a_line_break_is_a_500_and_never_sent(node, caplog):
    raw = await exchange(node, get("/injected", extra=CLOSE))
    status, headers, body = parse(raw)
    assert b"stolen" not in raw and "x-evil" not in headers
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert orjson.loads(body)["error"] == "internal"
    assert headers["content-length"] == [str(len(body))] and headers["x-node"] == ["node-a"]
    assert any("control character" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("path", ["/nul", "/control-in-text"])
async def test_a_header_value_with_another_control_character_is_a_500(node, caplog, path):
    """RFC 9110 section 5.5: NUL and the other controls but HTAB are refused as CR and LF
    are, whether the head is ASCII (aiohttp's serializer) or not (the node's own)."""
    raw = await exchange(node, get(path, extra=CLOSE))
    status, headers, _ = parse(raw)
    assert status == "HTTP/1.1 500 Internal Server Error" and "x-odd" not in headers
    assert b"\x00" not in raw and b"\x01" not in raw
    assert any("control character" in record.getMessage() for record in caplog.records)


async def test_a_tab_and_non_ascii_text_in_values_go_out_as_utf8(node):
    status, headers, _ = parse(await exchange(node, get("/tab-and-text", extra=CLOSE)))
    assert status == "HTTP/1.1 200 OK"
    assert headers["x-tab"] == ["a\tb"]
    assert headers["x-text"] == ["café"]  # parse decodes the head as UTF-8


async def test_the_access_log_reads_status_length_and_headers(caplog):
    """With the access log on (served as node/server.py serves), aiohttp's logger reads
    status, body length and reply headers from the node's responses."""
    routes = [{"path": "/hello", "methods": ["GET"], "target": "handler:node.demo:hello"}]
    app = build_app(build(Settings, {"node": {"name": "node-a"}, "routes": routes}, ""), "all")
    logger = logging.getLogger("scalenode.access.test")
    runner = web.AppRunner(app, access_log=logger, access_log_format="%s %b %{X-Node}o")
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        with caplog.at_level(logging.INFO, logger=logger.name):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/hello") as response,
            ):
                await response.read()
    finally:
        await runner.cleanup()
    assert "200 34 node-a" in [record.getMessage() for record in caplog.records]


async def test_an_unsendable_reply_to_head_is_a_500_without_a_body(node):
    raw = await exchange(node, get("/injected", "HEAD"), then=get("/hello"))
    first, _, rest = raw.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 500 ") and b"stolen" not in raw
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body before the next reply
