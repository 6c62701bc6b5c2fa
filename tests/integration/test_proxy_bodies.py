"""Large bodies through the proxy: streamed and whole-read replies, big request bodies."""

from __future__ import annotations

import io

import pytest
from aiohttp.test_utils import TestClient

from .conftest import MiB, NodeFactory, Upstream, payload, proxy_settings, sha256


@pytest.mark.parametrize(
    "size",
    [5 * MiB, 900 * 1024, MiB, MiB + 1],
    ids=["5MiB-streamed", "900KB-whole", "1MiB-whole", "1MiB+1-streamed"],
)
async def test_large_upstream_reply_arrives_intact(node: TestClient, size: int) -> None:
    """An upstream reply of any size reaches the client byte for byte with its Content-Length."""
    async with node.get(f"/api/bytes/{size}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Length"] == str(size)
        data = await resp.read()
    assert len(data) == size
    assert sha256(data) == sha256(payload(size, seed=1))


async def test_unsized_upstream_reply_is_streamed_intact(node: TestClient) -> None:
    """A chunked (unsized) 3 MiB upstream reply reaches the client intact, chunked too."""
    size = 3 * MiB
    async with node.get(f"/api/chunked/{size}") as resp:
        assert resp.status == 200
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        data = await resp.read()
    assert sha256(data) == sha256(payload(size, seed=2))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_large_request_body_passes_intact(
    node_factory: NodeFactory, upstream: Upstream, chunked: bool
) -> None:
    """A 3 MiB request body, under a raised max_body, reaches the upstream byte for byte."""
    # io.BytesIO: aiohttp warns (an error here) when handed more than 1 MiB of raw bytes.
    body = payload(3 * MiB, seed=3)

    async def chunks():
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    client = await node_factory(proxy_settings([upstream.url], node={"max_body": 4 * MiB}))
    async with client.put("/api/upload", data=chunks() if chunked else io.BytesIO(body)) as resp:
        assert resp.status == 200
        reply = await resp.json()
    assert reply["body_len"] == len(body)
    assert reply["body_sha256"] == sha256(body)
    assert sha256(upstream.seen[0].body) == sha256(body)
