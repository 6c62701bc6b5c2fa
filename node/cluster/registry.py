"""The node registry: who is alive in the cluster, by heartbeat.

Each node writes its record every `interval` seconds with a TTL of `ttl`; a node that stops
deregisters, a killed one drops out when its TTL runs out. Without Redis a node knows
only itself. `live_count()` is the last known count, so it survives a Redis outage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

from node.cluster.keys import NODE_INFO, NODES_INDEX
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable

log = logging.getLogger("scalenode.registry")

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 5.0
STOP_ATTEMPTS = 5

# Record this node (TTL'd record + index entry scored by Redis time), drop index entries
# older than the TTL, and return the live count. One slot: both keys carry {nodes}.
BEAT_LUA = """
local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = tonumber(ARGV[3])
redis.call("SET", KEYS[2], ARGV[2], "PX", ttl_ms)
redis.call("ZADD", KEYS[1], now_ms, ARGV[1])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now_ms - ttl_ms)
return redis.call("ZCARD", KEYS[1])
"""


class NodeRegistry:
    def __init__(
        self,
        name: str,
        role: str,
        address: str,
        redis: RedisConnection | None,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        ttl: float = HEARTBEAT_TTL,
        version: str = "",
    ) -> None:
        self.name = name
        self.redis = redis
        self.interval = interval
        self.ttl = ttl
        self.info: dict[str, Any] = {
            "name": name,
            "role": role,
            "address": address,
            "pid": os.getpid(),
            "version": version,
            "started": time.time(),
        }
        self.snapshot: Callable[[], dict[str, Any]] | None = None  # metrics, set by the node
        self._count = 1
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._script = redis.client.register_script(BEAT_LUA) if redis is not None else None

    def live_count(self) -> int:
        """Live nodes (this one included) at the last heartbeat that reached Redis."""
        return self._count

    def record(self) -> bytes:
        extra = self.snapshot() if self.snapshot is not None else {}
        return orjson.dumps({**self.info, "heartbeat": time.time(), **extra})

    async def beat(self) -> None:
        if self.redis is None or self._script is None:
            return
        keys = [NODES_INDEX, NODE_INFO + self.name]
        args = [self.name, self.record(), int(self.ttl * 1000)]
        script = self._script
        self._count = max(1, int(await self.redis.run(lambda c: script(keys=keys, args=args))))

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.beat()
            except BackendUnavailable:
                pass  # the last known count stands; RedisConnection logs the outage
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            # A cancel can be swallowed inside a driver's own timeout handling (redis-py on
            # 3.11), so it is repeated until the task has ended, a bounded number of times.
            for _ in range(STOP_ATTEMPTS):
                self._task.cancel()
                done, _ = await asyncio.wait({self._task}, timeout=self.interval)
                if done:
                    break
        if self.redis is None:
            return
        name = self.name

        async def leave(client: Any) -> None:
            await client.zrem(NODES_INDEX, name)
            await client.delete(NODE_INFO + name)

        try:
            await self.redis.run(leave)
        except BackendUnavailable:
            log.warning("could not deregister %s: redis unreachable; its TTL will expire", name)

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's latest record (only this node's when embedded)."""
        if self.redis is None:
            return [orjson.loads(self.record())]

        async def fetch(client: Any) -> list[Any]:
            names = await client.zrange(NODES_INDEX, 0, -1)
            if not names:
                return []
            return await client.mget([NODE_INFO + n.decode() for n in names])

        records = await self.redis.run(fetch)
        return [orjson.loads(r) for r in records if r is not None]
