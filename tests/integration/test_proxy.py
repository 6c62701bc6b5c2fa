"""The upstream proxy end to end: methods, paths, query strings, bodies, response headers."""

from __future__ import annotations

import gzip

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from .conftest import (
    GZIP_TEXT,
    NODE_NAME,
    NodeFactory,
    Upstream,
    proxy_settings,
)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_methods_pass_through(node: TestClient, upstream: Upstream, method: str) -> None:
    """Each method reaches the upstream with its path, body and the upstream's status kept."""
    body = b"" if method == "GET" else f'{{"method": "{method}"}}'.encode()
    async with node.request(
        method,
        "/api/items/42",
        data=body or None,
        headers={"X-Want-Status": "201", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 201
        reply = await resp.json()
        assert resp.headers["X-Upstream"] == "up"
    assert reply["method"] == method
    assert reply["path"] == "/items/42"
    assert reply["body"] == body.decode()
    (seen,) = upstream.seen
    assert seen.method == method
    assert seen.body == body
    assert seen.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("status", [200, 204, 301, 404, 418, 500, 503])
async def test_upstream_status_is_kept(node: TestClient, status: int) -> None:
    """The upstream's status code reaches the client unchanged, errors and redirects included."""
    headers = {"X-Want-Status": str(status)}
    async with node.get("/api/x", headers=headers, allow_redirects=False) as resp:
        assert resp.status == status
        assert resp.headers["X-Node"] == NODE_NAME


async def test_query_string_with_repeated_keys(node: TestClient, upstream: Upstream) -> None:
    """Repeated query keys reach the upstream in order and all present."""
    async with node.get("/api/search?tag=a&tag=b&tag=c&page=2&empty=") as resp:
        assert resp.status == 200
    (seen,) = upstream.seen
    assert seen.query == [("tag", "a"), ("tag", "b"), ("tag", "c"), ("page", "2"), ("empty", "")]


ENCODED_QUERY = [
    ("q", "a&b", "a%26b"),
    ("eq", "x=y", "x%3Dy"),
    ("plus", "1+1", "1%2B1"),
    ("space", "a b", "a%20b"),
    ("pct", "100%", "100%25"),
    ("pct_hex", "%41", "%2541"),
    ("hash", "#frag", "%23frag"),
    ("utf8", "Jörg", "J%C3%B6rg"),
]


async def test_query_string_with_encoded_characters(node: TestClient, upstream: Upstream) -> None:
    """Percent-encoded query characters (&, =, +, %, #, UTF-8) reach the upstream unchanged."""
    raw = "&".join(f"{key}={encoded}" for key, _, encoded in ENCODED_QUERY)
    async with node.get(URL(f"/api/q?{raw}", encoded=True)) as resp:
        assert resp.status == 200
    (seen,) = upstream.seen
    assert seen.query == [(key, value) for key, value, _ in ENCODED_QUERY]


async def test_path_with_encoded_characters(node: TestClient, upstream: Upstream) -> None:
    """Percent-encoded path characters (?, space, UTF-8) stay part of the upstream path."""
    async with node.get(URL("/api/files/what%3F%20now/J%C3%B6rg?v=1", encoded=True)) as resp:
        assert resp.status == 200
    (seen,) = upstream.seen
    assert seen.path == "/files/what? now/Jörg"
    assert seen.query == [("v", "1")]


async def test_strip_prefix(node_factory: NodeFactory, upstream: Upstream) -> None:
    """strip_prefix removes the route prefix; routes without it forward the full path."""
    routes = [
        {"path": "/api/{tail:.*}", "target": "upstream:app", "strip_prefix": "/api"},
        {"path": "/full/{tail:.*}", "target": "upstream:app"},
        {"path": "/exact", "target": "upstream:app", "strip_prefix": "/exact"},
    ]
    client = await node_factory(proxy_settings([upstream.url], routes=routes))
    for path in ("/api/users/7?x=1", "/full/users/7?x=1", "/exact?x=1"):
        async with client.get(path) as resp:
            assert resp.status == 200
    assert [(s.path, s.query) for s in upstream.seen] == [
        ("/users/7", [("x", "1")]),
        ("/full/users/7", [("x", "1")]),
        ("/", [("x", "1")]),
    ]


async def test_strip_prefix_matched_through_percent_encoding(
    node_factory: NodeFactory, upstream: Upstream
) -> None:
    """An encoded spelling of the prefix (/%61pi) is stripped whole, the rest left as sent."""
    routes = [{"path": "/api/{tail:.*}", "target": "upstream:app", "strip_prefix": "/api"}]
    client = await node_factory(proxy_settings([upstream.url], routes=routes))
    for path in ("/%61pi/users/7", "/%61%70%69/users/7", "/ap%69/a%2Fb"):
        async with client.get(path) as resp:
            assert resp.status == 200
    assert [s.raw_path for s in upstream.seen] == ["/users/7", "/users/7", "/a%2Fb"]


async def test_upstream_response_headers_arrive(node: TestClient) -> None:
    """Upstream response headers reach the client, each Set-Cookie as its own header."""
    async with node.get("/api/cookies") as resp:
        assert resp.status == 200
        assert await resp.text() == "cookies"
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
        assert resp.headers["X-Custom"] == "yes"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Node"] == NODE_NAME


async def test_gzip_passes_through_undecoded(node: TestClient, upstream: Upstream) -> None:
    """A gzip-encoded upstream reply reaches the client byte for byte, still gzip-encoded."""
    async with node.get("/api/gzip", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Encoding"] == "gzip"
        raw = await resp.read()
    assert int(resp.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == GZIP_TEXT
    assert upstream.seen[0].headers["Accept-Encoding"] == "gzip"


async def test_request_without_content_type_gets_none_added(
    node: TestClient, upstream: Upstream
) -> None:
    """A request body sent without Content-Type reaches the upstream without one."""
    async with node.post("/api/x", data=b"raw", skip_auto_headers=["Content-Type"]) as resp:
        assert resp.status == 200
    (seen,) = upstream.seen
    assert seen.body == b"raw"
    assert "Content-Type" not in seen.headers


async def test_head_keeps_the_upstream_content_length(node: TestClient) -> None:
    """HEAD answers with the upstream's headers, Content-Length included, and no body."""
    async with node.head("/api/bytes/5000") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers.get("Content-Length") == "5000"
        assert await resp.read() == b""
