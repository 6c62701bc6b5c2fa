"""Helpers of the rate-limit e2e tests: a private redis-server, node configs, concurrent HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis

SHARED_REDIS = "redis://127.0.0.1:6379/0"
NODES_INDEX = "sn:{nodes}:index"
ROUTE = "/hello"


def toml_value(value: Any) -> str:
    """`value` as an inline TOML value (enough for a ratelimit table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def node_config(name: str, redis_url: str, ratelimit: dict[str, Any]) -> str:
    """A node serving GET /hello (demo handler) behind `ratelimit`, state in `redis_url`."""
    return (
        f"[node]\nname = {toml_value(name)}\n\n"
        f"[backends]\nredis = {toml_value(redis_url)}\n\n"
        f'[[routes]]\npath = "{ROUTE}"\nmethods = ["GET"]\n'
        f'target = "handler:node.demo:hello"\nratelimit = {toml_value(ratelimit)}\n'
    )


def scope_pattern(scope: str) -> str:
    """SCAN pattern of every counter of `scope` (the prefix RateLimiter builds)."""
    tag = hashlib.blake2b(f"scope:{scope}".encode(), digest_size=6).hexdigest()
    return "sn:rl:{" + tag + ":*"


def connect(url: str) -> redis.Redis:
    """A sync client; a Redis that does not answer fails the test (never a skip)."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        pytest.fail(f"these tests need Redis at {url}: {exc!r}")
    return client


async def avoid_window_edge(window: float, margin: float = 3.0) -> None:
    """Sleep past the next aligned window boundary if it is under `margin` seconds away."""
    left = window - time.time() % window
    if left < margin:
        await asyncio.sleep(left + 0.05)


async def wait_until(check: Callable[[], Any], within: float, what: str) -> None:
    """Poll `check` (sync or async) every 50 ms until it is true; fail naming `what`."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


def url(port: int, path: str = ROUTE) -> str:
    return f"http://127.0.0.1:{port}{path}"


async def fetch(
    session: aiohttp.ClientSession, target: str, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    async with session.get(target, headers=headers or {}) as resp:
        return resp.status, resp.headers, await resp.read()


async def burst(
    session: aiohttp.ClientSession, ports: list[int], n: int, headers: dict[str, str] | None = None
) -> list[tuple[int, Any, bytes]]:
    """`n` concurrent GET /hello, spread round-robin over `ports`."""
    calls = (fetch(session, url(ports[i % len(ports)]), headers) for i in range(n))
    return list(await asyncio.gather(*calls))


async def metric(session: aiohttp.ClientSession, port: int, name: str) -> float:
    """A node's sample `name` for route /hello (0 when absent)."""
    _, _, body = await fetch(session, url(port, "/metrics"))
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and f'route="{ROUTE}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def under_traffic(
    session: aiohttp.ClientSession, ports: list[int], action: Callable[[], None]
) -> list[int]:
    """Statuses of 8 request loops over `ports`, with `action` done midway through."""
    stop = asyncio.Event()
    statuses: list[int] = []

    async def loop(i: int) -> None:
        while not stop.is_set():
            status, _, _ = await fetch(session, url(ports[i % len(ports)]), {"X-Client": "bg"})
            statuses.append(status)

    tasks = [asyncio.ensure_future(loop(i)) for i in range(8)]
    await asyncio.sleep(0.3)
    action()
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    return statuses
