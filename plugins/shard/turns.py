"""First come, first served turns at a member's pool, each wait bounded by a deadline.

An asyncio.Semaphore lets a woken waiter lose its turn to a newcomer (see PostgresShard),
and bounding its wait takes an asyncio.timeout per call: a Timeout object, the task's
cancellation and its undoing, ~10 us a call under load (py-spy, tests/bench/store_bench.py
--profile). Here a waiter's timer fails its own future instead, and a turn given back goes
to the oldest waiter still waiting."""

from __future__ import annotations

import asyncio
from collections import deque


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Turns:
    """`size` turns; `take(deadline)` waits (FIFO) until `deadline` (loop time) at most."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.size = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def busy(self) -> bool:
        """No turn free now: `take` would wait."""
        return self.free <= 0

    async def take(self, deadline: float) -> None:
        """Raises TimeoutError when no turn came by `deadline`."""
        if self.free > 0:
            self.free -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give()  # handed a turn, then cancelled before using it: pass it on
            raise
        finally:
            timer.cancel()

    def give(self) -> None:
        """Give a turn back: to the oldest waiter still waiting, else to the free ones."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
