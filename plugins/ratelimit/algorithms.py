"""Rate-limit algorithms as pure functions of (state, now): the embedded store runs them as is,
and ratelimit.lua mirrors them line for line so both stores decide identically.

Time is integer microseconds (Redis TIME's resolution); arithmetic follows the Lua script's
operation order so IEEE doubles round the same way in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SLIDING_WINDOW = "sliding_window"
TOKEN_BUCKET = "token_bucket"
FIXED_WINDOW = "fixed_window"
ALGORITHMS = (SLIDING_WINDOW, TOKEN_BUCKET, FIXED_WINDOW)

# A window's state: (window index, count in it, count in the one before);
# a bucket's: (TAT in µs, remainder in 1/limit µs).
State = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int  # requests allowed per window
    window_us: int  # window length in microseconds
    burst: int  # token bucket only: requests allowed at once (default: limit)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~3x to build, once per request
class Verdict:
    remaining: int  # requests still allowed now under this limit
    reset_us: int  # until the window ends (windows) or the bucket is full (token bucket)
    retry_us: int  # until a request of the same cost would pass; 0 when it passes now


def sliding_window(state: State | None, lim: Limit, now: int, cost: int) -> tuple[Verdict, State]:
    """Two-window weighted counter, as `limits`' sliding window counter: the previous window's
    count weighs by the share of it still inside the sliding window; exact in the first window."""
    win = lim.window_us
    idx = math.floor(now / win)
    cur, prev = 0, 0
    if state is not None:  # states hold ints (both stores), so no conversions here
        if state[0] == idx:
            _, cur, prev = state
        elif state[0] == idx - 1:
            prev = state[1]
    elapsed = now - idx * win
    # prev * weight is computed once; the Lua script computes the same product each time.
    faded = prev * ((win - elapsed) / win)
    allowed = math.floor(faded + cur) + cost <= lim.limit
    if allowed:
        cur = cur + cost
    remaining = max(0, lim.limit - math.floor(faded + cur))
    reset = win - elapsed
    retry = 0
    if not allowed:
        # The weighted count x passes when floor(x) + cost <= limit, i.e. x < room; the
        # earliest such moment is one microsecond past the solution of x == room.
        room = lim.limit - cost + 1
        if cost > lim.limit:
            retry = reset + win
        elif cur + cost > lim.limit:
            # Only the next window can admit it, once this window's count has faded enough.
            retry = reset + math.floor(win * (1 - room / cur)) + 1
        else:
            retry = math.floor(win * (1 - (room - cur) / prev)) + 1 - elapsed
    return Verdict(remaining, reset, retry), (idx, cur, prev)


def fixed_window(state: State | None, lim: Limit, now: int, cost: int) -> tuple[Verdict, State]:
    """A counter per aligned window; rejected requests are not counted."""
    win = lim.window_us
    idx = math.floor(now / win)
    cur = int(state[1]) if state is not None and state[0] == idx else 0
    allowed = cur + cost <= lim.limit
    if allowed:
        cur = cur + cost
    reset = win - (now - idx * win)
    return Verdict(max(0, lim.limit - cur), reset, 0 if allowed else reset), (idx, cur, 0)


def token_bucket(state: State | None, lim: Limit, now: int, cost: int) -> tuple[Verdict, State]:
    """GCRA: one theoretical arrival time (TAT) per key; `burst` requests at once, then one
    per window/limit. Rejected requests take no tokens.

    window/limit is rarely a whole number of microseconds, so the TAT is kept exactly as
    (µs, remainder in 1/limit µs), and the arithmetic runs on `backlog`, the TAT's lead
    over now in 1/limit µs: integers below 2**53, exact in Lua's doubles too.
    """
    win, limit = lim.window_us, lim.limit
    capacity = lim.burst * win
    backlog = 0
    if state is not None and (state[0] > now or (state[0] == now and state[1] > 0)):
        backlog = (int(state[0]) - now) * limit + int(state[1])
    wanted = backlog + cost * win
    allowed = wanted <= capacity
    if allowed:
        backlog = wanted
    remaining = (capacity - backlog) // win
    reset = -(-backlog // limit)  # ceiling division
    retry = 0 if allowed else -(-(wanted - capacity) // limit)
    return Verdict(remaining, reset, retry), (now + backlog // limit, backlog % limit)


STEP = {SLIDING_WINDOW: sliding_window, FIXED_WINDOW: fixed_window, TOKEN_BUCKET: token_bucket}


def decide_one(
    algorithm: str, state: State | None, lim: Limit, now: int, cost: int = 1
) -> tuple[Verdict, State]:
    """One limit: the verdict (retry_us == 0 when allowed) and the state to keep."""
    step = STEP[algorithm]
    verdict, new_state = step(state, lim, now, cost)
    if verdict.retry_us == 0:
        return verdict, new_state
    # Rejected: report what the limit says without this request's cost.
    dry, new_state = step(state, lim, now, 0)
    dry.retry_us = verdict.retry_us
    return dry, new_state


def decide(
    algorithm: str,
    states: Sequence[State | None],
    limits: Sequence[Limit],
    now: int,
    cost: int = 1,
) -> tuple[bool, list[Verdict], list[State]]:
    """Every limit must pass; only then does any of them take the request's cost."""
    if len(limits) == 1:
        verdict, state = decide_one(algorithm, states[0], limits[0], now, cost)
        return verdict.retry_us == 0, [verdict], [state]
    step = STEP[algorithm]
    trial = [step(state, lim, now, cost) for state, lim in zip(states, limits, strict=True)]
    allowed = all(verdict.retry_us == 0 for verdict, _ in trial)
    if allowed:
        return True, [v for v, _ in trial], [s for _, s in trial]
    # Rejected: report what each limit would say without this request's cost.
    dry = [step(state, lim, now, 0) for state, lim in zip(states, limits, strict=True)]
    verdicts = [
        Verdict(d.remaining, d.reset_us, t.retry_us)
        for (d, _), (t, _) in zip(dry, trial, strict=True)
    ]
    return False, verdicts, [s for _, s in dry]
