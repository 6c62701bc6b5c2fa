"""Route escape: a path routed by one route must not reach the upstream as another. With
`/public/{tail:.*}` proxied and no route for `/internal/`, no spelling of
`/public/../internal/x` may reach the upstream's `/internal/x` (raw bytes over a socket, so
no client library tidies the path first)."""

from __future__ import annotations

import orjson
import pytest
from testkit.rawhttp import exchange, parse

from .conftest import proxy_settings

ESCAPES = [
    "/public/../internal/x",
    "/public/%2e%2e/internal/x",
    "/public/%2E%2E/internal/x",
    "/public/.%2e/internal/x",
    "/public/..%2finternal/x",
    "/public/..%5cinternal/x",
    "/public/..\\internal/x",
    "/public/./../internal/x",
    "/public/x/..",
    "/public/./x",
]


@pytest.fixture
async def node(node_factory, origin):
    routes = [{"path": "/public/{tail:.*}", "target": "upstream:app", "strip_prefix": "/public"}]
    return await node_factory(proxy_settings([origin.url], routes=routes))


@pytest.mark.parametrize("path", ESCAPES)
async def test_a_dot_segment_is_refused_and_reaches_no_upstream(node, origin, path):
    raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    status, headers, body = parse(await exchange(node, raw))
    assert status == "HTTP/1.1 400 Bad Request", (path, status)
    assert orjson.loads(body)["error"] == "bad_path"
    assert headers["x-node"]
    assert not origin.gets, f"{path} reached the upstream as {list(origin.gets)}"


async def test_dots_inside_names_still_pass(node, origin):
    """Only whole `.` and `..` segments of the path are dot segments: `a.b` and `..x` are
    names, and a query may hold anything."""
    for path in ("/public/a.b/c..d", "/public/..x/.y", "/public/%2e%2ex", "/public/x?to=../y"):
        raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        status, _, _ = parse(await exchange(node, raw))
        assert status == "HTTP/1.1 200 OK", path
    assert len(origin.gets) == 4
