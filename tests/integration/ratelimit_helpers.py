"""Helpers of the in-process rate-limit tests: settings, Redis key clean-up, metrics, timing."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from node.app import RESOURCES
from node.config import Settings
from node.schema import build
from plugins.ratelimit.keys import API_KEY_TIERS, RATELIMIT

REDIS_URL = "redis://127.0.0.1:6379/0"
ROUTE = "/hello"
EDGE_MARGIN = 2.0  # seconds: tests start no closer than this to a window boundary


def unique(prefix: str = "rl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def scope_prefix(scope: str) -> str:
    """The Redis key prefix of every counter of `scope` (as RateLimiter builds it)."""
    tag = hashlib.blake2b(f"scope:{scope}".encode(), digest_size=6).hexdigest()
    return f"{RATELIMIT}{{{tag}:"


def api_key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def rl_settings(
    ratelimit: dict[str, Any],
    *,
    name: str,
    redis: str = "",
    node: dict[str, Any] | None = None,
) -> Settings:
    """One node serving GET /hello (demo handler) behind the given ratelimit table."""
    data: dict[str, Any] = {
        "node": {"name": name, **(node or {})},
        "backends": {"redis": redis},
        "routes": [{"path": ROUTE, "target": "handler:node.demo:hello", "ratelimit": ratelimit}],
    }
    return build(Settings, data, "")


async def delete_scope(client: Any, scope: str) -> None:
    """Delete every counter of `scope` from Redis (only ours: the prefix hashes the scope)."""
    keys = [key async for key in client.scan_iter(match=scope_prefix(scope) + "*", count=500)]
    if keys:
        await client.delete(*keys)


async def forget_api_keys(client: Any, api_keys: list[str]) -> None:
    if api_keys:
        await client.hdel(API_KEY_TIERS, *(api_key_digest(k) for k in api_keys))


async def avoid_window_edge(window: float, margin: float = EDGE_MARGIN) -> None:
    """Sleep past the next aligned window boundary if it is less than `margin` away, so a
    short test sees one window (sliding-window counts fade at the boundary)."""
    left = window - time.time() % window
    if left < margin:
        await asyncio.sleep(left + 0.05)


async def get(client: TestClient, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """GET /hello: (status, headers, parsed JSON body)."""
    async with client.get(ROUTE, headers=headers or {}) as resp:
        return resp.status, resp.headers, await resp.json()


async def statuses(client: TestClient, n: int, headers: dict[str, str] | None = None) -> list[int]:
    """`n` sequential GET /hello statuses."""
    return [(await get(client, headers))[0] for _ in range(n)]


async def metric(client: TestClient, name: str, route: str = ROUTE) -> float:
    """The sample `name` (e.g. scalenode_ratelimit_allowed_total) for `route`; 0 if absent."""
    async with client.get("/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("route") == route:
                return sample.value
    return 0.0


async def end_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` until it ends: one cancel() can be lost while a heartbeat is in flight
    (asyncio.wait_for inside redis-py on Python 3.11); see
    test_registry_stop_ends_a_heartbeat_in_flight."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)


async def stop_heartbeat(client: TestClient) -> None:
    """End the node's heartbeat before its app closes, so the bug above (NodeRegistry.stop()
    waiting forever) cannot hang the other tests' teardown."""
    await end_task(client.server.app[RESOURCES].registry._task)
