"""The RateLimit headers on every kind of reply a limited route gives: proxied, streamed,
an upstream's error, HEAD, and over a reply that carries its own RateLimit headers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from testkit.node_server import NodeServer
from testkit.rawhttp import exchange, get, parse

from node.app import build_app
from node.config import Settings
from node.schema import build

from .ratelimit_helpers import avoid_window_edge, stop_heartbeat

LIMIT = {"limit": 5, "window": 60}
BIG = 2 * 1024 * 1024  # over the proxy's 1 MiB: the reply is streamed


async def own_headers(request: web.Request) -> web.Response:
    # An upstream with a rate limit of its own: the node's headers must replace these.
    headers = {"ratelimit-limit": "1000", "RateLimit-Remaining": "999", "X-Origin": "yes"}
    return web.json_response({"ok": True}, headers=headers)


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * BIG)


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/own", own_headers)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def node(origin: str) -> AsyncIterator[TestClient]:
    data: dict[str, Any] = {
        "node": {"name": "rl-replies"},
        "upstreams": {
            "origin": {"targets": [origin], "timeout": 5.0},
            "dead": {"targets": [dead_url()], "timeout": 1.0, "retries": 0},
        },
        "routes": [
            {"path": "/hello", "target": "handler:node.demo:hello", "ratelimit": LIMIT},
            {"path": "/p/{tail:.*}", "target": "upstream:origin", "strip_prefix": "/p"}
            | {"ratelimit": LIMIT},
            {"path": "/dead/{tail:.*}", "target": "upstream:dead", "strip_prefix": "/dead"}
            | {"ratelimit": LIMIT},
        ],
    }
    settings: Settings = build(Settings, data, "")
    client = TestClient(NodeServer(build_app(settings, "all"), host="127.0.0.1"))
    await client.start_server()
    await avoid_window_edge(60)
    yield client
    await stop_heartbeat(client)
    await client.close()


def ratelimit_of(headers: Any) -> tuple[str, str, int]:
    """(Limit, Remaining, Reset) of a reply, each sent exactly once."""
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        assert len(headers.getall(name, [])) == 1, f"{name}: {headers.getall(name, [])}"
    reset = int(headers["RateLimit-Reset"])
    assert 1 <= reset <= 60
    return headers["RateLimit-Limit"], headers["RateLimit-Remaining"], reset


async def test_upstream_headers_of_the_same_name_give_way(node: TestClient) -> None:
    """An upstream's own RateLimit headers (any case) are replaced, its others kept."""
    async with node.get("/p/own") as resp:
        assert resp.status == 200
        assert ratelimit_of(resp.headers)[:2] == ("5", "4")
        assert resp.headers["X-Origin"] == "yes"
        assert await resp.json() == {"ok": True}


async def test_streamed_reply_carries_the_headers(node: TestClient) -> None:
    """A reply too large to hold is streamed, with the RateLimit headers before its body."""
    async with node.get("/p/big") as resp:
        assert resp.status == 200
        assert ratelimit_of(resp.headers)[:2] == ("5", "4")
        assert len(await resp.read()) == BIG


async def test_upstream_failure_reply_carries_the_headers(node: TestClient) -> None:
    """The route's own error (its upstream is down) still tells the client its budget: the
    failed request was counted."""
    for remaining in ("4", "3"):
        async with node.get("/dead/x") as resp:
            assert resp.status in (502, 503, 504)
            assert (await resp.json())["error"]
            assert ratelimit_of(resp.headers)[:2] == ("5", remaining)


async def test_head_then_get_on_one_connection_end_their_heads_exactly(node: TestClient) -> None:
    """The headers are spliced into the head the node writes: on one connection a HEAD's
    reply carries them once and ends at its blank line (no body), and the GET after it
    parses cleanly, counted on."""
    raw = await exchange(node, get("/hello", "HEAD"), then=get("/hello"))
    head_status, head_headers, rest = parse(raw)
    get_status, get_headers, body = parse(rest)
    assert head_status == get_status == "HTTP/1.1 200 OK"
    assert head_headers["ratelimit-remaining"] == ["4"]
    assert get_headers["ratelimit-remaining"] == ["3"]
    for headers in (head_headers, get_headers):
        assert headers["ratelimit-limit"] == ["5"] and len(headers["ratelimit-reset"]) == 1
    assert orjson.loads(body) == {"message": "hello from scalenode"}
    assert head_headers["content-length"] == get_headers["content-length"] == [str(len(body))]


async def test_client_over_ipv6_is_counted_by_its_address() -> None:
    """The peer's address from an IPv6 socket (a 4-tuple) keys the limit: two connections
    from ::1 share one budget."""
    data = {
        "node": {"name": "rl-v6"},
        "routes": [
            {
                "path": "/hello",
                "target": "handler:node.demo:hello",
                "ratelimit": {"limit": 2, "window": 60},
            }
        ],
    }
    client = TestClient(NodeServer(build_app(build(Settings, data, ""), "all"), host="::1"))
    await client.start_server()
    try:
        await avoid_window_edge(60)
        seen = []
        for _ in range(3):
            # A new connection each time: a new peer port, the same address.
            async with client.get("/hello", headers={"Connection": "close"}) as resp:
                seen.append((resp.status, resp.headers["RateLimit-Remaining"]))
        assert seen == [(200, "1"), (200, "0"), (429, "0")]
    finally:
        await stop_heartbeat(client)
        await client.close()
