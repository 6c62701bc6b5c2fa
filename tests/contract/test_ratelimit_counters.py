"""One contract for every rate-limit counter store, on real time and real servers:
MemoryCounter, and RedisCounter on Redis and on a 3-master Redis Cluster (backends.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from plugins.ratelimit.algorithms import ALGORITHMS, FIXED_WINDOW, TOKEN_BUCKET, Limit
from plugins.ratelimit.stores import CounterStore, Decision

from .backends import Nodes, make_counter

MS = 1000  # µs
S = 1000 * MS
LONG = 3600 * S  # tests that only count fit in one window of an hour


def now_us() -> int:
    return time.time_ns() // 1000


class Subject:
    """One node's store; every key it hands out shares the test's {hash tag} prefix."""

    def __init__(self, store: CounterStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def key(self, client: str, name: str, tag: str | None = None) -> str:
        return f"sn:rl:{{{self.prefix}:{tag or client}}}:{client}:{name}"

    async def hit(self, algorithm: str, *limits: Limit, cost: int = 1, **who: str) -> Decision:
        """One hit on the keys of client who["client"] (hash tag who["tag"], if given)."""
        client, tag = who.get("client", "c"), who.get("tag")
        keys = [self.key(client, f"{i}:{lim.window_us}", tag) for i, lim in enumerate(limits)]
        return await self.store.hit(keys, algorithm, limits, cost)

    async def count(self, n: int, algorithm: str, *limits: Limit, **kw: str) -> int:
        return sum([(await self.hit(algorithm, *limits, **kw)).allowed for _ in range(n)])


@pytest.fixture
def prefix(counter_stores: Nodes[CounterStore]) -> str:
    """The test's fresh key prefix; its keys are deleted afterwards."""
    made = uuid.uuid4().hex
    counter_stores.backend.forget_after(made)
    return made


@pytest.fixture
async def subject(counter_stores: Nodes[CounterStore], prefix: str) -> Subject:
    return Subject(await counter_stores.node(), prefix)


async def early_in_window(window: int, needed: int) -> None:
    """Sleep, if need be, into the next window so that `needed` µs of it remain."""
    left = window - now_us() % window
    if left < needed:
        await asyncio.sleep(left / S + 0.005)


def limit_of(n: int, window: int = LONG) -> Limit:
    return Limit(n, window, n)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_allows_the_limit_then_rejects(subject: Subject, algorithm: str) -> None:
    """Exactly `limit` hits pass, counting remaining down; then rejections with a retry time."""
    await early_in_window(LONG, 2 * S)
    got = [await subject.hit(algorithm, limit_of(5)) for _ in range(7)]
    assert [d.allowed for d in got] == [True] * 5 + [False] * 2
    assert [d.verdicts[0].remaining for d in got] == [4, 3, 2, 1, 0, 0, 0]
    assert got[-1].verdicts[0].retry_us > 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_limit_must_pass(subject: Subject, algorithm: str) -> None:
    """5 per hour and 3 per two hours: the tighter one stops the fourth hit."""
    await early_in_window(LONG, 2 * S)
    assert await subject.count(6, algorithm, limit_of(5), limit_of(3, 2 * LONG)) == 3


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_rejection_consumes_no_limit(subject: Subject, algorithm: str) -> None:
    """Rejected by the tight limit, the loose one keeps its remaining count."""
    await early_in_window(LONG, 2 * S)
    limits = (limit_of(5), limit_of(1, 2 * LONG))
    assert (await subject.hit(algorithm, *limits)).allowed
    for _ in range(4):
        decision = await subject.hit(algorithm, *limits)
        assert not decision.allowed
        assert [v.remaining for v in decision.verdicts] == [4, 0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_retry_after_is_about_right(subject: Subject, algorithm: str) -> None:
    """retry_us is within 30 ms of the expected wait, and after it the request passes."""
    window = 600 * MS
    await early_in_window(window, 450 * MS)
    first = now_us()
    assert await subject.count(2, algorithm, limit_of(2, window)) == 2
    before = now_us()
    decision = await subject.hit(algorithm, limit_of(2, window))
    assert not decision.allowed
    retry = decision.verdicts[0].retry_us
    if algorithm == TOKEN_BUCKET:
        expected = first + window // 2 - before  # one token per window/limit
    else:
        expected = window - before % window  # the window's end
    assert abs(retry - expected) < 30 * MS, (retry, expected)
    await asyncio.sleep(retry / S + 0.03)
    assert (await subject.hit(algorithm, limit_of(2, window))).allowed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_full_limit_again_after_two_windows(subject: Subject, algorithm: str) -> None:
    """Two windows after exhausting it, a key admits its full limit again."""
    window = 300 * MS
    await early_in_window(window, 200 * MS)
    assert await subject.count(4, algorithm, limit_of(3, window)) == 3
    await asyncio.sleep(2 * window / S + 0.02)
    assert await subject.count(4, algorithm, limit_of(3, window)) == 3


async def test_token_bucket_burst_then_refill(subject: Subject) -> None:
    """Burst 4 at once; 100 ms later one token; a full window later the whole burst."""
    bucket = Limit(4, 400 * MS, 4)
    assert await subject.count(6, TOKEN_BUCKET, bucket) == 4
    await asyncio.sleep(0.11)
    assert await subject.count(3, TOKEN_BUCKET, bucket) == 1
    await asyncio.sleep(0.41)
    assert await subject.count(6, TOKEN_BUCKET, bucket) == 4


async def test_fixed_window_resets_at_the_boundary(subject: Subject) -> None:
    """Exhausted late in a window, a fixed window is full again as the next one starts."""
    window = 300 * MS
    left = window - now_us() % window
    await asyncio.sleep((left + (window if left < 150 * MS else 0) - 100 * MS) / S)
    assert await subject.count(5, FIXED_WINDOW, limit_of(3, window)) == 3  # ~100 ms left
    decision = await subject.hit(FIXED_WINDOW, limit_of(3, window))
    assert decision.verdicts[0].retry_us == decision.verdicts[0].reset_us <= 100 * MS
    await asyncio.sleep(decision.verdicts[0].reset_us / S + 0.01)
    assert await subject.count(5, FIXED_WINDOW, limit_of(3, window)) == 3


async def test_clients_sharing_a_hash_tag_are_independent(subject: Subject) -> None:
    """Two clients' keys in one {hash tag} (one cluster slot) keep separate counts."""
    await early_in_window(LONG, 2 * S)
    for algorithm in ALGORITHMS:
        alice, bob = f"alice-{algorithm}", f"bob-{algorithm}"
        assert await subject.count(3, algorithm, limit_of(2), client=alice, tag="t") == 2
        assert await subject.count(3, algorithm, limit_of(2), client=bob, tag="t") == 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_same_results_as_the_memory_store(subject: Subject, algorithm: str) -> None:
    """One sequence of costs against two limits: same verdicts as a MemoryCounter."""
    await early_in_window(2 * LONG, 2 * S)
    limits = (Limit(5, LONG, 5), Limit(8, 2 * LONG, 6))
    reference = Subject(make_counter(None), subject.prefix)  # a node of its own, embedded
    for cost in (1, 2, 1, 3, 1, 1, 2, 1, 1, 4, 1):
        ours, theirs = [await s.hit(algorithm, *limits, cost=cost) for s in (subject, reference)]
        assert ours.allowed == theirs.allowed, cost
        assert [v.remaining for v in ours.verdicts] == [v.remaining for v in theirs.verdicts]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_concurrent_hits_admit_exactly_the_limit(subject: Subject, algorithm: str) -> None:
    """100 hits at once on one key with limit 50: exactly 50 pass."""
    await early_in_window(LONG, 2 * S)
    hits = [subject.hit(algorithm, limit_of(50)) for _ in range(100)]
    assert sum(d.allowed for d in await asyncio.gather(*hits)) == 50


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_two_nodes_sharing_the_backend_admit_exactly_the_limit(
    counter_stores: Nodes[CounterStore], prefix: str, algorithm: str
) -> None:
    """Two nodes hit one key at once, 40 times each, against a limit of 50: exactly 50 pass."""
    await early_in_window(LONG, 2 * S)
    a, b = [Subject(await counter_stores.node(), prefix) for _ in range(2)]
    hits = [node.hit(algorithm, limit_of(50)) for _ in range(40) for node in (a, b)]
    assert sum(d.allowed for d in await asyncio.gather(*hits)) == 50


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_node_counts_the_other_nodes_hits(
    counter_stores: Nodes[CounterStore], prefix: str, algorithm: str
) -> None:
    """After 3 hits on one node, the other node's first hit has 6 of 10 left."""
    await early_in_window(LONG, 2 * S)
    a, b = [Subject(await counter_stores.node(), prefix) for _ in range(2)]
    assert await a.count(3, algorithm, limit_of(10)) == 3
    assert (await b.hit(algorithm, limit_of(10))).verdicts[0].remaining == 6
