"""The node's two-tier cache for handler code, as an aiocache cache.

`node_cache(call)` gives the node's `TieredCache` (an aiocache `BaseCache`: get, set,
add, delete, exists, multi_get, multi_set, clear, ...): L1 in process for at most
`L1_TTL` seconds, L2 in Redis (through aiocache's RedisCache on the node's connection)
under the `sn:cache:h:` namespace. Embedded, L1 alone keeps values for their full ttl.
`@node_cached(ttl=...)` is aiocache's `@cached` on that cache for `async def f(call, ...)`.
With Redis down, reads and writes use L1 alone, never raising.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiocache import cached
from aiocache.base import SENTINEL, BaseCache
from aiocache.serializers import JsonSerializer

from node.call import Call
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable
from plugins.cache.aioredis import redis_cache
from plugins.cache.keys import CACHE_HANDLER

L1_TTL = 5.0  # seconds a node may serve its copy of a value another node changed
L1_MAX_ENTRIES = 10_000


class TieredCache(BaseCache):
    NAME = "scalenode"

    def __init__(self, connection: RedisConnection | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JsonSerializer())
        kwargs.setdefault("namespace", "")
        super().__init__(**kwargs)
        self.connection = connection
        self.l2 = redis_cache(connection, CACHE_HANDLER) if connection is not None else None
        self.l1: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def _remember(self, key: str, value: Any, ttl: float | None) -> None:
        limit = L1_TTL if self.l2 is not None else float("inf")
        life = min(ttl, limit) if ttl else limit
        self.l1[key] = (value, time.monotonic() + life)
        self.l1.move_to_end(key)
        while len(self.l1) > L1_MAX_ENTRIES:
            self.l1.popitem(last=False)

    async def _l2(self, operation: Callable[[Any], Awaitable[Any]], default: Any = None) -> Any:
        """`operation(l2)` when Redis is there, else `default` (failing open)."""
        if self.l2 is None or self.connection is None or not self.connection.available:
            return default
        l2 = self.l2
        try:
            return await self.connection.run(lambda _: operation(l2))
        except BackendUnavailable:
            return default

    async def _get(self, key: str, encoding: str | None = "utf-8", _conn: Any = None) -> Any:
        held = self.l1.get(key)
        if held is not None and held[1] > time.monotonic():
            return held[0]
        self.l1.pop(key, None)
        value = await self._l2(lambda l2: l2.get(key))
        if value is not None:
            self._remember(key, value, None)
        return value

    async def _gets(self, key: str, encoding: str | None = "utf-8", _conn: Any = None) -> Any:
        return await self._get(key, encoding)

    async def _multi_get(self, keys: list[str], encoding: str | None = "utf-8", _conn: Any = None):
        return [await self._get(key, encoding) for key in keys]

    async def _set(self, key: str, value: Any, ttl: Any, _cas_token: Any = None, _conn: Any = None):
        ttl = float(ttl) if ttl else None
        self._remember(key, value, ttl)
        await self._l2(lambda l2: l2.set(key, value, ttl=ttl))
        return True

    async def _multi_set(self, pairs: list[tuple[str, Any]], ttl: Any, _conn: Any = None) -> bool:
        for key, value in pairs:
            await self._set(key, value, ttl)
        return True

    async def _add(self, key: str, value: Any, ttl: Any, _conn: Any = None) -> bool:
        if await self._exists(key):
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return await self._set(key, value, ttl)

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return await self._get(key, None) is not None

    async def _delete(self, key: str, _conn: Any = None) -> int:
        held = self.l1.pop(key, None)
        return max(int(held is not None), await self._l2(lambda l2: l2.delete(key), 0))

    async def _expire(self, key: str, ttl: Any, _conn: Any = None) -> bool:
        value = await self._get(key, None)
        if value is None:
            return False
        await self._set(key, value, ttl)
        return True

    async def _increment(self, key: str, delta: int, _conn: Any = None) -> int:
        value = int(await self._get(key) or 0) + delta
        await self._set(key, str(value), None)
        return value

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        """Only this cache's keys (never aiocache's FLUSHDB): those under `namespace`."""
        prefix = namespace or ""
        for key in [k for k in self.l1 if k.startswith(prefix)]:
            del self.l1[key]
        pattern = f"{CACHE_HANDLER}:{prefix}*"

        async def clear(l2: Any) -> None:
            client = l2.client
            keys = [k async for k in client.scan_iter(match=pattern, count=500)]
            if keys:
                await client.delete(*keys)

        await self._l2(clear)
        return True

    async def _raw(self, command: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("raw commands would bypass L1; use the node's Redis client")

    async def _close(self, *args: Any, **kwargs: Any) -> None:
        """The node closes its Redis connection; this cache owns nothing to close."""


def node_cache(call: Call) -> TieredCache:
    """The node's TieredCache, from a call the node serves over HTTP."""
    resources = call.resources
    if resources is None:
        raise RuntimeError("node_cache(call) needs a call the node serves over HTTP")
    return resources.shared("cache.tiered", lambda: TieredCache(resources.redis))


def call_key(f: Callable[..., Any], call: Call, *args: Any, **kwargs: Any) -> str:
    """The default key of @node_cached: the function, the call's path and query, the rest."""
    extra = f"{args}{sorted(kwargs.items())}" if args or kwargs else ""
    return f"{f.__module__}.{f.__qualname__}:{call.path}?{call.query_string}{extra}"


class node_cached(cached):
    """aiocache's `@cached` on the node's TieredCache, for `async def f(call, ...)`
    returning JSON-able data (a dict or a list, as handlers may)."""

    def __init__(self, ttl: Any = SENTINEL, key_builder: Any = None, **kwargs: Any) -> None:
        super().__init__(ttl=ttl, key_builder=key_builder or call_key, **kwargs)

    async def decorator(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        self.cache = node_cache(args[0])
        return await super().decorator(f, *args, **kwargs)
