"""L2, the store every node shares: values through aiocache, plus the path and tag indexes
that invalidation needs, and the fill lock that lets one node fetch a cold key.

`RedisL2` is the cluster's; `MemoryL2` (aiocache's SimpleMemoryCache) is the embedded
node's, with the same semantics: both pass tests/contract/test_cache_l2.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any, Protocol

from aiocache import SimpleMemoryCache
from aiocache.serializers import NullSerializer

from node.cluster.redis import RedisConnection
from plugins.cache.aioredis import Script, redis_cache, set_nx_px
from plugins.cache.keys import CACHE_LOCKS, CACHE_PATH_INDEX, CACHE_TAG_INDEX, CACHE_VALUES

HERE = Path(__file__).resolve().parent
MAX_INDEX_NAME = 200  # characters of a path or tag in an index key; longer ones are hashed
SCAN_BATCH = 500


def index_name(prefix: str, name: str) -> str:
    if len(name) > MAX_INDEX_NAME:
        # Its first characters as they are, then the whole name's digest: one index per
        # name, and a prefix scan still finds it (drop_prefix). Longer than any name kept
        # whole, so never one of those.
        digest = hashlib.blake2b(name.encode(), digest_size=16).hexdigest()
        name = name[:MAX_INDEX_NAME] + "#" + digest
    return prefix + name


def glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class L2Store(Protocol):
    """Keys are entry keys (the plugin's); each store adds its own namespace."""

    @property
    def available(self) -> bool: ...

    async def get(self, key: str) -> bytes | None: ...

    async def put(
        self, key: str, blob: bytes, ttl: float, path: str, tags: tuple[str, ...]
    ) -> None:
        """Store `blob` for `ttl` seconds, findable by `path` and each of `tags`."""

    async def drop_path(self, path: str) -> int: ...

    async def drop_prefix(self, prefix: str) -> int: ...

    async def drop_tag(self, tag: str) -> int: ...

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        """Take the fill lock of `key` for `ttl` seconds unless another holder has it."""

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock only if `token` still holds it."""

    async def locked(self, key: str) -> bool: ...


class RedisL2:
    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.values = redis_cache(connection, CACHE_VALUES)
        self._index = Script(connection, (HERE / "index.lua").read_text())
        self._release = Script(connection, (HERE / "release.lua").read_text())

    @property
    def available(self) -> bool:
        return self.connection.available

    async def get(self, key: str) -> bytes | None:
        return await self.connection.run(lambda _: self.values.get(key))

    async def put(
        self, key: str, blob: bytes, ttl: float, path: str, tags: tuple[str, ...]
    ) -> None:
        full = self.values.build_key(key)
        ms = max(1, int(ttl * 1000))
        indexes = [index_name(CACHE_PATH_INDEX, path)] if path else []
        indexes += [index_name(CACHE_TAG_INDEX, tag) for tag in tags]

        async def write(client: Any) -> None:
            # float ttl: aiocache sends PSETEX; the index scripts go in the same tick.
            writes = [self._index(keys=[index], args=[full, ms]) for index in indexes]
            await asyncio.gather(self.values.set(key, blob, ttl=ms / 1000.0), *writes)

        await self.connection.run(write)

    async def _drop_indexes(self, indexes: list[str]) -> int:
        async def drop(client: Any) -> int:
            dropped = 0
            for index in indexes:
                members = await client.smembers(index)
                if members:
                    dropped += await client.delete(*members)
                await client.delete(index)
            return dropped

        return await self.connection.run(drop)

    async def drop_path(self, path: str) -> int:
        return await self._drop_indexes([index_name(CACHE_PATH_INDEX, path)])

    async def drop_tag(self, tag: str) -> int:
        return await self._drop_indexes([index_name(CACHE_TAG_INDEX, tag)])

    async def drop_prefix(self, prefix: str) -> int:
        # A prefix longer than an index name's readable part matches by that part: it may
        # drop more than it names (long paths that differ only past it), never less.
        pattern = CACHE_PATH_INDEX + glob_escape(prefix[:MAX_INDEX_NAME]) + "*"

        async def scan(client: Any) -> list[str]:
            return [k async for k in client.scan_iter(match=pattern, count=SCAN_BATCH)]

        return await self._drop_indexes(await self.connection.run(scan))

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        ms = max(1, int(ttl * 1000))
        return await self.connection.run(
            lambda _: set_nx_px(self.connection, CACHE_LOCKS + key, token, ms)
        )

    async def unlock(self, key: str, token: str) -> None:
        await self.connection.run(lambda _: self._release(keys=[CACHE_LOCKS + key], args=[token]))

    async def locked(self, key: str) -> bool:
        return bool(
            await self.connection.run(lambda _: self.values.client.exists(CACHE_LOCKS + key))
        )


class MemoryL2:
    """The embedded L2: one per node, at most `max_entries` values (more are not stored)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.values = SimpleMemoryCache(
            serializer=NullSerializer(), namespace=CACHE_VALUES + ":", timeout=None
        )
        self.max_entries = max_entries
        self.paths: dict[str, set[str]] = {}
        self.tags: dict[str, set[str]] = {}
        self.locks: dict[str, tuple[str, float]] = {}

    @property
    def available(self) -> bool:
        return True

    async def get(self, key: str) -> bytes | None:
        return await self.values.get(key)

    async def put(
        self, key: str, blob: bytes, ttl: float, path: str, tags: tuple[str, ...]
    ) -> None:
        stored = self.values._cache  # aiocache keeps them in this dict; counting is all we do
        if len(stored) >= self.max_entries and self.values.build_key(key) not in stored:
            return
        await self.values.set(key, blob, ttl=ttl)
        if path:
            self.paths.setdefault(path, set()).add(key)
        for tag in tags:
            self.tags.setdefault(tag, set()).add(key)
        if len(self.paths) + len(self.tags) > 2 * self.max_entries:
            await self._prune()

    async def _prune(self) -> None:
        """Forget index members whose values expired, so indexes stay bounded."""
        for index in (self.paths, self.tags):
            for name in list(index):
                alive = {k for k in index[name] if self.values.build_key(k) in self.values._cache}
                if alive:
                    index[name] = alive
                else:
                    del index[name]

    async def _drop(self, index: dict[str, set[str]], names: list[str]) -> int:
        dropped = 0
        for name in names:
            for key in index.pop(name, ()):
                dropped += await self.values.delete(key)
        return dropped

    async def drop_path(self, path: str) -> int:
        return await self._drop(self.paths, [path])

    async def drop_tag(self, tag: str) -> int:
        return await self._drop(self.tags, [tag])

    async def drop_prefix(self, prefix: str) -> int:
        return await self._drop(self.paths, [p for p in self.paths if p.startswith(prefix)])

    async def lock(self, key: str, token: str, ttl: float) -> bool:
        now = time.monotonic()
        held = self.locks.get(key)
        if held is not None and held[1] > now:
            return False
        if len(self.locks) > self.max_entries:
            self.locks = {k: v for k, v in self.locks.items() if v[1] > now}
        self.locks[key] = (token, now + ttl)
        return True

    async def unlock(self, key: str, token: str) -> None:
        held = self.locks.get(key)
        if held is not None and held[0] == token:
            del self.locks[key]

    async def locked(self, key: str) -> bool:
        held = self.locks.get(key)
        return held is not None and held[1] > time.monotonic()
