"""Error replies of a proxying node: 502, 504, 413, 404, 405, X-Node and /metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import NODE_NAME, NodeFactory, Upstream, proxy_settings

MAX_BODY = 1000


async def chunks(data: bytes, size: int = 300) -> AsyncIterator[bytes]:
    """The body as an async iterator, so aiohttp sends it with chunked transfer encoding."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def body_of(size: int, chunked: bool) -> bytes | AsyncIterator[bytes]:
    data = b"x" * size
    return chunks(data) if chunked else data


async def assert_json_error(resp, status: int, error: str) -> dict:
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["X-Node"] == NODE_NAME
    body = await resp.json()
    assert body["error"] == error
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def test_upstream_down_is_502(node_factory: NodeFactory, closed_port: int) -> None:
    """A pool whose member refuses connections answers 502 bad_gateway as JSON."""
    client = await node_factory(proxy_settings([f"http://127.0.0.1:{closed_port}"]))
    async with client.get("/api/x") as resp:
        await assert_json_error(resp, 502, "bad_gateway")


async def test_gateway_errors_carry_the_request_id(
    node_factory: NodeFactory, closed_port: int
) -> None:
    """A 502 names the request: the client's X-Request-Id, or the one the node made."""
    client = await node_factory(proxy_settings([f"http://127.0.0.1:{closed_port}"]))
    async with client.get("/api/x", headers={"X-Request-Id": "req-42"}) as resp:
        assert resp.status == 502
        assert resp.headers["X-Request-Id"] == "req-42"
    async with client.get("/api/x") as resp:
        assert resp.status == 502
        assert len(resp.headers["X-Request-Id"]) >= 16


async def test_slow_upstream_is_504_within_the_timeout(
    node_factory: NodeFactory, upstream: Upstream
) -> None:
    """An upstream slower than the pool timeout answers 504 gateway_timeout, about on time."""
    client = await node_factory(proxy_settings([upstream.url], pool={"timeout": 0.5}))
    started = time.monotonic()
    async with client.get("/api/slow/5") as resp:
        await assert_json_error(resp, 504, "gateway_timeout")
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.5


@pytest.fixture
async def limited(node_factory: NodeFactory, upstream: Upstream) -> TestClient:
    """A node with max_body=1000; /small lowers it to 500 and /big raises it to 5000."""
    routes = [
        {"path": "/api/{tail:.*}", "target": "upstream:app", "strip_prefix": "/api"},
        {"path": "/small", "target": "upstream:app", "max_body": 500},
        {"path": "/big", "target": "upstream:app", "max_body": 5000},
    ]
    settings = proxy_settings([upstream.url], node={"max_body": MAX_BODY}, routes=routes)
    return await node_factory(settings)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_over_max_body_is_413(
    limited: TestClient, upstream: Upstream, chunked: bool
) -> None:
    """A request body one byte over node.max_body gets 413 JSON and never reaches the upstream."""
    async with limited.post("/api/x", data=body_of(MAX_BODY + 1, chunked)) as resp:
        await assert_json_error(resp, 413, "payload_too_large")
    assert upstream.seen == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_at_max_body_passes(
    limited: TestClient, upstream: Upstream, chunked: bool
) -> None:
    """A request body of exactly node.max_body bytes is forwarded whole."""
    async with limited.post("/api/x", data=body_of(MAX_BODY, chunked)) as resp:
        assert resp.status == 200
        assert (await resp.json())["body_len"] == MAX_BODY
    assert len(upstream.seen[0].body) == MAX_BODY


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_route_max_body_overrides_node_max_body(
    limited: TestClient, upstream: Upstream, chunked: bool
) -> None:
    """A route's own max_body applies instead of node.max_body, whether lower or higher."""
    async with limited.post("/small", data=body_of(501, chunked)) as resp:
        await assert_json_error(resp, 413, "payload_too_large")
    async with limited.post("/small", data=body_of(500, chunked)) as resp:
        assert resp.status == 200
    async with limited.post("/big", data=body_of(5000, chunked)) as resp:
        assert resp.status == 200
    async with limited.post("/big", data=body_of(5001, chunked)) as resp:
        await assert_json_error(resp, 413, "payload_too_large")
    async with limited.post("/api/x", data=body_of(3000, chunked)) as resp:
        await assert_json_error(resp, 413, "payload_too_large")
    assert [len(seen.body) for seen in upstream.seen] == [500, 5000]


async def test_unknown_route_is_404(node: TestClient) -> None:
    """A path no route matches answers 404 not_found as JSON."""
    async with node.get("/nowhere") as resp:
        await assert_json_error(resp, 404, "not_found")


async def test_wrong_method_is_405_with_allow(
    node_factory: NodeFactory, upstream: Upstream
) -> None:
    """A routed path hit with a method it does not take answers 405 JSON listing Allow."""
    routes = [{"path": "/ro", "target": "upstream:app", "methods": ["GET", "POST"]}]
    client = await node_factory(proxy_settings([upstream.url], routes=routes))
    async with client.delete("/ro") as resp:
        await assert_json_error(resp, 405, "method_not_allowed")
        assert resp.headers["Allow"] == "GET, HEAD, POST"
    async with client.post("/health") as resp:
        await assert_json_error(resp, 405, "method_not_allowed")
        assert resp.headers["Allow"] == "GET, HEAD"
    assert upstream.seen == []


async def test_x_node_on_every_response(
    node_factory: NodeFactory, upstream: Upstream, closed_port: int
) -> None:
    """Every reply carries X-Node: proxied, system, dashboard, 404, 405, 413, 502 and 504
    alike; the node's own replies say `Server: scalenode`, no Python or aiohttp version
    (a proxied reply keeps its upstream's Server, as HAProxy does)."""
    routes = [
        {"path": "/api/{tail:.*}", "target": "upstream:app", "strip_prefix": "/api"},
        {"path": "/ro", "target": "upstream:app", "methods": ["GET"]},
        {"path": "/dead", "target": "upstream:dead"},
        {"path": "/slow/{tail:.*}", "target": "upstream:impatient"},
    ]
    upstreams = {
        "dead": {"targets": [f"http://127.0.0.1:{closed_port}"]},
        "impatient": {"targets": [upstream.url], "timeout": 0.3},
    }
    settings = proxy_settings(
        [upstream.url], node={"max_body": MAX_BODY}, routes=routes, upstreams=upstreams
    )
    client = await node_factory(settings)
    calls = [
        ("GET", "/api/x", None, 200),
        ("GET", "/api/bytes/2000000", None, 200),
        ("GET", "/health", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/ready", None, 200),
        ("GET", "/dashboard", None, 200),
        ("GET", "/dashboard/api/cluster", None, 200),
        ("GET", "/dashboard/static/dashboard.js", None, 200),
        ("GET", "/nowhere", None, 404),
        ("PUT", "/ro", None, 405),
        ("POST", "/api/x", b"x" * (MAX_BODY + 1), 413),
        ("GET", "/dead", None, 502),
        ("GET", "/slow/3", None, 504),
    ]
    for method, path, data, status in calls:
        async with client.request(method, path, data=data) as resp:
            assert resp.status == status, path
            assert resp.headers.get("X-Node") == NODE_NAME, path
            if not path.startswith("/api/"):
                assert resp.headers.get("Server") == "scalenode", path
            await resp.read()


def samples(text: str, name: str) -> dict[frozenset, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found


async def test_metrics_count_requests_and_upstream_errors(
    node_factory: NodeFactory, upstream: Upstream, closed_port: int
) -> None:
    """/metrics counts requests per route and status, and failures per upstream member."""
    dead = f"http://127.0.0.1:{closed_port}"
    routes = [
        {"path": "/api/{tail:.*}", "target": "upstream:app", "name": "api", "strip_prefix": "/api"},
        {"path": "/dead/{tail:.*}", "target": "upstream:dead", "name": "dead"},
    ]
    settings = proxy_settings(
        [upstream.url], routes=routes, upstreams={"dead": {"targets": [dead]}}
    )
    client = await node_factory(settings)
    for path, status in [("/api/a", 200), ("/api/b", 200), ("/api/c", 404), ("/dead/x", 502)]:
        headers = {"X-Want-Status": str(status)}
        async with client.get(path, headers=headers) as resp:
            assert resp.status == status
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    requests = samples(text, "scalenode_requests_total")
    node = ("node", NODE_NAME)
    assert requests[frozenset({node, ("route", "api"), ("status", "200")})] == 2
    assert requests[frozenset({node, ("route", "api"), ("status", "404")})] == 1
    assert requests[frozenset({node, ("route", "dead"), ("status", "502")})] == 1
    errors = samples(text, "scalenode_upstream_errors_total")
    dead_member = {node, ("upstream", "dead"), ("member", dead)}
    assert errors[frozenset({*dead_member, ("kind", "failure")})] == 1
    assert errors[frozenset({*dead_member, ("kind", "timeout")})] == 0
    live_member = {node, ("upstream", "app"), ("member", upstream.url)}
    assert errors[frozenset({*live_member, ("kind", "failure")})] == 0
