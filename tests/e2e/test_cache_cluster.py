"""The cache plugin across real `python run.py` nodes sharing Redis, in front of a slow
counting origin: one origin fetch per cold key cluster-wide, writes seen everywhere,
no-store, stale-if-error, and a Redis outage without errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from ratelimit_helpers import SHARED_REDIS, toml_value
from testkit.origin import CountingOrigin
from testkit.servers import RedisServer

StartCached = Callable[..., list[int]]


def cached_config(name: str, redis_url: str, origin: str, cache: dict[str, Any]) -> str:
    return (
        f"[node]\nname = {toml_value(name)}\n\n"
        f"[backends]\nredis = {toml_value(redis_url)}\n\n"
        f"[upstreams.origin]\ntargets = [{toml_value(origin)}]\ntimeout = 2.0\n\n"
        '[[routes]]\npath = "/c/{tail:.*}"\ntarget = "upstream:origin"\nstrip_prefix = "/c"\n'
        'methods = ["GET", "HEAD", "PUT", "DELETE"]\n'
        f"cache = {toml_value(cache)}\n"
    )


@pytest.fixture
def start_cached(start_node, write_config, origin: CountingOrigin) -> StartCached:
    """Starts `count` nodes caching /c/... in front of the origin, L2 in `redis_url`."""

    def start(redis_url: str, cache: dict[str, Any] | None = None, count: int = 2) -> list[int]:
        ports = []
        for _ in range(count):
            name = f"cache-{uuid.uuid4().hex[:8]}"
            text = cached_config(name, redis_url, origin.url, cache or {"ttl": 30})
            ports.append(start_node("--config", str(write_config(text, f"{name}.toml"))).port)
        return ports

    return start


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique path segment; the shared Redis keys holding it are deleted afterwards."""
    mark = uuid.uuid4().hex[:12]
    yield mark
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(match=f"sn:cache:*{mark}*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


async def fetch(
    session: aiohttp.ClientSession, port: int, path: str, method: str = "GET"
) -> tuple[int, str | None, Any]:
    async with session.request(method, f"http://127.0.0.1:{port}{path}") as response:
        body = await response.read()
        parsed = await response.json() if response.content_type == "application/json" else body
        return response.status, response.headers.get("X-Cache"), parsed


async def test_forty_cold_gets_over_two_nodes_reach_the_origin_once(
    start_cached: StartCached, origin: CountingOrigin, marker: str, session: aiohttp.ClientSession
) -> None:
    """40 concurrent GETs of one cold key, split over two nodes: exactly one origin request."""
    ports = start_cached(SHARED_REDIS)
    origin.delay = 0.5
    path = f"/c/{marker}"
    replies = await asyncio.gather(*(fetch(session, ports[i % 2], path) for i in range(40)))
    assert origin.gets[f"/{marker}"] == 1
    assert {status for status, _, _ in replies} == {200}
    assert {body["count"] for _, _, body in replies} == {1}


async def test_put_on_one_node_is_served_by_the_other(
    start_cached: StartCached, origin: CountingOrigin, marker: str, session: aiohttp.ClientSession
) -> None:
    """A PUT through node A: node B serves the new version within 100 ms."""
    a, b = start_cached(SHARED_REDIS)
    path = f"/c/{marker}"
    assert (await fetch(session, b, path))[2]["version"] == 0
    assert (await fetch(session, b, path))[1] == "HIT-L1"
    assert (await fetch(session, a, path, "PUT"))[:2] == (200, "BYPASS")
    deadline = time.monotonic() + 0.1
    while (await fetch(session, b, path))[2]["version"] != 1:
        assert time.monotonic() < deadline, "node B still serves the old version"
        await asyncio.sleep(0.01)


async def test_no_store_is_never_cached(
    start_cached: StartCached, origin: CountingOrigin, marker: str, session: aiohttp.ClientSession
) -> None:
    """Cache-Control: no-store: six GETs over two nodes are six origin requests."""
    ports = start_cached(SHARED_REDIS)
    path = f"/c/{marker}?cc=no-store"
    replies = [await fetch(session, ports[i % 2], path) for i in range(6)]
    assert origin.gets[f"/{marker}"] == 6
    assert {label for _, label, _ in replies} == {"MISS"}


async def test_stale_if_error_serves_stale_when_the_origin_dies(
    start_cached: StartCached, origin: CountingOrigin, marker: str, session: aiohttp.ClientSession
) -> None:
    """Past its ttl with the origin dead, both nodes answer 200 STALE with the old body."""
    ports = start_cached(SHARED_REDIS, {"ttl": 1, "stale_if_error": 60})
    path = f"/c/{marker}"
    _, _, body = await fetch(session, ports[0], path)
    assert (await fetch(session, ports[1], path))[1] == "HIT-L2"
    await asyncio.sleep(1.1)
    await origin.stop()
    for port in ports:
        assert await fetch(session, port, path) == (200, "STALE", body)


async def test_redis_killed_and_restarted_without_errors(
    start_cached: StartCached, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """Redis dies under traffic and comes back: every answer is a 200; L2 is used again."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        ports = start_cached(server.url)
        paths = [f"/c/k{i}" for i in range(5)]
        await asyncio.gather(*(fetch(session, p, path) for p in ports for path in paths))
        server.kill()
        during = [await fetch(session, p, path) for p in ports for path in [*paths, "/c/new"]]
        assert {status for status, _, _ in during} == {200}
        assert {label for _, label, _ in during} <= {"HIT-L1", "BYPASS"}
        server.start()
        deadline = time.monotonic() + 10
        while True:
            path = f"/c/back-{uuid.uuid4().hex[:6]}"
            first, second = (
                await fetch(session, ports[0], path),
                await fetch(session, ports[1], path),
            )
            if (first[1], second[1]) == ("MISS", "HIT-L2"):
                break
            assert first[0] == second[0] == 200
            assert time.monotonic() < deadline, "the nodes never shared L2 again"
            await asyncio.sleep(0.2)
    finally:
        server.kill()
