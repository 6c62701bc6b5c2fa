"""The ratelimit plugin across real `python run.py` nodes: a shared limit, Redis outages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from ratelimit_helpers import (
    SHARED_REDIS,
    avoid_window_edge,
    burst,
    connect,
    fetch,
    metric,
    node_config,
    scope_pattern,
    under_traffic,
    url,
    wait_until,
)
from testkit.servers import RedisServer

LIMIT = 20  # per window across the cluster in the outage tests
WINDOW = 60
ERRORS = "scalenode_ratelimit_backend_errors_total"
UNLIMITED = "scalenode_ratelimit_unlimited_by_outage_total"
StartLimited = Callable[..., list[int]]


def fresh() -> dict[str, str]:
    """Headers of a client no test has used yet (the outage tests key on X-Client)."""
    return {"X-Client": uuid.uuid4().hex}


def outage_table(mode: str) -> dict[str, Any]:
    return {"limit": LIMIT, "window": WINDOW, "key": "header:X-Client", "on_backend_error": mode}


@pytest.fixture
def start_limited(start_node, write_config) -> StartLimited:
    """Starts `count` nodes serving /hello behind `ratelimit` with state in `redis_url`."""

    def start(redis_url: str, ratelimit: dict[str, Any], count: int = 1) -> list[int]:
        ports = []
        for _ in range(count):
            name = f"rl-{uuid.uuid4().hex[:10]}"
            path = write_config(node_config(name, redis_url, ratelimit), f"{name}.toml")
            ports.append(start_node("--config", str(path)).port)
        return ports

    return start


@pytest.fixture
def shared_scope() -> Iterator[str]:
    """A fresh scope on the shared Redis; its counters are deleted afterwards."""
    client = connect(SHARED_REDIS)
    scope = f"e2e-{uuid.uuid4().hex[:12]}"
    yield scope
    keys = list(client.scan_iter(match=scope_pattern(scope), count=500))
    if keys:
        client.delete(*keys)
    client.close()


async def wait_for_live_nodes(server: RedisServer, count: int) -> None:
    """Until `count` nodes are registered, then 1.5 s more so each has seen them all."""
    await wait_until(lambda: server.live_nodes() >= count, 10, f"{count} nodes registered")
    await asyncio.sleep(1.5)


async def wait_for_redis_decisions(session: aiohttp.ClientSession, port: int) -> None:
    """Until a request on `port` is decided through Redis again (no new backend error)."""

    async def decided_by_redis() -> bool:
        before = await metric(session, port, ERRORS)
        status, _, _ = await fetch(session, url(port), fresh())
        assert status != 500
        return await metric(session, port, ERRORS) == before

    await wait_until(decided_by_redis, 10, f"node on {port} deciding through Redis again")


async def test_two_nodes_share_a_global_limit(
    start_limited: StartLimited, shared_scope: str, session: aiohttp.ClientSession
) -> None:
    """200 concurrent requests over two nodes, global limit 50: exactly 50 pass, 150 get 429."""
    table = {"limit": 50, "window": 60, "key": "global", "scope": shared_scope}
    ports = start_limited(SHARED_REDIS, table, count=2)
    await avoid_window_edge(60)
    replies = await burst(session, ports, 200)
    assert Counter(status for status, _, _ in replies) == {200: 50, 429: 150}


async def test_open_mode_serves_through_an_outage(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """on_backend_error=open: Redis killed under traffic, requests still pass unlimited."""
    (port,) = start_limited(redis_server.url, outage_table("open"))
    seen = await under_traffic(session, [port], redis_server.kill)
    assert set(seen) <= {200, 429}
    replies = await burst(session, [port], 2 * LIMIT, fresh())
    assert [status for status, _, _ in replies] == [200] * (2 * LIMIT)
    assert all("RateLimit-Limit" not in headers for _, headers, _ in replies)


async def test_open_mode_outage_is_degraded_and_counted(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """on_backend_error=open: /ready stays 200 "degraded"; /metrics counts the outage."""
    (port,) = start_limited(redis_server.url, outage_table("open"))
    await under_traffic(session, [port], redis_server.kill)
    await burst(session, [port], 10, fresh())

    async def degraded() -> bool:
        status, _, body = await fetch(session, url(port, "/ready"))
        assert status == 200, body
        return orjson.loads(body)["status"] == "degraded"

    await wait_until(degraded, 5, "/ready reporting degraded")
    assert await metric(session, port, ERRORS) >= 10
    assert await metric(session, port, UNLIMITED) == await metric(session, port, ERRORS)


async def test_closed_mode_answers_503_during_an_outage(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """on_backend_error=closed: Redis killed under traffic, 503 JSON with Retry-After."""
    (port,) = start_limited(redis_server.url, outage_table("closed"))
    seen = await under_traffic(session, [port], redis_server.kill)
    assert set(seen) <= {200, 429, 503}
    assert 503 in seen
    replies = await burst(session, [port], 10, fresh())
    for status, headers, body in replies:
        assert status == 503
        assert headers["Content-Type"].startswith("application/json")
        assert orjson.loads(body)["error"] == "ratelimit_unavailable"
        assert int(headers["Retry-After"]) >= 1


async def test_local_mode_enforces_each_nodes_share(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """on_backend_error=local with 2 live nodes: each node allows limit ÷ 2 during an outage."""
    ports = start_limited(redis_server.url, outage_table("local"), count=2)
    await wait_for_live_nodes(redis_server, 2)
    seen = await under_traffic(session, ports, redis_server.kill)
    assert set(seen) <= {200, 429}
    client = fresh()
    for port in ports:
        replies = await burst(session, [port], LIMIT, client)
        assert Counter(status for status, _, _ in replies) == {200: LIMIT // 2, 429: LIMIT // 2}
        assert {headers["RateLimit-Limit"] for _, headers, _ in replies} == {str(LIMIT // 2)}


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
async def test_restarted_redis_enforces_limits_again(
    start_limited: StartLimited,
    redis_server: RedisServer,
    session: aiohttp.ClientSession,
    mode: str,
) -> None:
    """After an outage Redis restarts on its port: a fresh key gets exactly `limit` again."""
    ports = start_limited(redis_server.url, outage_table(mode), count=2)
    await wait_for_live_nodes(redis_server, 2)
    seen = await under_traffic(session, ports, redis_server.kill)
    redis_server.start()
    for port in ports:
        await wait_for_redis_decisions(session, port)
    assert 500 not in seen
    errors = await metric(session, ports[0], ERRORS)
    replies = await burst(session, [ports[0]], 2 * LIMIT, fresh())
    assert Counter(status for status, _, _ in replies) == {200: LIMIT, 429: LIMIT}
    assert {headers["RateLimit-Limit"] for _, headers, _ in replies} == {str(LIMIT)}
    assert await metric(session, ports[0], ERRORS) == errors


async def stalled_burst(
    session: aiohttp.ClientSession, port: int, server: RedisServer, *prepare: str
) -> list[tuple[int, Any, bytes]]:
    """150 concurrent requests while Redis stalls 0.3 s (under the node's 1 s command
    timeout), after one warm-up request and the Redis commands `prepare`."""
    assert (await fetch(session, url(port), fresh()))[0] == 200
    client = connect(server.url)
    try:
        for command in prepare:
            client.execute_command(*command.split())
        client.execute_command("CLIENT", "PAUSE", 300, "ALL")
        return await burst(session, [port], 150, fresh())
    finally:
        client.close()


async def test_redis_stall_is_not_an_outage(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """150 requests in flight during a short Redis stall: the limit holds, no backend error."""
    (port,) = start_limited(redis_server.url, outage_table("open"))
    replies = await stalled_burst(session, port, redis_server)
    assert await metric(session, port, ERRORS) == 0
    assert Counter(status for status, _, _ in replies) == {200: LIMIT, 429: 150 - LIMIT}


async def test_lost_scripts_reload_without_an_outage(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """Redis lost its scripts (as after a failover): 150 concurrent requests still hold."""
    (port,) = start_limited(redis_server.url, outage_table("open"))
    replies = await stalled_burst(session, port, redis_server, "SCRIPT FLUSH")
    assert await metric(session, port, ERRORS) == 0
    assert Counter(status for status, _, _ in replies) == {200: LIMIT, 429: 150 - LIMIT}


async def test_hung_redis_fails_open_within_the_command_timeout(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """Redis hung (SIGSTOP) with its connections open: open mode answers 200 within 3 s."""
    (port,) = start_limited(redis_server.url, outage_table("open"))
    assert (await fetch(session, url(port), fresh()))[0] == 200
    await asyncio.sleep(0.2)  # the warm-up's reply is read; the connection sits idle
    redis_server.freeze()
    started = time.monotonic()
    request = asyncio.ensure_future(fetch(session, url(port)))
    try:
        await asyncio.wait({request}, timeout=5)
        elapsed, answered = time.monotonic() - started, request.done()
    finally:
        redis_server.thaw()
    await asyncio.wait({request}, timeout=3)  # thawed, Redis answers what it owes
    request.cancel()
    assert answered, "no answer in 5 s while Redis hung: the 1 s command timeout was not applied"
    assert request.result()[0] == 200
    assert elapsed < 3


async def test_tier_lookups_during_a_stall_are_not_an_outage(
    start_limited: StartLimited, redis_server: RedisServer, session: aiohttp.ClientSession
) -> None:
    """130 new API keys (tier lookups) plus 20 calls of one key during a stall: its 5 hold."""
    tiers = {"free": {"limit": 5, "window": WINDOW}}
    table = {"key": "header:X-API-Key", "tiers": tiers, "default_tier": "free"}
    (port,) = start_limited(redis_server.url, table)
    assert (await fetch(session, url(port), {"X-API-Key": "warm-up"}))[0] == 200
    client = connect(redis_server.url)
    try:
        client.execute_command("CLIENT", "PAUSE", 300, "ALL")
        strangers = [fetch(session, url(port), {"X-API-Key": uuid.uuid4().hex}) for _ in range(130)]
        regular = [fetch(session, url(port), {"X-API-Key": "regular"}) for _ in range(20)]
        replies = await asyncio.gather(*strangers, *regular)
    finally:
        client.close()
    assert await metric(session, port, ERRORS) == 0
    assert Counter(status for status, _, _ in replies[130:]) == {200: 5, 429: 15}
