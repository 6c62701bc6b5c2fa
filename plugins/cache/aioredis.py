"""Lets aiocache's RedisCache use the node's own Redis connection instead of a pool of its own.

aiocache 0.12 builds a redis-py client in its constructor; we swap in this adapter, which
sends the few commands RedisCache issues for values (GET, PSETEX, SET, DEL, EXISTS) through
the node's auto-pipeline (one write per loop tick, a fraction of redis-py's CPU per
command) and hands anything else to the node's redis-py client. It never closes the
shared connection: the node does that.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiocache import RedisCache
from aiocache.serializers import NullSerializer

from node.call import wire_bytes
from node.cluster.autopipe import AutoPipeline, ReplyError, pack
from node.cluster.redis import RedisConnection


def encoded(value: Any) -> bytes:
    return value if isinstance(value, bytes) else wire_bytes(str(value))


class PipelinedClient:
    def __init__(self, pipeline: AutoPipeline, client: Any) -> None:
        self.pipeline = pipeline
        self.client = client

    async def get(self, key: str) -> bytes | None:
        return await self.pipeline.execute(pack(b"GET", encoded(key)))

    async def psetex(self, key: str, ms: int, value: Any) -> bool:
        return await self.pipeline.execute(
            pack(b"PSETEX", encoded(key), b"%d" % ms, encoded(value))
        )

    async def setex(self, key: str, seconds: int, value: Any) -> bool:
        command = pack(b"SETEX", encoded(key), b"%d" % seconds, encoded(value))
        return await self.pipeline.execute(command)

    async def set(self, key: str, value: Any, **options: Any) -> Any:
        if options:
            return await self.client.set(key, value, **options)
        return await self.pipeline.execute(pack(b"SET", encoded(key), encoded(value)))

    async def delete(self, *keys: str) -> int:
        return await self.pipeline.execute(pack(b"DEL", *(encoded(k) for k in keys)))

    async def exists(self, *keys: str) -> int:
        return await self.pipeline.execute(pack(b"EXISTS", *(encoded(k) for k in keys)))

    async def close(self) -> None:
        """aiocache's close() lands here: the node's connection outlives any one cache."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class Script:
    """A Lua script sent as EVALSHA through the auto-pipeline (EVAL when Redis answers
    NOSCRIPT, after a restart or failover); on Redis Cluster through redis-py's Script."""

    def __init__(self, connection: RedisConnection, text: str) -> None:
        self.text = text.encode()
        self.sha = hashlib.sha1(self.text).hexdigest().encode()
        self.pipeline = connection.pipeline
        self.fallback = connection.client.register_script(text)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self.pipeline is None:
            return await self.fallback(keys=keys, args=args)
        parts = [b"%d" % len(keys), *(encoded(k) for k in keys), *(encoded(a) for a in args)]
        try:
            return await self.pipeline.execute(pack(b"EVALSHA", self.sha, *parts))
        except ReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
            return await self.pipeline.execute(pack(b"EVAL", self.text, *parts))


async def set_nx_px(connection: RedisConnection, key: str, value: str, ms: int) -> bool:
    """SET key value NX PX ms, auto-pipelined where the node has the pipeline."""
    if connection.pipeline is None:
        return bool(await connection.client.set(key, value, nx=True, px=ms))
    command = pack(b"SET", wire_bytes(key), value.encode(), b"NX", b"PX", b"%d" % ms)
    return await connection.pipeline.execute(command) is not None


def redis_cache(connection: RedisConnection, namespace: str) -> RedisCache:
    """An aiocache RedisCache over the node's connection, storing bytes as they are.

    `namespace` is explicit and never empty: aiocache's `clear()` without one runs FLUSHDB.
    """
    cache = RedisCache(serializer=NullSerializer(encoding=None), namespace=namespace, timeout=None)
    # The client its constructor made has never connected; it is simply replaced.
    if connection.pipeline is None:  # Redis Cluster: redis-py routes each key to its slot
        cache.client = connection.client
    else:
        cache.client = PipelinedClient(connection.pipeline, connection.client)
    return cache
