"""The pure rate-limit algorithms on a fake clock: explicit integer-microsecond `now` values."""

from __future__ import annotations

import math
import random

import pytest

from plugins.ratelimit.algorithms import (
    ALGORITHMS,
    FIXED_WINDOW,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    Limit,
    State,
    Verdict,
    decide,
)

W = 1_000_000  # a one-second window, in microseconds
T0 = 1_700_000_000 * W  # the first microsecond of a window (windows align to the epoch)


class Key:
    """One client's states under one algorithm and its limits, hit at explicit times."""

    def __init__(self, algorithm: str, *limits: Limit) -> None:
        self.algorithm = algorithm
        self.limits = limits
        self.states: list[State | None] = [None] * len(limits)

    def hit(self, now: int, cost: int = 1) -> tuple[bool, list[Verdict]]:
        allowed, verdicts, self.states = decide(self.algorithm, self.states, self.limits, now, cost)
        return allowed, verdicts

    def passes(self, now: int, cost: int = 1) -> bool:
        """Would a request pass at `now`? (Leaves the state untouched.)"""
        return decide(self.algorithm, self.states, self.limits, now, cost)[0]

    def burst(self, now: int, n: int, cost: int = 1) -> int:
        """Hit `n` times at `now`; how many passed."""
        return sum(self.hit(now, cost)[0] for _ in range(n))


def lim(limit: int, window: int = W, burst: int | None = None) -> Limit:
    return Limit(limit, window, burst or limit)


# --- sliding window ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, W // 3, W - 11])
def test_sliding_first_window_is_exact(offset: int) -> None:
    """With no previous window, exactly `limit` requests pass, wherever they land in it."""
    key = Key(SLIDING_WINDOW, lim(10))
    assert key.burst(T0 + offset, 10) == 10
    assert key.burst(T0 + W - 1, 5) == 0


@pytest.mark.parametrize(("fraction", "passing"), [(0.25, 3), (0.5, 5), (0.75, 8)])
def test_sliding_weights_the_previous_window(fraction: float, passing: int) -> None:
    """10 hits late in window 1 count 10*(1-f) at f into window 2: ceil(10f) more pass."""
    key = Key(SLIDING_WINDOW, lim(10))
    assert key.burst(T0 + W - 1000, 10) == 10
    assert key.burst(T0 + W + int(fraction * W), 20) == passing


def test_sliding_previous_window_weighs_fully_at_the_edge() -> None:
    """Last µs of window 1 and first µs of window 2 both still count all 10 earlier hits."""
    key = Key(SLIDING_WINDOW, lim(10))
    assert key.burst(T0, 10) == 10
    assert not key.passes(T0 + W - 1)
    assert not key.passes(T0 + W)
    assert key.passes(T0 + W + 1)


def test_sliding_forgets_two_windows_back() -> None:
    """Hits two windows ago no longer count: the full limit passes again."""
    key = Key(SLIDING_WINDOW, lim(10))
    assert key.burst(T0 + W - 1, 10) == 10
    assert key.burst(T0 + 2 * W, 20) == 10


def test_sliding_remaining_and_reset() -> None:
    """remaining = limit - floor(weighted count); reset = time left in the current window."""
    key = Key(SLIDING_WINDOW, lim(10))
    key.burst(T0 + 100, 3)
    _, (verdict,) = key.hit(T0 + W // 4)
    assert verdict == Verdict(remaining=6, reset_us=3 * W // 4, retry_us=0)
    _, (verdict,) = key.hit(T0 + W + W // 2)  # 4 * 0.5 from window 1, plus this one
    assert verdict == Verdict(remaining=7, reset_us=W // 2, retry_us=0)


# --- fixed window --------------------------------------------------------------------------


def test_fixed_window_edges() -> None:
    """Full at the last µs of a window; the first µs of the next admits the whole limit."""
    key = Key(FIXED_WINDOW, lim(10))
    assert key.burst(T0 + W - 1, 11) == 10
    assert key.burst(T0 + W, 11) == 10


def test_fixed_window_does_not_count_rejected_hits() -> None:
    """A rejected cost-3 hit takes nothing: the 2 units left still pass afterwards."""
    key = Key(FIXED_WINDOW, lim(10))
    assert key.burst(T0, 8) == 8
    assert key.burst(T0 + 1, 5, cost=3) == 0
    assert key.burst(T0 + 2, 3) == 2


def test_fixed_window_remaining_and_reset() -> None:
    """remaining counts down to 0; reset is the time to the next window either way."""
    key = Key(FIXED_WINDOW, lim(2))
    assert key.hit(T0 + 400_000)[1] == [Verdict(1, 600_000, 0)]
    assert key.hit(T0 + 500_000)[1] == [Verdict(0, 500_000, 0)]
    assert key.hit(T0 + 700_000)[1] == [Verdict(0, 300_000, 300_000)]


# --- token bucket (GCRA) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "window", "burst"),
    [(10, W, 10), (10, W, 4), (4, W, 2), (1, W, 1), (3, W, 3), (3, W, 1), (7, W, 7)],
    ids=lambda v: str(v),
)
def test_token_bucket_burst_at_once(limit: int, window: int, burst: int) -> None:
    """Exactly `burst` requests pass at one instant, whatever window/limit's fraction."""
    key = Key(TOKEN_BUCKET, lim(limit, window, burst))
    assert key.burst(T0 + 123, burst + 3) == burst


def test_token_bucket_then_one_per_interval() -> None:
    """After the burst, one request per window/limit passes, and only one."""
    key = Key(TOKEN_BUCKET, lim(10, W, 5))  # one token per 100 ms
    assert key.burst(T0, 5) == 5
    for k in range(1, 6):
        assert not key.passes(T0 + k * 100_000 - 1)
        assert key.burst(T0 + k * 100_000, 3) == 1


@pytest.mark.parametrize(("wait", "refilled"), [(W // 2, 5), (W, 10), (5 * W, 10)])
def test_token_bucket_refills_while_waiting(wait: int, refilled: int) -> None:
    """An emptied bucket refills at limit/window, up to the burst and no further."""
    key = Key(TOKEN_BUCKET, lim(10))
    assert key.burst(T0, 10) == 10
    assert key.burst(T0 + wait, 20) == refilled


def test_token_bucket_remaining_and_reset() -> None:
    """remaining = tokens left; reset = time until the bucket is full again."""
    key = Key(TOKEN_BUCKET, lim(10, W, 4))
    assert key.hit(T0)[1] == [Verdict(3, 100_000, 0)]
    assert key.hit(T0)[1] == [Verdict(2, 200_000, 0)]
    assert key.hit(T0 + 50_000)[1] == [Verdict(1, 250_000, 0)]


def test_token_bucket_remaining_with_fractional_interval() -> None:
    """limit 3 per second, burst 3: one request leaves 2 tokens."""
    key = Key(TOKEN_BUCKET, lim(3))
    assert key.hit(T0)[1][0].remaining == 2


def test_token_bucket_rejections_take_no_tokens() -> None:
    """Hammering an empty bucket does not delay the next token."""
    key = Key(TOKEN_BUCKET, lim(10))
    key.burst(T0, 10)
    assert key.burst(T0 + 50_000, 100) == 0
    assert key.burst(T0 + 100_000, 2) == 1


# --- every algorithm -----------------------------------------------------------------------


# (algorithm, limit, [(time, hits)] before, then a (time, cost) request that gets rejected)
REJECTED = {
    "sliding-full-from-start": (SLIDING_WINDOW, lim(10), [(T0, 10)], (T0 + 1, 1)),
    "sliding-previous-window": (
        SLIDING_WINDOW,
        lim(4),
        [(T0 + W - 7, 4), (T0 + W + W // 2 - 10, 2)],
        (T0 + W + W // 2 - 10, 1),
    ),
    "sliding-cost-2": (SLIDING_WINDOW, lim(7, 3 * W), [(T0 + 5, 7)], (T0 + W // 2, 2)),
    "sliding-cost-8": (SLIDING_WINDOW, lim(10), [(T0, 10)], (T0 + 1, 8)),
    "fixed-full": (FIXED_WINDOW, lim(10), [(T0, 10)], (T0 + 1, 1)),
    "fixed-cost-2": (FIXED_WINDOW, lim(7, 3 * W), [(T0 + 5, 6)], (T0 + W // 2, 2)),
    "bucket-full": (TOKEN_BUCKET, lim(10), [(T0, 10)], (T0 + 1, 1)),
    "bucket-burst-2": (TOKEN_BUCKET, lim(4, W, 2), [(T0 + W - 7, 2)], (T0 + W + W // 8, 1)),
    "bucket-cost-2": (TOKEN_BUCKET, lim(8, 2 * W, 5), [(T0 + 5, 4)], (T0 + 9, 2)),
}


@pytest.mark.parametrize("case", REJECTED)
def test_retry_us_is_exact(case: str) -> None:
    """A request retried after retry_us passes; one µs earlier it does not."""
    algorithm, limit, before, (now, cost) = REJECTED[case]
    key = Key(algorithm, limit)
    for at, hits in before:
        assert key.burst(at, hits) == hits
    allowed, (verdict,) = key.hit(now, cost)
    retry = verdict.retry_us
    assert not allowed and retry > 0
    assert not key.passes(now + retry - 1, cost), f"retry_us={retry} is too long"
    assert key.passes(now + retry, cost), f"retry_us={retry} is too short"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_retry_us_is_exact_on_random_timelines(algorithm: str) -> None:
    """Seeded random timelines and costs: every rejection's retry_us is to the µs."""
    rng = random.Random(7)
    wrong = []
    for _ in range(2000):
        limit = rng.randint(1, 12)
        limits = [Limit(limit, rng.choice([1000, 999_999, W, 60 * W]), rng.randint(1, limit))]
        key = Key(algorithm, *limits)
        now = T0 + rng.randrange(limits[0].window_us)
        for _ in range(rng.randint(1, 30)):
            now += rng.randint(0, limits[0].window_us // 4)
            cost = rng.randint(1, 3)
            allowed, verdicts = key.hit(now, cost)
            capacity = limits[0].burst if algorithm == TOKEN_BUCKET else limit
            if allowed or cost > capacity:
                continue
            retry = verdicts[0].retry_us
            if key.passes(now + retry - 1, cost) or not key.passes(now + retry, cost):
                wrong.append((limits[0], cost, key.states[0], now, retry))
    assert not wrong, f"{len(wrong)} inexact retry_us, e.g. {wrong[:3]}"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_multiple_limits_all_must_pass(algorithm: str) -> None:
    """4 per second and 6 per ten minutes: two seconds on, only 2 more pass."""
    key = Key(algorithm, lim(4), lim(6, 600 * W))
    assert key.burst(T0, 6) == 4
    assert key.burst(T0 + 2 * W, 6) == 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rejection_consumes_no_limit(algorithm: str) -> None:
    """Rejected by the tight limit, the loose one keeps its count; both report remaining."""
    key = Key(algorithm, lim(10), lim(1))
    assert key.hit(T0)[0]
    for _ in range(5):
        allowed, (loose, tight) = key.hit(T0 + 10)
        assert not allowed
        assert (loose.remaining, loose.retry_us) == (9, 0)
        assert tight.remaining == 0 and tight.retry_us > 0
    assert key.states == decide(algorithm, [None, None], key.limits, T0)[2]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_counts_as_that_many_requests(algorithm: str) -> None:
    """limit 10: two cost-4 hits pass, a third does not, a cost-2 one still does."""
    key = Key(algorithm, lim(10))
    assert key.burst(T0, 3, cost=4) == 2
    allowed, (verdict,) = key.hit(T0, cost=2)
    assert allowed and verdict.remaining == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_above_the_limit_never_passes(algorithm: str) -> None:
    """A request costing more than the limit (burst) is rejected even on a fresh key."""
    key = Key(algorithm, lim(5, W, 3))
    assert not key.passes(T0, cost=6 if algorithm != TOKEN_BUCKET else 4)


def test_window_index_matches_the_scripts_double_arithmetic() -> None:
    """The algorithms take the window and its elapsed part from an integer divmod; the Lua
    script computes floor(now / win) and now - idx * win in doubles. They agree below 2**52
    us, near exact multiples of the window (where a rounded quotient would tip over) too."""
    rng = random.Random(7)
    windows = [1, 999, 1_000, 1_000_000, 60_000_000, 86_400_000_000, 2**31 - 1]
    for _ in range(20_000):
        win = rng.choice([*windows, rng.randrange(1, 10**11)])
        k = rng.randrange(1, 2**52 // win)
        for now in (k * win - 1, k * win, k * win + 1, rng.randrange(2**52)):
            idx = math.floor(now / win)
            assert divmod(now, win) == (idx, now - idx * win), (now, win)
