"""Headers across the proxy: hop-by-hop stripping, X-Forwarded-*, X-Request-Id."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from node.trace import trace_id_of

from .conftest import NodeFactory, Upstream, proxy_settings

REQUEST_HOP_HEADERS = ("Keep-Alive", "TE", "Upgrade", "Proxy-Authorization", "Proxy-Connection")


async def test_request_hop_by_hop_headers_are_not_forwarded(
    node: TestClient, upstream: Upstream
) -> None:
    """Hop-by-hop request headers, and headers Connection names, never reach the upstream."""
    headers = {
        "Connection": "keep-alive, Upgrade, X-Hop-A, x-hop-b",
        "X-Hop-A": "1",
        "X-Hop-B": "2",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
        "Authorization": "Bearer token",
    }
    async with node.get("/api/x", headers=headers) as resp:
        assert resp.status == 200
    got = upstream.seen[0].headers
    for name in ("X-Hop-A", "X-Hop-B", *REQUEST_HOP_HEADERS):
        assert name not in got, name
    assert "hop" not in got.get("Connection", "").lower()
    assert got["X-End-To-End"] == "kept"
    assert got["Authorization"] == "Bearer token"


async def test_headers_named_in_a_second_connection_line_are_not_forwarded(
    node: TestClient, upstream: Upstream
) -> None:
    """Headers named in any of several Connection lines are dropped, not only the first line's."""
    headers = CIMultiDict(
        [("Connection", "keep-alive"), ("Connection", "X-Hop-C"), ("X-Hop-C", "3")]
    )
    async with node.get("/api/x", headers=headers) as resp:
        assert resp.status == 200
    assert "X-Hop-C" not in upstream.seen[0].headers


async def test_response_hop_by_hop_headers_are_not_returned(node: TestClient) -> None:
    """Hop-by-hop response headers, and headers Connection names, never reach the client."""
    async with node.get("/api/hop") as resp:
        assert resp.status == 200
        assert await resp.text() == "hop"
        for name in ("X-Up-Hop", "Keep-Alive", "Proxy-Authenticate", "Upgrade", "Trailer"):
            assert name not in resp.headers, name
        assert "x-up-hop" not in resp.headers.get("Connection", "").lower()
        assert resp.headers["X-End-To-End"] == "kept"


async def test_forwarded_headers_are_set(node: TestClient, upstream: Upstream) -> None:
    """The upstream learns the client address, scheme and requested host via X-Forwarded-*."""
    async with node.get("/api/x", headers={"Host": "shop.example:8443"}) as resp:
        assert resp.status == 200
    got = upstream.seen[0].headers
    assert got["X-Forwarded-For"] == "127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Forwarded-Host"] == "shop.example:8443"
    assert got["Host"] == f"127.0.0.1:{upstream.port}"


async def test_untrusted_peer_forwarded_headers_are_replaced(
    node: TestClient, upstream: Upstream
) -> None:
    """X-Forwarded-* sent by an untrusted peer are replaced by what the node itself sees."""
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Host": "shop.example",
    }
    async with node.get("/api/x", headers=spoofed) as resp:
        assert resp.status == 200
    got = upstream.seen[0].headers
    assert got.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert got.getall("X-Forwarded-Proto") == ["http"]
    assert got.getall("X-Forwarded-Host") == ["shop.example"]


async def test_trusted_peer_forwarded_for_is_extended(
    node_factory: NodeFactory, upstream: Upstream
) -> None:
    """A trusted proxy's X-Forwarded-For gets the peer appended; its -Proto and -Host are kept."""
    settings = proxy_settings([upstream.url], node={"trusted_proxies": ["127.0.0.1/32"]})
    client = await node_factory(settings)
    headers = {
        "X-Forwarded-For": "203.0.113.9, 10.0.0.2",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "shop.example",
    }
    async with client.get("/api/x", headers=headers) as resp:
        assert resp.status == 200
    async with client.get("/api/x") as resp:
        assert resp.status == 200
    first, second = (seen.headers for seen in upstream.seen)
    assert first.getall("X-Forwarded-For") == ["203.0.113.9, 10.0.0.2, 127.0.0.1"]
    assert first["X-Forwarded-Proto"] == "https"
    assert first["X-Forwarded-Host"] == "shop.example"
    assert second["X-Forwarded-For"] == "127.0.0.1"
    assert second["X-Forwarded-Proto"] == "http"


async def test_trusted_peer_multiple_forwarded_for_lines_are_all_kept(
    node_factory: NodeFactory, upstream: Upstream
) -> None:
    """Several X-Forwarded-For lines from a trusted proxy are joined in order, none dropped."""
    settings = proxy_settings([upstream.url], node={"trusted_proxies": ["127.0.0.1/32"]})
    client = await node_factory(settings)
    headers = CIMultiDict([("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-For", "10.0.0.2")])
    async with client.get("/api/x", headers=headers) as resp:
        assert resp.status == 200
    got = upstream.seen[0].headers
    assert got.getall("X-Forwarded-For") == ["203.0.113.9, 10.0.0.2, 127.0.0.1"]


async def test_request_id_generated_when_absent(node: TestClient, upstream: Upstream) -> None:
    """Without X-Request-Id the node makes one, sends it upstream and returns the same one."""
    ids = []
    for _ in range(2):
        async with node.post("/api/x", data=b"body") as resp:
            assert resp.status == 200
            ids.append(resp.headers["X-Request-Id"])
    assert [seen.headers["X-Request-Id"] for seen in upstream.seen] == ids
    assert all(0 < len(rid) <= 128 and rid.isprintable() for rid in ids)
    assert ids[0] != ids[1]


async def test_request_id_kept_when_given(node: TestClient, upstream: Upstream) -> None:
    """A client's X-Request-Id is forwarded upstream and echoed on the reply unchanged."""
    async with node.get("/api/x", headers={"X-Request-Id": "client-trace-123"}) as resp:
        assert resp.status == 200
        assert resp.headers.getall("X-Request-Id") == ["client-trace-123"]
    assert upstream.seen[0].headers.getall("X-Request-Id") == ["client-trace-123"]


@pytest.mark.parametrize(
    "credentials", ["", "user:pw@"], ids=["lean client", "aiohttp client (credentials)"]
)
async def test_both_upstream_clients_forward_the_same_lines(
    node_factory: NodeFactory, upstream: Upstream, credentials: str
) -> None:
    """The lean client (plain http) and aiohttp's (https, or credentials in the URL) get the
    same header lines: repeated ones in order, Connection's names gone, the client's
    request id kept, the forwarding headers and a trace added."""
    target = f"http://{credentials}127.0.0.1:{upstream.port}"
    client = await node_factory(proxy_settings([target]))
    headers = CIMultiDict(
        [
            ("X-Multi", "1"),
            ("X-Multi", "2"),
            ("Connection", "x-hop"),
            ("X-Hop", "h"),
            ("X-End", "e"),
            ("X-Request-Id", "given-1"),
        ]
    )
    async with client.get("/api/x", headers=headers) as resp:
        assert resp.status == 200
    got = upstream.seen[0].headers
    assert got.getall("X-Multi") == ["1", "2"]
    assert "X-Hop" not in got and got["X-End"] == "e"
    assert got.getall("X-Request-Id") == ["given-1"]
    assert got.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert trace_id_of(got["traceparent"]) is not None
    assert got["Host"] == f"127.0.0.1:{upstream.port}"
