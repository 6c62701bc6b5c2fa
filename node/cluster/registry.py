"""The node registry: who is in the cluster, by heartbeat, and who left or went silent.

Each node writes its record every `interval` seconds over a Redis client of its own (its
own pool and a longer timeout than the hot path's, so a busy machine's slow answer is not
taken for an outage, and a request burst cannot starve it). Records are kept for
`retention` seconds, so a node that went silent (killed) or left (stopped) stays listed
that long; `nodes()` lists the live ones (a beat within `ttl`), `members()` everyone with
the age of their last beat, by Redis's clock. Without Redis a node knows only itself.
`live_count()` is the last known count, so it survives a Redis outage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from node import tasks
from node.cluster.keys import NODE_INFO, NODES_GONE, NODES_INDEX
from node.cluster.redis import OUTAGE_ERRORS, RedisConnection, make_client
from node.config import redact_url
from node.errors import BackendUnavailable

log = logging.getLogger("scalenode.registry")

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TTL = 5.0  # a node whose last beat is older no longer counts as live
# A heartbeat's own command timeout: long enough for a loaded Redis or a starved process
# to answer late (late is stale, not gone), short enough that a dead socket is noticed
# well within the retention.
HEARTBEAT_TIMEOUT = 4.0
HEARTBEAT_POOL = 4  # the beat, the dashboard's read, and a spare each
RETENTION = 600.0  # seconds a silent or departed node stays listed (node.down_retention)

# Record this node (its record and its index entry, scored by Redis time), forget members
# silent or gone for longer than the retention, and return the live count. One slot: every
# key carries {nodes}.
BEAT_LUA = """
local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call("SET", KEYS[2], ARGV[2], "PX", keep_ms)
redis.call("ZADD", KEYS[1], now_ms, ARGV[1])
redis.call("ZREM", KEYS[3], ARGV[1])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now_ms - keep_ms)
redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", now_ms - keep_ms)
return redis.call("ZCOUNT", KEYS[1], now_ms - ttl_ms, "+inf")
"""

# Leave: the record (marked left) stays for the retention, the name moves to the gone set.
LEAVE_LUA = """
local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call("SET", KEYS[2], ARGV[2], "PX", tonumber(ARGV[3]))
redis.call("ZREM", KEYS[1], ARGV[1])
redis.call("ZADD", KEYS[3], now_ms, ARGV[1])
return 1
"""

# Redis's time and both sets with their scores: ages measured on one clock, whatever the
# nodes' clocks say.
READ_LUA = """
local t = redis.call("TIME")
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now_ms, redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES"),
        redis.call("ZRANGE", KEYS[2], 0, -1, "WITHSCORES")}
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
        retention: float = RETENTION,
        version: str = "",
    ) -> None:
        self.name = name
        self.redis = redis
        self.interval = interval
        self.ttl = ttl
        self.retention = retention
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
        self._failing = False
        self.client = (
            make_client(redis.url, HEARTBEAT_TIMEOUT, HEARTBEAT_POOL) if redis is not None else None
        )
        if self.client is not None:
            self._beat = self.client.register_script(BEAT_LUA)
            self._leave = self.client.register_script(LEAVE_LUA)
            self._read = self.client.register_script(READ_LUA)

    def live_count(self) -> int:
        """Live nodes (this one included) at the last heartbeat that reached Redis."""
        return self._count

    def record(self, **extra: Any) -> bytes:
        metrics = self.snapshot() if self.snapshot is not None else {}
        return orjson.dumps({**self.info, "heartbeat": time.time(), **metrics, **extra})

    async def call(self, operation: Callable[[], Any]) -> Any:
        """Run one registry command; BackendUnavailable when Redis does not answer in time."""
        try:
            result = await operation()
        except (*OUTAGE_ERRORS, RedisError) as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "registry: redis at %s not answering (%s); retrying every beat",
                    redact_url(self.redis.url if self.redis else ""),
                    type(exc).__name__,
                )
            raise BackendUnavailable(f"registry: redis unreachable: {type(exc).__name__}") from exc
        if self._failing:
            self._failing = False
            log.warning("registry: redis answers again")
        return result

    def _keys(self) -> list[str]:
        return [NODES_INDEX, NODE_INFO + self.name, NODES_GONE]

    async def beat(self) -> None:
        if self.client is None:
            return
        args = [self.name, self.record(), int(self.ttl * 1000), int(self.retention * 1000)]
        count = await self.call(lambda: self._beat(keys=self._keys(), args=args))
        self._count = max(1, int(count))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                await self.beat()
            except BackendUnavailable:
                pass  # the last known count stands; call() logged the outage
            except Exception:
                log.exception("heartbeat failed")
            # Beats stay `interval` apart however long one took, so ages stay comparable.
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        """Stop beating and leave: the record stays, marked left, for the retention."""
        self._stopping = True
        await tasks.stop(self._task, patience=self.interval)
        if self.client is None:
            return
        args = [self.name, self.record(left=True), int(self.retention * 1000)]
        try:
            await self.call(lambda: self._leave(keys=self._keys(), args=args))
        except BackendUnavailable:
            log.warning(
                "could not deregister %s: redis unreachable; it will show as down", self.name
            )
        finally:
            await self.client.aclose()

    async def members(self) -> list[dict[str, Any]]:
        """Every node heard from within the retention: its latest record plus `age` (seconds
        since its last beat reached Redis) and `left` (it stopped and said so)."""
        if self.client is None:
            return [{**orjson.loads(self.record()), "age": 0.0, "left": False}]
        now_ms, index, gone = await self.call(lambda: self._read(keys=[NODES_INDEX, NODES_GONE]))
        seen: dict[str, tuple[float, bool]] = {}
        for flat, left in ((index, False), (gone, True)):
            for name, score in zip(flat[::2], flat[1::2], strict=True):
                seen[name.decode()] = (max(0.0, (now_ms - float(score)) / 1000), left)
        if not seen:
            return []
        names = sorted(seen)
        records = await self.call(lambda: self.client.mget([NODE_INFO + n for n in names]))
        out = []
        for name, raw in zip(names, records, strict=True):
            if raw is None:
                continue
            age, left = seen[name]
            if age <= self.retention:
                out.append({**orjson.loads(raw), "age": age, "left": left})
        return out

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's latest record (only this node's when embedded)."""
        return [m for m in await self.members() if not m["left"] and m["age"] <= self.ttl]
