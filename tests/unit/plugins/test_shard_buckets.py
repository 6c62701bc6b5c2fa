"""plugins/shard/buckets.py and merge_patch.py: stable buckets, an even map, RFC 7396."""

from __future__ import annotations

import pytest

from plugins.shard.buckets import BucketMap, bucket_of
from plugins.shard.merge_patch import merge_patch

# Pinned: computed independently with coreutils (`printf %s KEY | b2sum -l 64`, modulo).
# Changing them would send every stored key to another bucket.
VECTORS = [("", 692, 12980), ("a", 559, 559), ("ada", 295, 1319), ("user:42", 642, 12930)]


@pytest.mark.parametrize(("key", "of_1024", "of_16384"), VECTORS)
def test_a_key_always_lands_in_the_same_bucket(key, of_1024, of_16384):
    assert bucket_of(key, 1024) == of_1024
    assert bucket_of(key, 16384) == of_16384


def test_buckets_spread_keys_evenly():
    counts = [0] * 64
    for i in range(64_000):
        counts[bucket_of(f"user:{i}", 64)] += 1
    assert max(counts) / min(counts) < 1.2


def test_the_even_map_gives_each_member_a_contiguous_equal_share():
    table = BucketMap.even(3, 1024)
    owned = table.by_member(3)
    assert [len(b) for b in owned] == [342, 341, 341]
    assert owned[0] == list(range(0, 342)) and owned[2][-1] == 1023
    assert all(table.owner(b) == 1 for b in owned[1])
    assert table.version == 1


# RFC 7396 Appendix A, every example.
RFC_7396_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396_EXAMPLES)
def test_merge_patch_follows_the_rfc_examples(target, patch, result):
    assert merge_patch(target, patch) == result
