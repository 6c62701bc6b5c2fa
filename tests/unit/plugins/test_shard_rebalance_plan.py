"""plugins/shard/rebalance_plan.py and the pure parts of rebalance.py: the fewest bucket
moves to an even share, batches of one source and target, checksums per bucket."""

from __future__ import annotations

from plugins.shard.buckets import BucketMap
from plugins.shard.rebalance import checks_of, spans
from plugins.shard.rebalance_plan import apply_batches, ideal_moved, plan, quotas

TWO = BucketMap.even(2, 1024, ["s0", "s1"])


def test_adding_a_member_moves_exactly_its_share_from_the_others():
    """2 -> 3 members: 341 buckets move, all to the new member, half from each."""
    batches = plan(TWO, ["s0", "s1", "s2"])
    moved = [b for batch in batches for b in batch.buckets]
    assert len(moved) == len(set(moved)) == 341
    assert {batch.target for batch in batches} == {"s2"}
    after = apply_batches(TWO, batches, 2)
    counts = [after.owners.count(i) for i in range(3)]
    assert sorted(counts) == [341, 341, 342] and after.members == ("s0", "s1", "s2")
    assert after.version == 2


def test_batches_hold_one_source_and_target_and_at_most_16_buckets():
    """Each batch is fenced alone: one source, one target, a bounded number of buckets."""
    for batch in plan(TWO, ["s0", "s1", "s2"]):
        assert 1 <= len(batch.buckets) <= 16
        assert all(TWO.owner_name(b) == batch.source for b in batch.buckets)


def test_a_balanced_map_plans_nothing():
    """The even map over the configured members moves nothing."""
    assert plan(TWO, ["s0", "s1"]) == []


def test_the_rounding_extra_stays_with_a_member_that_has_it():
    """1024 over 3: the member keeping 342 is one that already owns more, not a new one."""
    shares = quotas(TWO, ["s0", "s1", "s2"])
    assert shares["s2"] == 341 and sorted(shares.values()) == [341, 341, 342]


def test_the_ideal_share_is_one_over_n_plus_one():
    assert ideal_moved(1024, 2, 3) == 1 / 3
    assert ideal_moved(1024, 4, 5) == 0.2


def test_a_map_round_trips_through_its_json():
    """The members' `<table>_maps` rows hold a map as JSON."""
    moved = apply_batches(TWO, plan(TWO, ["s0", "s1", "s2"]), 7)
    assert BucketMap.loads(moved.dumps()) == moved


def test_bucket_checks_ignore_how_a_backend_prints_json_but_not_content():
    """jsonb's spacing and key order do not change a checksum; a changed value does."""
    sqlite = [(3, "a", '{"x":1,"y":[1,2]}', "e1")]
    postgres = [(3, "a", '{"y": [1, 2], "x": 1}', "e1")]
    changed = [(3, "a", '{"x":2,"y":[1,2]}', "e1")]
    assert checks_of(sqlite, [3, 4]) == checks_of(postgres, [3, 4])
    assert checks_of(sqlite, [3])[3] != checks_of(changed, [3])[3]
    assert checks_of([], [4])[4].rows == 0


def test_spans_print_bucket_ranges():
    assert spans([7, 1, 2, 3, 9, 10]) == "1-3,7,9-10"
