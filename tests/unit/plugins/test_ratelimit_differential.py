"""Our sliding window against `limits`' sliding window counter, on one fake clock.

`limits` (a test-only dependency) reads the time through `time.time()` in
limits.storage.memory; the tests swap that module's `time` for a fake so both libraries see
the same instants. Timestamps where IEEE rounding may legitimately differ are skipped: a few
µs from a window boundary, or where the weighted count is a few µs' worth from an integer.
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from types import SimpleNamespace

import limits.storage.memory as limits_memory
import pytest
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from plugins.ratelimit.algorithms import SLIDING_WINDOW, Limit
from plugins.ratelimit.stores import MemoryCounter

S = 1_000_000  # µs per second
BASE = 1_700_000_000 * S
EDGE_US = 5  # how close to a boundary (in µs of time) counts as "rounding may differ"
CLIENT = "client"


class FakeClock:
    def __init__(self) -> None:
        self.now_us = BASE

    def us(self) -> int:
        return self.now_us

    def seconds(self) -> float:
        return self.now_us / S


class NoTimer:
    """Stands in for MemoryStorage's expiry thread, which never starts again: expiry stays
    lazy (every read drops expired keys), so the decisions are unchanged."""

    def is_alive(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(limits_memory, "time", SimpleNamespace(time=clock.seconds))
    return clock


@pytest.fixture
def storage(clock: FakeClock) -> Iterator[MemoryStorage]:
    before = set(threading.enumerate())
    storage = MemoryStorage()
    storage.timer.cancel()  # started by __init__; stopped before it ever fires
    storage.timer.join()
    storage.timer = NoTimer()  # type: ignore[assignment]
    yield storage
    assert set(threading.enumerate()) <= before, "limits left a thread running"


def timeline(seed: int, window_us: int, limit: int, windows: int = 30) -> Iterator[tuple[int, int]]:
    """(time, cost) pairs: ~3 times the limit per window, costs 1-3, now and then a long pause."""
    rng = random.Random(seed)
    now = BASE + rng.randrange(window_us)
    end = now + windows * window_us
    while now < end:
        yield now, rng.choice((1, 1, 1, 1, 2, 3))
        now += int(rng.expovariate(3 * limit / window_us))
        if rng.random() < 0.03:
            now += rng.randrange(2 * window_us)


def ambiguous(now: int, window_us: int, prev: int, cur: int) -> bool:
    """Could float rounding legitimately flip floor(weighted count) here?"""
    elapsed = now % window_us
    if elapsed < EDGE_US or window_us - elapsed <= EDGE_US:
        return True
    if not prev:
        return False
    weighted = Fraction(prev * (window_us - elapsed), window_us) + cur
    gap = min(weighted - math.floor(weighted), math.ceil(weighted) - weighted)
    return gap * window_us <= prev * EDGE_US


COMBOS = [(1, 1), (5, 1), (7, 3), (10, 2), (3, 5), (50, 60)]  # (limit, window in seconds)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("limit", "seconds"), COMBOS, ids=[f"{n}per{s}s" for n, s in COMBOS])
async def test_sliding_window_agrees_with_limits(
    clock: FakeClock, storage: MemoryStorage, limit: int, seconds: int, seed: int
) -> None:
    """Same timeline, same decisions and remaining counts as limits' sliding window counter."""
    theirs = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerSecond(limit, seconds)
    ours = MemoryCounter(clock=clock.us)
    ours_limit = Limit(limit, seconds * S, limit)
    tally: Counter[str] = Counter()
    mismatches = []
    for now, cost in timeline(seed, seconds * S, limit):
        clock.now_us = now
        prev, _, cur, _ = storage.get_sliding_window(item.key_for(CLIENT), item.get_expiry())
        if ambiguous(now, seconds * S, prev, cur):
            tally["skipped"] += 1
            continue
        decision = await ours.hit([CLIENT], SLIDING_WINDOW, [ours_limit], cost)
        allowed = theirs.hit(item, CLIENT, cost=cost)
        remaining = theirs.get_window_stats(item, CLIENT).remaining
        tally["allowed" if allowed else "rejected"] += 1
        mine = (decision.allowed, decision.verdicts[0].remaining)
        if mine != (allowed, remaining):
            mismatches.append((now, cost, prev, cur, mine, (allowed, remaining)))
    assert not mismatches, f"{len(mismatches)} disagreements, first {mismatches[:3]}"
    assert tally["allowed"] >= 2 * limit and tally["rejected"] >= limit, tally
    assert tally["skipped"] <= 0.02 * sum(tally.values()), tally


async def test_fake_clock_drives_both_libraries(clock: FakeClock, storage: MemoryStorage) -> None:
    """Both follow the fake clock: the full limit at one instant, and again two windows on."""
    theirs = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerSecond(3, 1)
    ours = MemoryCounter(clock=clock.us)
    for now in (BASE + 10, BASE + 2 * S + 10):
        clock.now_us = now
        got = [
            (
                (await ours.hit([CLIENT], SLIDING_WINDOW, [Limit(3, S, 3)])).allowed,
                theirs.hit(item, CLIENT),
            )
            for _ in range(4)
        ]
        assert got == [(True, True)] * 3 + [(False, False)]
