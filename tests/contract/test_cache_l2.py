"""One contract for the cache's L2 stores: MemoryL2, and RedisL2 on Redis and on a 3-master
Redis Cluster (backends.py). Keys hold a path unique to the test; Redis keys are deleted
afterwards."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from plugins.cache.stores import L2Store

from .backends import Nodes


@pytest.fixture
def ns(l2_stores: Nodes[L2Store]) -> str:
    """A unique path root for this test's keys (and tags), deleted afterwards."""
    made = f"/t{uuid.uuid4().hex[:12]}"
    l2_stores.backend.forget_after(made)
    return made


@pytest.fixture
async def store(l2_stores: Nodes[L2Store]) -> L2Store:
    return await l2_stores.node()


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
    await store.put(f"r:{ns}/b", b"2", 5.0, f"{ns}/b", (tag, f"other-{ns}"))
    await store.put(f"r:{ns}/c", b"3", 5.0, f"{ns}/c", (f"other-{ns}",))
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


async def test_an_entry_one_node_writes_another_reads(l2_stores: Nodes[L2Store], ns: str) -> None:
    """A blob put by one node comes back byte for byte from the other node's store."""
    a, b = await l2_stores.node(), await l2_stores.node()
    blob = b"\x00shared\xff" * 100
    await a.put(f"r:{ns}/a", blob, 5.0, f"{ns}/a", ())
    assert await b.get(f"r:{ns}/a") == blob


async def test_a_lock_one_node_holds_is_refused_to_another(
    l2_stores: Nodes[L2Store], ns: str
) -> None:
    """Node b cannot take or release node a's fill lock; once a releases it, b takes it."""
    a, b = await l2_stores.node(), await l2_stores.node()
    key = f"r:{ns}/cold"
    assert await a.lock(key, "token-a", 5.0)
    assert not await b.lock(key, "token-b", 5.0)
    assert await b.locked(key)
    await b.unlock(key, "token-b")
    assert await b.locked(key)
    await a.unlock(key, "token-a")
    assert not await b.locked(key)
    assert await b.lock(key, "token-b", 5.0)
    assert not await a.lock(key, "token-a", 5.0)
    await b.unlock(key, "token-b")


async def test_one_nodes_invalidation_drops_entries_another_wrote(
    l2_stores: Nodes[L2Store], ns: str
) -> None:
    """Entries node a stored are gone for a after node b drops their path, prefix or tag."""
    a, b = await l2_stores.node(), await l2_stores.node()
    tag = f"user-{ns}"
    await a.put(f"r:{ns}/p", b"1", 5.0, f"{ns}/p", ())
    await a.put(f"r:{ns}/items/1", b"2", 5.0, f"{ns}/items/1", ())
    await a.put(f"r:{ns}/t", b"3", 5.0, f"{ns}/t", (tag,))
    assert await b.drop_path(f"{ns}/p") == 1
    assert await b.drop_prefix(f"{ns}/items/") == 1
    assert await b.drop_tag(tag) == 1
    assert [await a.get(f"r:{ns}/{name}") for name in ("p", "items/1", "t")] == [None] * 3
