"""Rate-limit algorithms as pure functions of (state, now): the embedded store runs them as is,
and ratelimit.lua mirrors them line for line so both stores decide identically.

Time is integer microseconds (Redis TIME's resolution); arithmetic follows the Lua script's
operation order so IEEE doubles round the same way in both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import floor

SLIDING_WINDOW = "sliding_window"
TOKEN_BUCKET = "token_bucket"
FIXED_WINDOW = "fixed_window"
ALGORITHMS = (SLIDING_WINDOW, TOKEN_BUCKET, FIXED_WINDOW)

# A window's state: (window index, count in it, count in the one before);
# a bucket's: (TAT in µs, remainder in 1/limit µs).
State = tuple[float, ...]
# What one step decides: (remaining, reset_us, retry_us, the state to keep), as Verdict's
# fields; retry_us == 0 when the request passes. A plain tuple: the embedded store's hot
# path builds no object per request.
Outcome = tuple[int, int, int, State]
Step = Callable[[State | None, "Limit", int, int], Outcome]


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


def sliding_window(state: State | None, lim: Limit, now: int, cost: int) -> Outcome:
    """Two-window weighted counter, as `limits`' sliding window counter: the previous window's
    count weighs by the share of it still inside the sliding window; exact in the first window."""
    win = lim.window_us
    # The script's floor(now / win) and now - idx * win: doubles are exact for them below
    # 2**52 µs (the year 2112).
    idx, elapsed = divmod(now, win)
    reset = win - elapsed
    cur = prev = 0
    if state is not None:  # states hold ints (both stores), so no conversions here
        if state[0] == idx:
            _, cur, prev = state
        elif state[0] == idx - 1:
            prev = state[1]
    # prev * weight is computed once; the Lua script computes the same product each time.
    faded = prev * (reset / win)
    limit = lim.limit
    if floor(faded + cur) + cost <= limit:
        cur = cur + cost
        remaining = limit - floor(faded + cur)
        return (remaining if remaining > 0 else 0), reset, 0, (idx, cur, prev)
    # Rejected. The weighted count x passes when floor(x) + cost <= limit, i.e. x < room;
    # the earliest such moment is one microsecond past the solution of x == room.
    remaining = limit - floor(faded + cur)
    room = limit - cost + 1
    if cost > limit:
        retry = reset + win
    elif cur + cost > limit:
        # Only the next window can admit it, once this window's count has faded enough.
        retry = reset + floor(win * (1 - room / cur)) + 1
    else:
        retry = floor(win * (1 - (room - cur) / prev)) + 1 - elapsed
    return (remaining if remaining > 0 else 0), reset, retry, (idx, cur, prev)


def fixed_window(state: State | None, lim: Limit, now: int, cost: int) -> Outcome:
    """A counter per aligned window; rejected requests are not counted."""
    win = lim.window_us
    idx, elapsed = divmod(now, win)  # as in sliding_window
    cur = int(state[1]) if state is not None and state[0] == idx else 0
    allowed = cur + cost <= lim.limit
    if allowed:
        cur = cur + cost
    reset = win - elapsed
    return max(0, lim.limit - cur), reset, 0 if allowed else reset, (idx, cur, 0)


def token_bucket(state: State | None, lim: Limit, now: int, cost: int) -> Outcome:
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
    return remaining, reset, retry, (now + backlog // limit, backlog % limit)


# A rejected request changes no state in any of them, so a step that rejects already
# reports what its limit says without that request's cost.
STEP = {SLIDING_WINDOW: sliding_window, FIXED_WINDOW: fixed_window, TOKEN_BUCKET: token_bucket}


def decide(
    algorithm: str,
    states: Sequence[State | None],
    limits: Sequence[Limit],
    now: int,
    cost: int = 1,
) -> tuple[bool, list[Verdict], list[State]]:
    """Every limit must pass; only then does any of them take the request's cost."""
    step = STEP[algorithm]
    trial = [step(state, lim, now, cost) for state, lim in zip(states, limits, strict=True)]
    allowed = all(outcome[2] == 0 for outcome in trial)
    if not allowed:
        # Rejected: the limits that would have passed report without this request's cost.
        trial = [
            outcome if outcome[2] else step(state, lim, now, 0)
            for outcome, state, lim in zip(trial, states, limits, strict=True)
        ]
    return allowed, [Verdict(*outcome[:3]) for outcome in trial], [o[3] for o in trial]
