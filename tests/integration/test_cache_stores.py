"""The shared contract of the cache's L2 stores: the embedded MemoryL2 and RedisL2 (real Redis)
pass the same tests. Keys are unique per test; Redis keys are deleted afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from testkit.servers import RedisServer

from node.cluster.keys import CACHE
from node.cluster.redis import RedisConnection
from plugins.cache.stores import L2Store, MemoryL2, RedisL2

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[L2Store]:
    if request.param == "memory":
        yield MemoryL2()
        return
    connection = RedisConnection(REDIS_URL)
    yield RedisL2(connection)
    await connection.close()


@pytest.fixture
def ns() -> str:
    """A unique path root for this test's keys."""
    return f"/t{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
async def clean_redis(ns: str) -> AsyncIterator[None]:
    yield
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{CACHE}*{ns}*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_put_then_get_returns_the_bytes(store: L2Store, ns: str) -> None:
    """A stored blob comes back byte for byte; an unknown key is None."""
    blob = b'{"meta":1}\n\x00\xffbody'
    await store.put(f"r:{ns}/a", blob, 5.0, f"{ns}/a", ())
    assert await store.get(f"r:{ns}/a") == blob
    assert await store.get(f"r:{ns}/missing") is None


async def test_values_expire_after_their_ttl(store: L2Store, ns: str) -> None:
    """A value stored for 0.1 s is gone after 0.25 s."""
    await store.put(f"r:{ns}/a", b"x", 0.1, f"{ns}/a", ())
    await asyncio.sleep(0.25)
    assert await store.get(f"r:{ns}/a") is None


async def test_drop_path_drops_every_variant_of_that_path_only(store: L2Store, ns: str) -> None:
    """Query variants of a path go together; another path stays."""
    await store.put(f"r:{ns}/a", b"1", 5.0, f"{ns}/a", ())
    await store.put(f"r:{ns}/a?q=1", b"2", 5.0, f"{ns}/a", ())
    await store.put(f"r:{ns}/b", b"3", 5.0, f"{ns}/b", ())
    assert await store.drop_path(f"{ns}/a") == 2
    assert await store.get(f"r:{ns}/a") is None and await store.get(f"r:{ns}/a?q=1") is None
    assert await store.get(f"r:{ns}/b") == b"3"


async def test_drop_prefix(store: L2Store, ns: str) -> None:
    """Every path under the prefix goes; a path merely sharing characters elsewhere stays."""
    for path in ("/items/1", "/items/2", "/other/items"):
        await store.put(f"r:{ns}{path}", b"x", 5.0, f"{ns}{path}", ())
    assert await store.drop_prefix(f"{ns}/items/") == 2
    assert await store.get(f"r:{ns}/other/items") == b"x"


async def test_drop_prefix_finds_paths_longer_than_an_index_name(store: L2Store, ns: str) -> None:
    """Paths past the index name's length are still found by a prefix, and by themselves."""
    long_a = f"{ns}/reports/" + "a" * 300
    long_b = f"{ns}/reports/" + "a" * 299 + "b"
    for i, path in enumerate((long_a, long_b, f"{ns}/other/" + "a" * 300)):
        await store.put(f"r:{path}", str(i).encode(), 5.0, path, ())
    assert await store.drop_path(long_b) == 1
    assert await store.get(f"r:{long_a}") == b"0"
    assert await store.drop_prefix(f"{ns}/reports/") == 1
    assert await store.get(f"r:{long_a}") is None
    assert await store.get(f"r:{ns}/other/" + "a" * 300) == b"2"


async def test_drop_prefix_takes_glob_characters_literally(store: L2Store, ns: str) -> None:
    """A prefix holding * or ? matches only itself, not as a pattern."""
    await store.put(f"r:{ns}/a*b", b"1", 5.0, f"{ns}/a*b", ())
    await store.put(f"r:{ns}/aXb", b"2", 5.0, f"{ns}/aXb", ())
    assert await store.drop_prefix(f"{ns}/a*") == 1
    assert await store.get(f"r:{ns}/aXb") == b"2"


async def test_drop_tag(store: L2Store, ns: str) -> None:
    """Entries carrying the tag go, whatever their path; others stay."""
    tag = f"user-{ns}"
    await store.put(f"r:{ns}/a", b"1", 5.0, f"{ns}/a", (tag,))
    await store.put(f"r:{ns}/b", b"2", 5.0, f"{ns}/b", (tag, "other"))
    await store.put(f"r:{ns}/c", b"3", 5.0, f"{ns}/c", ("other",))
    assert await store.drop_tag(tag) == 2
    assert await store.get(f"r:{ns}/c") == b"3"


async def test_lock_excludes_a_second_holder(store: L2Store, ns: str) -> None:
    """Only one token holds a key's lock; a wrong token cannot release it."""
    key = f"r:{ns}/lock"
    assert await store.lock(key, "one", 5.0)
    assert not await store.lock(key, "two", 5.0)
    await store.unlock(key, "two")
    assert await store.locked(key)
    await store.unlock(key, "one")
    assert not await store.locked(key)
    assert await store.lock(key, "two", 5.0)
    await store.unlock(key, "two")


async def test_lock_expires(store: L2Store, ns: str) -> None:
    """A holder that never releases loses the lock after its ttl."""
    key = f"r:{ns}/lock"
    assert await store.lock(key, "one", 0.1)
    await asyncio.sleep(0.2)
    assert not await store.locked(key)
    assert await store.lock(key, "two", 5.0)
    await store.unlock(key, "two")


async def test_scripts_load_themselves_on_a_fresh_redis(tmp_path: Path) -> None:
    """A Redis that never saw the scripts (NOSCRIPT) still indexes, locks and releases."""
    server = RedisServer(tmp_path)
    server.start()
    connection = RedisConnection(server.url)
    try:
        store = RedisL2(connection)
        await store.put("r:/a", b"1", 5.0, "/a", ("t",))
        assert await store.lock("r:/a", "me", 5.0)
        await store.unlock("r:/a", "me")
        assert not await store.locked("r:/a")
        assert await store.drop_tag("t") == 1
    finally:
        await connection.close()
        server.kill()
