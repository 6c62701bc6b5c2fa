"""L1: bounded by entries and bytes, least recently used out first, and short-lived."""

from __future__ import annotations

from plugins.cache.entry import ENTRY_OVERHEAD, Entry
from plugins.cache.lru import L1Cache


def entry(size: int = 0, path: str = "/p", tags: tuple[str, ...] = (), life: float = 100) -> Entry:
    return Entry(200, b"x" * size, {}, None, path, tags, (0.0, life, life, life, life))


def test_entry_bound_evicts_the_least_recently_used() -> None:
    """With room for 2, a third entry evicts the one used longest ago."""
    l1 = L1Cache(5, max_entries=2, max_bytes=10**9)
    l1.put("a", entry(), 0)
    l1.put("b", entry(), 0)
    assert l1.get("a", 1) is not None  # a is now the most recent
    l1.put("c", entry(), 1)
    assert l1.get("b", 1) is None and l1.get("a", 1) is not None
    assert l1.evictions == 1


def test_byte_bound_holds() -> None:
    """Total bytes never exceed max_bytes; bytes are given back on eviction."""
    size = ENTRY_OVERHEAD + 1000
    l1 = L1Cache(5, max_entries=100, max_bytes=3 * size)
    for i in range(10):
        l1.put(str(i), entry(1000), 0)
        assert l1.bytes <= 3 * size
    assert len(l1.entries) == 3 and l1.evictions == 7


def test_entry_larger_than_l1_is_not_kept() -> None:
    """One entry over max_bytes is not stored (it would evict everything)."""
    l1 = L1Cache(5, max_entries=100, max_bytes=100)
    l1.put("big", entry(1000), 0)
    assert l1.get("big", 0) is None and l1.bytes == 0


def test_l1_ttl_bounds_a_copy_even_when_fresh() -> None:
    """An entry fresh for 100 s leaves L1 after l1_ttl = 5 s."""
    l1 = L1Cache(5, 10, 10**6)
    l1.put("a", entry(life=100), 10)
    assert l1.get("a", 14.9) is not None
    assert l1.get("a", 15.0) is None and l1.bytes == 0


def test_l1_ttl_zero_turns_l1_off() -> None:
    """l1_ttl = 0 keeps nothing (every hit goes to L2)."""
    l1 = L1Cache(0, 10, 10**6)
    l1.put("a", entry(), 0)
    assert l1.get("a", 0) is None


def test_drop_where_matches_paths_and_tags() -> None:
    """Invalidation drops exactly the matching entries."""
    l1 = L1Cache(5, 10, 10**6)
    l1.put("1", entry(path="/a/1", tags=("t",)), 0)
    l1.put("2", entry(path="/a/2"), 0)
    l1.put("3", entry(path="/b"), 0)
    assert l1.drop_where(lambda e: "t" in e.tags) == 1
    assert l1.drop_where(lambda e: e.path.startswith("/a/")) == 1
    assert list(l1.entries) == ["3"]
